"""plan.translation_pairing: a language paired `other_image` translates another image's caption, never
the image's own, from texts the store already holds; the pairing follows the seed and nothing else;
plans without the field build exactly as before; `verify` catches an own caption's translation."""
from __future__ import annotations

import filecmp
import io
import json
import shutil
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from pipeline.report import write_report
from pipeline.verify import iter_tar_samples, verify_output
from schemas.config import load_config
from schemas.coverage import CoveragePlan
from schemas.records import ImageRef, ValidImage, normalize_text, text_hash
from tests.helpers import (PAPER_PLAN, REPO, coco_captions, coco_source, fake_translation, fill_store, run_build,
                           write_config)
from transforms.coverage import pair_donors, plan_annotations

HELD_OUT = ["fr", "es", "ru", "zh"]
PAIRED = {**PAPER_PLAN, "eval_fraction": 0.2,
          "translation_pairing": {"de": "own_caption", **{lang: "other_image" for lang in HELD_OUT}}}


def own_captions() -> dict[str, list[str]]:
    """Each COCO sample key's accepted captions, straight from captions.json (the > 25 characters rule)."""
    captions = defaultdict(list)
    for ann in coco_captions()["annotations"]:
        text = normalize_text(ann["caption"])
        if len(text) > 25 and text not in captions[f"coco_{ann['image_id']}"]:
            captions[f"coco_{ann['image_id']}"].append(text)
    return dict(captions)


def build(tmp: Path, plan: dict) -> Path:
    """The COCO sample built with `plan` from a store holding every caption in every language."""
    tmp.mkdir(parents=True)
    texts = [a["caption"] for a in coco_captions()["annotations"]]
    fill_store(tmp / "store", texts, PAPER_PLAN["translation_languages"])
    run_build(write_config(tmp, [coco_source()], plan))
    return tmp / "out"


def samples(output: Path) -> dict[str, tuple[str, dict]]:
    """key -> (split, sample JSON) over both splits."""
    return {key: (split, json.loads(members["json"]))
            for split in ("train", "eval") for tar in sorted((output / split).glob("*.tar"))
            for key, members in iter_tar_samples(tar.read_bytes())}


def tars(output: Path) -> list[str]:
    return sorted(str(p.relative_to(output)) for p in output.rglob("*.tar"))


def identical_tars(a: Path, b: Path) -> bool:
    names = tars(a)
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return bool(names) and names == tars(b) and mismatch == [] and errors == []


def donated(output: Path, lang: str) -> dict[str, frozenset[str]]:
    """key -> the English sources of its translations into `lang`."""
    return {key: frozenset(a["source"] for a in sample["annotations"]
                           if a["task"] == "translation" and a["lang"] == lang)
            for key, (_, sample) in samples(output).items()}


@pytest.fixture(scope="module")
def paired(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("pairing") / "seed0", PAIRED)


def test_other_image_translations_come_from_the_store_and_never_from_the_own_captions(paired):
    assert verify_output(str(paired)) == []
    captions, built = own_captions(), samples(paired)
    in_split: dict[str, set[str]] = defaultdict(set)
    for key, (split, _) in built.items():
        in_split[split].update(captions[key])
    given: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for key, (split, sample) in built.items():
        own = set(captions[key])
        assert sample["caption_hashes"] == sorted(text_hash(c) for c in own)
        for a in (a for a in sample["annotations"] if a["task"] == "translation"):
            assert a["target"] == fake_translation(a["source"], a["lang"])  # a store entry, no new text
            if a["lang"] in HELD_OUT:
                assert a["source"] not in own and a["source"] in in_split[split], (key, a)
                given[(split, a["lang"])][a["source"]] += 1
            else:
                assert a["source"] in own
    # No two images of the sample share a caption, so the pairing is a cyclic shift: every caption of a
    # split is translated exactly once per held-out language, as with own_caption, only for another image.
    for split, texts in in_split.items():
        for lang in HELD_OUT:
            assert given[(split, lang)] == Counter(texts), (split, lang)
    stats = json.loads((paired / "stats.json").read_text())
    assert stats["splits"]["train"]["missing_translation"] == {}


def test_the_report_names_the_paired_languages(paired, tmp_path):
    report = Path(write_report(str(paired), str(tmp_path / "report"))["report"]).read_text()
    assert "translating other images' captions: fr, es, ru, zh." in report


