"""The paper's data recipe in one command: configs/paper-recipe-sample.yaml, materialised with the tiny
models' paths, runs recaption (a managed vLLM server with the tiny LLaVA-NeXT) -> descriptions into the
shards as captions styled by sentences, translated -> the COCO captions translated with their image's
description as context -> French from Multi30K en-fr bitexts matched by a tiny CLIP -> shards, through
one `florenz-data run`; `florenz-data verify` passes on it.

The translator is the loopback server: the tiny translator knows Multi30K captions only, and there are
no references for COCO captions or for the VLM's descriptions, so it answers each text with the real
Multi30K reference of the known text closest in length, and a context request in kind, except that
the texts whose sha256 starts with an odd digit lose their context (the fallback path, counted)."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml

from pipeline.verify import iter_tar_samples, verify_output
from schemas.records import SPLIT_EVAL, SPLIT_TRAIN, TASK_CAPTION, TASK_TRANSLATION, request_key
from schemas.sample import decode_sample_json
from tests.clip_support import tiny_clip
from tests.helpers import COCO_SAMPLE, REPO, multi30k_pairs, read_store_rows, require_coco_sample
from tests.test_translate_faults import start_fault_server
from tests.vllm_support import VLLM_PYTHON
from tests.vlm_support import tiny_vlm
from transforms.caption_styles import english_styles, split_sentences

CONFIG = REPO / "configs" / "paper-recipe-sample.yaml"
BITEXTS = 400


def _loopback_pairs(path: Path) -> Path:
    """Multi30K val references in German and French: what the loopback translator answers with."""
    rows = [{"en": en, "lang": lang, "reference": ref} for lang in ("de", "fr")
            for en, ref in multi30k_pairs("val", lang, 300)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def materialise(tmp: Path, translator_url: str) -> Path:
    """The shipped config with this test's paths: outputs and stores under `tmp`, the tiny VLM (built
    and cached under .cache/), a tiny CLIP and Multi30K en-fr bitexts built here, the loopback translator."""
    raw = yaml.safe_load(CONFIG.read_text())
    pairs = multi30k_pairs("train", "fr", BITEXTS, min_chars=0)
    (tmp / "bitexts").mkdir()
    (tmp / "bitexts" / "pairs.tsv").write_text("\n".join(["en\tfr", *(f"{en}\t{fr}" for en, fr in pairs)]) + "\n",
                                               encoding="utf-8")
    raw["output"] = str(tmp / "out")
    raw["sources"][0].update(captions=str(COCO_SAMPLE / "captions.json"), images=str(COCO_SAMPLE / "images"))
    raw["store"]["path"] = str(tmp / "translations")
    raw["recaption"].update(model=str(tiny_vlm()), store=str(tmp / "descriptions"))
    raw["recaption"]["managed"]["command"][0] = str(VLLM_PYTHON)
    raw["translator"].update(model="fault", endpoints=[translator_url])
    raw["bitext"]["source"]["files"] = str(tmp / "bitexts" / "*.tsv")
    raw["bitext"]["model"] = str(tiny_clip(tmp / "clip", [en for en, _ in pairs]))
    path = tmp / "paper-recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """One `florenz-data run` of the materialised recipe: its exit code, stats, samples and stores."""
    from pipeline.cli import main

    require_coco_sample()
    tmp = tmp_path_factory.mktemp("paper-recipe")
    proc, url = start_fault_server(_loopback_pairs(tmp / "pairs.jsonl"), tmp / "count", "--answer-unknown")
    config = materialise(tmp, url)
    try:
        code = main(["run", str(config)])
    finally:
        proc.kill()
    samples, shards = {}, {}
    for tar in sorted((tmp / "out").rglob("*.tar")):
        shards[str(tar.relative_to(tmp / "out"))] = tar.read_bytes()
        for key, members in iter_tar_samples(tar.read_bytes()):
            samples[key] = decode_sample_json(members["json"])
    descriptions = {r["image_sha256"]: r["description"] for r in
                    ds.dataset(tmp / "descriptions", format="parquet", partitioning="hive").to_table().to_pylist()
                    if r["status"] == "accepted"}
    return {"code": code, "config": config, "out": tmp / "out", "shards": shards, "stats": json.loads((tmp / "out" / "stats.json").read_text()),
            "samples": samples, "descriptions": descriptions, "translations": read_store_rows(tmp / "translations")}


def test_one_run_builds_the_recipe_and_verify_passes(recipe):
    stats = recipe["stats"]
    assert recipe["code"] == 0
    assert verify_output(str(recipe["out"])) == []
    assert stats["images"]["balanced"] and stats["captions"]["balanced"]
    recaption, joined = stats["recaption"], stats["descriptions"]
    assert recaption["balanced"] and recaption["images"] == stats["images"]["written"] == len(recipe["samples"])
    assert recaption["described"] == len(recipe["descriptions"]) > 0
    # every valid image joined: with its accepted description, or counted as missing one
    assert joined["balanced"] and joined["images"] == stats["images"]["written"]
    assert joined["with_description"] == len(recipe["descriptions"])
    assert joined["missing_description"] == recaption["rejected"] + recaption["failed"]
    # the translator answered everything: only an image the use cap left without bitexts misses French
    missing = Counter()
    for split in stats["splits"].values():
        missing.update(split["missing_translation"])
    assert set(missing) <= {"translation-fr"} and missing["translation-fr"] < 5, missing


def test_descriptions_are_captions_styled_by_sentences_and_translated(recipe):
    samples, descriptions = recipe["samples"], recipe["descriptions"]
    styled = Counter()
    for key, (meta, notes) in samples.items():
        description = descriptions.get(meta["sha256"])
        english = [(a.style, a.target) for a in notes if a.task == TASK_CAPTION and a.lang == "en"]
        german = [a for a in notes if a.task == TASK_CAPTION and a.lang == "de"]
        if description is None:  # its COCO captions alone, short style: no style key
            assert all(style is None for style, _ in english) and all(a.style is None for a in german), key
            continue
        styles = english_styles(description, 26)
        sentences = split_sentences(description, "en")
        expected = [(s, sentences[0] if s == "<CAPTION>" else " ".join(sentences)) for s in styles]
        assert [e for e in english if e[0] is not None] == expected, key
        assert [a.style for a in german if a.style is not None] == styles, key  # translated, the same styles
        own = {a.source for a in notes if a.task == TASK_TRANSLATION and a.lang == "de"}
        assert description in own, key  # and a translation sample of its own
        styled.update(styles)
    # The tiny VLM's answers are one sentence each: <CAPTION> only (a longer description's detailed
    # styles: test_an_image_without_a_description..., and tests/test_caption_styles.py).
    assert styled["<CAPTION>"] > 0.9 * len(samples), styled


def test_captions_are_translated_with_their_image_description_as_context(recipe):
    """Each caption of a described image is stored under (caption, description) and its German sample
    is that translation; the loopback loses the context of the texts whose hash starts odd: those
    are asked again without it, and counted."""
    samples, descriptions, stats = recipe["samples"], recipe["descriptions"], recipe["stats"]
    stored = {(r["text_hash"], r["lang"]): r for r in recipe["translations"]}
    with_context, plain = set(), set()
    for key, (meta, notes) in samples.items():
        description = descriptions.get(meta["sha256"])
        langs = ("de", "fr") if meta["split"] == SPLIT_EVAL else ("de",)
        captions = [a.source for a in notes if a.task == TASK_TRANSLATION and a.lang == "de"
                    and a.source != description]
        assert captions, key
        for caption in captions:
            for lang in langs:
                (with_context if description else plain).add((caption, description, lang))
            row = stored[(request_key(caption, description), "de")]
            translation = next(a.target for a in notes if a.task == TASK_TRANSLATION and a.lang == "de"
                               and a.source == caption)
            assert row["source_text"] == caption and row["translation"] == translation, key
    summary = stats["translation"]
    assert summary["with_context"] == len(with_context) > 0
    lost = [c for c, _, _ in with_context if int(hashlib.sha256(c.encode()).hexdigest()[0], 16) % 2]
    assert summary["context_fallback"] == len(lost) > 0
    assert bool(plain) == (stats["descriptions"]["missing_description"] > 0)  # stored under the caption alone


def test_held_out_french_comes_from_matched_bitexts(recipe):
    train = 0
    for key, (meta, notes) in recipe["samples"].items():
        french = [a for a in notes if a.task == TASK_TRANSLATION and a.lang == "fr"]
        assert all(a.similarity is not None for a in french), key
        if meta["split"] == SPLIT_TRAIN:
            assert not [a for a in notes if a.task == TASK_CAPTION and a.lang == "fr"], key  # held out
            train += bool(french)
    assert train > 0.8 * sum(m["split"] == SPLIT_TRAIN for m, _ in recipe["samples"].values())


def test_a_build_from_the_stores_alone_writes_the_same_shards(recipe):
    """`build` reads the descriptions from the description store (no VLM) and the translations under
    the same keys (no translator): the shards are byte-identical to the run's."""
    from pipeline.cli import main

    assert main(["build", str(recipe["config"])]) == 0
    rebuilt = {str(t.relative_to(recipe["out"])): t.read_bytes() for t in sorted(recipe["out"].rglob("*.tar"))}
    assert rebuilt == recipe["shards"]
    assert json.loads((recipe["out"] / "stats.json").read_text())["descriptions"] == recipe["stats"]["descriptions"]


