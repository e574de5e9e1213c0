"""plan.translation_pairing: bitext, end to end: a build of the real COCO sample whose German
translation annotations are Multi30K en-de pairs (read from TSV, every pair in two files) matched to
the images by a tiny random CLIP through the blocked matcher with a use cap. The shards' bitext
annotations equal a numpy brute force over the same model's vectors (with the cap applied the same
way), each image gets one paragraph of 2..n of its pairs, `verify` passes, the build asks the
translator for no German, a rebuild is byte-identical, and the new groupings stay bounded."""
from __future__ import annotations

import filecmp
import json
import shutil
from collections import Counter
from pathlib import Path

import apache_beam as beam
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.verify import iter_tar_samples, verify_output
from schemas.bitext import Bitext
from schemas.config import RunConfig, load_config
from schemas.coverage import CoveragePlan
from schemas.errors import ConfigError
from schemas.languages import sentence_joiner
from schemas.records import SPLIT_EVAL, SPLIT_TRAIN, TASK_TRANSLATION, ValidImage
from schemas.sample import Annotation, decode_sample_json
from tests.clip_support import tiny_clip, unit_vectors
from tests.helpers import coco_captions, coco_source, fill_store, multi30k_pairs, require_coco_sample
from transforms.bitext_match import best_first
from transforms.bitext_pairs import bitext_annotations, paragraph_of
from transforms.bitext_source import tsv_bitexts