def test_the_pairing_is_deterministic_and_follows_the_seed(paired, tmp_path):
    again = build(tmp_path / "again", PAIRED)
    assert identical_tars(paired, again)
    reseeded = build(tmp_path / "seed1", {**PAIRED, "seed": 1})
    assert verify_output(str(reseeded)) == []
    before, after = donated(paired, "fr"), donated(reseeded, "fr")
    changed = [key for key in before if before[key] != after[key]]
    assert len(changed) > 0.8 * len(before)


def test_plans_without_the_field_build_as_own_caption_byte_for_byte(tmp_path):
    """Unset, `own_caption` for all, and a mapping naming only own_caption give the same bytes (the
    shards of a plan without the field were also checked against a build from before the field)."""
    plain = build(tmp_path / "plain", PAPER_PLAN)
    for name, pairing in (("all", "own_caption"), ("mapping", {"fr": "own_caption"})):
        assert identical_tars(plain, build(tmp_path / name, {**PAPER_PLAN, "translation_pairing": pairing})), name
    assert all("caption_hashes" not in sample for _, sample in samples(plain).values())


def rewrite_first_train_sample(output: Path, change) -> None:
    """Apply `change` to the sample JSON of the first train sample, rewriting its tar in place."""
    tar_path = sorted((output / "train").glob("*.tar"))[0]
    members = [(info, tarfile.open(fileobj=io.BytesIO(tar_path.read_bytes())).extractfile(info).read())
               for info in tarfile.open(fileobj=io.BytesIO(tar_path.read_bytes()))]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        done = False
        for info, data in members:
            if info.name.endswith(".json") and not done:
                sample = json.loads(data)
                change(sample)
                data, done = json.dumps(sample, ensure_ascii=False).encode("utf-8"), True
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tar_path.write_bytes(out.getvalue())


def test_verify_catches_a_held_out_translation_of_the_own_caption(paired, tmp_path):
    def own_caption_into_french(sample: dict) -> None:
        own = next(a["target"] for a in sample["annotations"] if a["task"] == "caption" and a["lang"] == "en")
        french = next(a for a in sample["annotations"] if a["task"] == "translation" and a["lang"] == "fr")
        french.update(source=own, target=fake_translation(own, "fr"))

    tampered = tmp_path / "tampered"
    shutil.copytree(paired, tampered)
    rewrite_first_train_sample(tampered, own_caption_into_french)
    problems = verify_output(str(tampered))
    assert any("translation into ['fr'] (plan: other_image) translates the image's own caption" in p
               for p in problems), problems

    unlisted = tmp_path / "unlisted"
    shutil.copytree(paired, unlisted)
    rewrite_first_train_sample(unlisted, lambda sample: sample.pop("caption_hashes"))
    assert any("no caption_hashes" in p for p in verify_output(str(unlisted)))


def image(key: str, *captions: str) -> ValidImage:
    return ValidImage("s", key, key, ImageRef(), "jpg", 64, 64, text_hash(key), captions)


def test_a_donor_shares_no_caption_and_no_translation_and_a_lone_image_has_none():
    plan = CoveragePlan.from_dict(PAIRED)
    a, b, c = image("a", "a dog runs on the green grass"), image("b", "a dog runs on the green grass", "b alone"), \
        image("c", "a cat sleeps on a red sofa")
    store = {text_hash(t): {lang: fake_translation(t, lang) for lang in PAIRED["translation_languages"]}
             for t in {*a.captions, *b.captions, *c.captions}}
    assert pair_donors([a, b, c], plan, store) == [c, c, a]  # a and b share a caption: each skips the other
    same_french = {**store, text_hash("b alone"): {**store[text_hash("b alone")], "fr": fake_translation(
        "a cat sleeps on a red sofa", "fr")}}
    assert pair_donors([b, c], plan, same_french) == [None, None]  # one French text in common
    assert pair_donors([a], plan, store) == [None]
    annotations, missing = plan_annotations(b, "train", plan, store, donor=None)
    assert {a.lang for a in annotations if a.task == "translation"} == {"de"}
    assert missing == Counter({f"translation-{lang}": 2 for lang in HELD_OUT})


@pytest.mark.parametrize("config", ["paper-coco-sample.yaml", "paper-dataflow.yaml"])
def test_the_paper_configs_pair_held_out_languages_with_other_images(config):
    plan = load_config(str(REPO / "configs" / config)).plan
    assert plan.other_image_languages == plan.held_out_caption_languages == tuple(HELD_OUT)
    assert plan.pairing_of("de") == "own_caption"