def test_an_image_without_a_description_is_counted_and_its_captions_go_without_context(tmp_path):
    """The join on the DirectRunner: a described image gets its description (its captions keyed with
    it), one without is passed on, counted, its captions keyed alone; none is dropped."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from schemas.records import ImageRef, ValidImage
    from transforms.caption_styles import CaptionStyles
    from transforms.image_descriptions import AttachDescriptions
    from transforms.image_texts import ImageTexts

    caption, description = "A dog runs along the beach.", "The image shows a brown dog on a beach. It runs on wet sand."
    images = [ValidImage("s", str(i), f"s_{i}", ImageRef(), "jpg", 64, 64, sha, (caption,))
              for i, sha in enumerate(["a" * 64, "b" * 64, "b" * 64])]
    texts = ImageTexts(CaptionStyles(), context=True, descriptions=True)
    with beam.Pipeline() as p:
        joined = ((p | "Images" >> beam.Create(images), p | "Descriptions" >> beam.Create([("b" * 64, description)]))
                  | AttachDescriptions())
        keys = joined["images"] | beam.Map(lambda im: (im.key, [(t.text, t.key, t.styles) for t in texts.of_image(im)]))
        assert_that(keys, equal_to([
            ("s_0", [(caption, request_key(caption), None)]),
            *((f"s_{i}", [(caption, request_key(caption, description), None),
                          (description, request_key(description), ["<CAPTION>", "<DETAILED_CAPTION>"])])
              for i in (1, 2))]), label="Texts")
        assert_that(joined["summary"], equal_to([{"images": 3, "with_description": 2, "missing_description": 1,
                                                  "balanced": True}]), label="Summary")