PAIRS = 400
# The random tiny CLIP has strong hubs: with this cap most images keep 3 bitexts and a few fewer.
MATCHING = {"top_n": 3, "use_cap": 20, "candidates": 30, "image_block": 16, "text_block": 128}
PLAN = {"languages": ["en", "de", "fr"], "caption_languages": ["en"], "translation_languages": ["de", "fr"],
        "translation_pairing": {"de": "bitext"}, "seed": 7, "shard_size": 16}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    require_coco_sample()
    root = tmp_path_factory.mktemp("bitext-build")
    pairs = multi30k_pairs("train", "de", PAIRS, min_chars=0)
    lines = ["en\tde", *(f"{en}\t{de}" for en, de in pairs)]
    (root / "bitexts").mkdir()
    for name in ("a.tsv", "b.tsv"):  # every pair twice: one copy serves
        (root / "bitexts" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    tiny_clip(root / "clip", [en for en, _ in pairs])
    captions = [a["caption"] for a in coco_captions()["annotations"]]
    fill_store(root / "store", captions, ["fr"])  # no German: the bitexts are the German translations
    return root


def _config(root: Path, out: str) -> Path:
    config = {"output": str(root / out), "sources": [coco_source()],
              "store": {"path": str(root / "store"), "fingerprint": "test-fp"}, "plan": PLAN,
              "bitext": {"source": {"files": str(root / "bitexts" / "*.tsv"), "format": "tsv", "columns": {"de": "de"}},
                         "model": str(root / "clip"), "matching": MATCHING, "batch_size": 16}}
    path = root / f"{out}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _build(config_path: Path) -> dict[str, int]:
    """The build as the CLI runs it (missing translations stop it); the group maxima."""
    from pipeline.build import build_shards
    from pipeline.output_run import output_run
    from transforms.group_metrics import group_maxima

    config = load_config(str(config_path))
    with output_run(config, "build", writes_store=False) as run_id:
        p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
        build_shards(p, config, run_id)
        result = p.run()
        result.wait_until_finish()
    return group_maxima(result)


@pytest.fixture(scope="module")
def built(corpus):
    maxima = _build(_config(corpus, "out"))
    samples = {}
    for tar in sorted((corpus / "out").rglob("*.tar")):
        for key, members in iter_tar_samples(tar.read_bytes()):
            meta, annotations = decode_sample_json(members["json"])
            samples[key] = (members["jpg"], meta, annotations)  # the COCO sample is JPEG
    return corpus, maxima, samples


def _reference(root: Path, samples: dict) -> dict[str, list[tuple[float, str]]]:
    """Per sample key, its matches by brute force: every image x every bitext in numpy, each image's
    `candidates` best, each bitext kept by its use_cap closest images, each image's top_n of those."""
    spec = load_config(str(_config(root, "out"))).bitext
    bitexts = {b.id: b for f in ("a.tsv", "b.tsv") for b in tsv_bitexts(spec.source, str(root / "bitexts" / f))
               if isinstance(b, Bitext)}
    ids, shas = sorted(bitexts), {meta["sha256"]: key for key, (_, meta, _) in samples.items()}
    images = sorted(shas)
    by_sha = {meta["sha256"]: image for image, meta, _ in samples.values()}
    sims = (unit_vectors(root / "clip", "image", [by_sha[s] for s in images])
            @ unit_vectors(root / "clip", "text", [bitexts[i].en for i in ids]).T)
    searched = {sha: best_first(zip(row.tolist(), ids), spec.matching.searched) for sha, row in zip(images, sims)}
    users: dict[str, list] = {}
    for sha, cands in searched.items():
        for sim, bitext_id in cands:
            users.setdefault(bitext_id, []).append((sim, sha))
    kept = {(sha, b) for b, u in users.items() for _, sha in best_first(u, spec.matching.use_cap)}
    return {shas[sha]: [(sim, bitexts[b]) for sim, b in best_first([c for c in cands if (sha, c[1]) in kept],
                                                                  spec.matching.top_n)]
            for sha, cands in searched.items()}


def test_each_image_gets_its_brute_force_bitexts_and_one_paragraph(built):
    root, _, samples = built
    reference = _reference(root, samples)
    assert len(samples) == len(reference) > 90
    sizes, lengths, plan = Counter(), Counter(), CoveragePlan.from_dict(PLAN)
    for key, (_, meta, notes) in samples.items():
        german = [a for a in notes if a.task == TASK_TRANSLATION and a.lang == "de"]
        expected = reference[key]
        sizes[len(expected)] += 1
        assert len(german) == len(expected) + (1 if len(expected) >= 2 else 0), key
        for annotation, (sim, bitext) in zip(german, expected):
            assert (annotation.source, annotation.target) == (bitext.en, dict(bitext.translations)["de"]), key
            assert annotation.similarity == pytest.approx(sim, abs=1e-5) and len(annotation.source) > 25
        if len(expected) >= 2:  # the paragraph: the pairs (seed, key) draw, in the drawn order
            paragraph, chosen = german[-1], [b for _, b in paragraph_of(key, expected, plan)]
            assert 2 <= len(chosen) <= len(expected) and len({b.id for b in chosen}) == len(chosen), key
            assert paragraph.source == " ".join(b.en for b in chosen)
            assert paragraph.target == " ".join(dict(b.translations)["de"] for b in chosen)
            assert paragraph.similarity == min(a.similarity for a in german[:-1] if a.source in
                                               {b.en for b in chosen})
            lengths[len(chosen)] += 1
        own = [a.target for a in notes if a.task != TASK_TRANSLATION]
        assert [a.source for a in notes if a.task == TASK_TRANSLATION and a.similarity is None] == own
        assert {a.lang for a in notes if a.similarity is None and a.task == TASK_TRANSLATION} == {"fr"}
    assert sizes[3] > 50 and sizes[0] + sizes[1] + sizes[2] > 0, sizes  # the cap takes some images' bitexts
    assert lengths[2] > 0 and lengths[3] > 0, lengths
    missing = json.loads((root / "out" / "stats.json").read_text())["splits"][SPLIT_TRAIN]["missing_translation"]
    assert missing.get("translation-de", 0) == sizes[0]  # an image the cap left nothing is counted
    assert verify_output(str(root / "out")) == []


def test_a_rebuild_is_byte_identical_and_the_groupings_are_bounded(built):
    root, maxima, samples = built
    _build(_config(root, "again"))
    files = sorted(str(p.relative_to(root / "out")) for p in (root / "out").rglob("*")
                   if p.is_file() and p.suffix in (".tar", ".parquet", ".json") and p.name != "stats.json")
    assert any(f.endswith(".tar") for f in files) and any(f.endswith(".parquet") for f in files)
    _, mismatch, errors = filecmp.cmpfiles(root / "out", root / "again", files, shallow=False)
    assert mismatch == [] and errors == []
    stats = [json.loads((root / out / "stats.json").read_text()) for out in ("out", "again")]
    assert stats[0]["splits"] == stats[1]["splits"]
    # One copy of a bitext per file (2) + at most use_cap images; one image's key + its top_n matches.
    assert maxima["JoinBitexts"] <= 2 + MATCHING["use_cap"], maxima
    assert maxima["JoinImages"] <= 1 + MATCHING["top_n"], maxima
    assert maxima["BitextMatch:imageBlock"] <= 2 * MATCHING["image_block"], maxima
    assert maxima["BitextMatch:textBlock"] <= 2 * MATCHING["text_block"], maxima
    # The translator was asked for French only: German is bitexts (the store has none, and the build
    # stops on a missing translation).
    texts = {a.target for _, _, notes in samples.values() for a in notes if a.task != TASK_TRANSLATION}
    assert stats[0]["translation"]["requested"] == len(texts) == stats[0]["translation"]["cache_hits_accepted"]


def test_verify_catches_a_bitext_language_translation_that_is_no_matched_bitext(built, tmp_path):
    from tests.test_translation_pairing import rewrite_first_train_sample

    def without_similarity(sample: dict) -> None:
        next(a for a in sample["annotations"] if a["lang"] == "de").pop("similarity")

    root = built[0]
    tampered = tmp_path / "tampered"
    shutil.copytree(root / "out", tampered)
    rewrite_first_train_sample(tampered, without_similarity)
    problems = verify_output(str(tampered))
    assert any("translation into ['de'] (plan: bitext) has no similarity" in p for p in problems), problems


def _plan(**overrides) -> CoveragePlan:
    return CoveragePlan.from_dict({**PLAN, **overrides})


def test_the_translator_is_asked_for_bitext_languages_only_where_captions_need_them():
    plan = _plan(languages=["en", "de", "fr", "zh"], translation_languages=["de", "fr", "zh"],
                 caption_languages=["en", "de"], translation_pairing={"de": "bitext", "zh": "bitext"})
    assert plan.bitext_languages == ("de", "zh")
    assert plan.translator_languages(SPLIT_TRAIN) == ("de", "fr")  # de: a caption language
    assert plan.translator_languages(SPLIT_EVAL) == ("de", "fr", "zh")  # caption references in every language


def test_a_paragraph_is_drawn_from_seed_and_key_and_joined_per_language():
    plan = _plan(languages=["en", "de", "zh"], translation_languages=["de", "zh"],
                 translation_pairing="bitext")
    matches = [(0.9 - i / 10, Bitext.of(f"English sentence number {i} that is long enough",
                                       (("de", f"Satz {i}."), ("zh", f"句子{i}。")))) for i in range(5)]
    image = ValidImage("s", "1", "s-1", None, "jpg", 64, 64, "ab" * 32, ("an English caption long enough",))
    drawn = {key: paragraph_of(key, matches, plan) for key in (f"s-{i}" for i in range(40))}
    assert {len(p) for p in drawn.values()} == {2, 3, 4, 5} and len({p for p in drawn.values()}) > 20
    assert drawn["s-1"] == paragraph_of("s-1", matches, plan)
    assert paragraph_of("s-1", matches, _plan(translation_pairing="bitext", seed=8)) != drawn["s-1"] or \
        paragraph_of("s-2", matches, _plan(translation_pairing="bitext", seed=8)) != drawn["s-2"]
    missing = Counter()
    annotations = bitext_annotations(image, matches, plan, missing)
    chosen = drawn["s-1"]
    assert [a.lang for a in annotations] == ["de"] * 6 + ["zh"] * 6 and not missing
    assert annotations[5].target == " ".join(dict(b.translations)["de"] for _, b in chosen)
    assert annotations[11].target == "".join(dict(b.translations)["zh"] for _, b in chosen)
    assert annotations[11].source == " ".join(b.en for _, b in chosen)
    assert annotations[11].similarity == min(s for s, _ in chosen)
    assert (sentence_joiner("ja"), sentence_joiner("th"), sentence_joiner("ru")) == ("", " ", " ")
    assert bitext_annotations(image, [], plan, missing) == [] and missing == {"translation-de": 1, "translation-zh": 1}


def test_an_annotation_without_similarity_reads_as_before():
    old = {"task": "translation", "lang": "de", "source": "A dog runs on the grass.", "target": "Ein Hund."}
    assert Annotation.from_json(old).to_json() == old
    assert Annotation.from_json({**old, "similarity": 0.25}).similarity == 0.25
    with pytest.raises(ValueError, match="similarity 'high' is not a number"):
        Annotation.from_json({**old, "similarity": "high"})


@pytest.mark.parametrize("bitext, field, message", [
    (None, "bitext", "pairs ['de'] by bitext, and the config has no bitext section"),
    ({"columns": {"fr": "fr"}}, "bitext.source.columns", "has no column for 'de'"),
    ({"matching": {"top_n": 2}}, "bitext.matching.use_cap", "is required when plan.translation_pairing uses bitext")])
def test_a_plan_paired_by_bitext_needs_a_usable_bitext_section(tmp_path, bitext, field, message):
    raw = {"output": str(tmp_path / "out"), "sources": [coco_source()],
           "store": {"path": str(tmp_path / "store"), "fingerprint": "fp"}, "plan": PLAN}
    if bitext is not None:
        raw["bitext"] = {"source": {"files": "x/*.tsv", "format": "tsv", "columns": bitext.get("columns", {"de": "de"})},
                         "model": "clip", "matching": bitext.get("matching", MATCHING)}
    with pytest.raises(ConfigError) as error:
        RunConfig.from_dict(raw, str(tmp_path))
    assert error.value.field == field and message in str(error.value)
