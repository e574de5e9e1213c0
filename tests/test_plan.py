"""The coverage plan and run config refuse bad input with a message naming the field."""
import hashlib

import pytest

from schemas.config import RunConfig
from schemas.coverage import CoveragePlan
from schemas.errors import ConfigError
from tests.helpers import PAPER_PLAN


def plan(**changes):
    return CoveragePlan.from_dict({**PAPER_PLAN, **changes})


def test_paper_plan_holds_out_the_unseen_caption_languages():
    p = plan()
    assert p.held_out_caption_languages == ("fr", "es", "ru", "zh")
    assert p.source_language == "en"


@pytest.mark.parametrize("changes, field, words", [
    ({"languages": ["en", "xx"]}, "plan.languages[1]", "not an ISO 639-1"),
    ({"caption_languages": ["en", "it"]}, "plan.caption_languages", "not in languages"),
    ({"languages": ["en", "de", "it"], "caption_languages": ["en", "it"], "translation_languages": ["de"]},
     "plan.caption_languages", "has no translations"),
    ({"caption_languages": []}, "plan.caption_languages", "non-empty"),
    ({"translation_languages": []}, "plan.translation_languages", "non-empty"),
    ({"translation_languages": ["de", "fr", "es", "ru"]}, "plan.translation_languages", "'zh'"),
    ({"translation_languages": ["en", "de", "fr", "es", "ru", "zh"]}, "plan.translation_languages", "source"),
    ({"eval_fraction": 1.5}, "plan.eval_fraction", "[0, 1)"),
    ({"eval_fraction": -0.1}, "plan.eval_fraction", "[0, 1)"),
    ({"shard_size": 0}, "plan.shard_size", "positive"),
    ({"seed": "x"}, "plan.seed", "non-negative"),
    ({"held_out": ["fr"]}, "plan.held_out", "unknown field"),
    ({"eval_keys": [3]}, "plan.eval_keys", "list of sample keys"),
    ({"translation_pairing": "other_images"}, "plan.translation_pairing", "own_caption, other_image or bitext"),
    ({"translation_pairing": {"fr": "nearest"}}, "plan.translation_pairing", "got {'fr': 'nearest'}"),
    ({"translation_pairing": {"it": "other_image"}}, "plan.translation_pairing", "'it' is not in translation_lang"),
    ({"translation_pairing": {"en": "other_image"}}, "plan.translation_pairing", "'en' is not in translation_lang"),
])
def test_wrong_plans_are_refused_naming_the_field(changes, field, words):
    with pytest.raises(ConfigError) as e:
        plan(**changes)
    assert e.value.field == field
    assert words in str(e.value)


def test_translation_pairing_is_own_caption_unless_set():
    assert plan().other_image_languages == () and plan().pairing_of("fr") == "own_caption"
    assert plan(translation_pairing="other_image").other_image_languages == ("de", "fr", "es", "ru", "zh")
    mapped = plan(translation_pairing={"fr": "other_image", "de": "own_caption"})
    assert mapped.other_image_languages == ("fr",) and mapped.pairing_of("zh") == "own_caption"
    assert CoveragePlan.from_dict(mapped.to_dict()) == mapped  # as config.yaml carries it


def test_split_assignment_is_a_stable_function_of_seed_and_content():
    p = plan(eval_fraction=0.2, seed=7)
    images = [(f"coco_{i}", hashlib.sha256(str(i).encode()).hexdigest()) for i in range(5000)]
    splits = [p.split_of(k, sha) for k, sha in images]
    assert splits == [plan(eval_fraction=0.2, seed=7).split_of(k, sha) for k, sha in reversed(images)][::-1]
    share = splits.count("eval") / len(images)
    assert 0.18 < share < 0.22
    assert splits != [plan(eval_fraction=0.2, seed=8).split_of(k, sha) for k, sha in images]
    # The content decides, not the name: one image under any key gets one split.
    assert {p.split_of(f"other_{i}", images[7][1]) for i in range(50)} == {splits[7]}
    assert plan(eval_keys=["coco_1"]).split_of("coco_1", images[1][1]) == "eval"


def _config(**changes):
    raw = {"output": "out", "sources": [{"name": "coco", "type": "coco", "captions": "c.json", "images": "im"}],
           "store": {"path": "store", "fingerprint": "fp"}, "plan": PAPER_PLAN}
    raw.update(changes)
    return RunConfig.from_dict(raw, base_dir="/base")


def test_config_resolves_paths_against_its_folder_and_keeps_uris():
    c = _config(output="gs://bucket/out")
    assert c.sources[0].captions == "/base/c.json"
    assert c.output == "gs://bucket/out"


@pytest.mark.parametrize("changes, field", [
    ({"sources": []}, "sources"),
    ({"sources": [{"name": "coco", "type": "csv"}]}, "sources[0].type"),
    ({"sources": [{"name": "Bad Name", "type": "coco", "captions": "c", "images": "i"}]}, "sources[0].name"),
    ({"sources": [{"name": "c", "type": "coco", "captions": "c"}]}, "sources[0].images"),
    ({"sources": [{"name": "c", "type": "parquet", "files": "*.parquet"}]}, "sources[0].image_column"),
    ({"sources": [{"name": "c", "type": "webdataset", "urls": "*.tar", "caption": "xml"}]}, "sources[0].caption"),
    ({"validation": {"min_side": -1}}, "validation.min_side"),
    ({"store": {"path": "s"}}, "store.fingerprint"),
    ({"outptu": "x"}, "outptu"),
])
def test_wrong_configs_are_refused_naming_the_field(changes, field):
    with pytest.raises(ConfigError) as e:
        _config(**changes)
    assert e.value.field == field
