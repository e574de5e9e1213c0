"""The loader and the training loop on shards the pipeline wrote from the real COCO sample: batches,
task-language balancing, exact stream resume, overfitting a small set, checkpoint resume giving the
same losses, two processes under torchrun (gloo) agreeing, and evaluation with held-out languages; and
scheduled unfreezing: the trainable set per step, untouched frozen layers and their optimizer state, exact
resume across an unfreezing step, DDP across one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.helpers import PAPER_PLAN, coco_captions, fill_store, run_build, write_config  # noqa: E402
from tests.train_support import metrics, paper, train_config  # noqa: E402,F401 (paper: a fixture)

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def small(tmp_path_factory, paper):
    """4 real COCO images with one caption each, every caption translated: a set to overfit."""
    root = tmp_path_factory.mktemp("small")
    data = coco_captions()
    images = data["images"][:4]
    first = {}
    for ann in data["annotations"]:
        first.setdefault(ann["image_id"], ann)
    subset = {"images": images, "annotations": [first[i["id"]] for i in images]}
    (root / "captions.json").write_text(json.dumps(subset))
    from tests.helpers import COCO_SAMPLE
    source = {"name": "coco", "type": "coco", "captions": str(root / "captions.json"),
              "images": str(COCO_SAMPLE / "images")}
    fill_store(root / "store", [a["caption"] for a in subset["annotations"]], ["de", "fr", "es", "ru", "zh"])
    run_build(write_config(root, [source], {**PAPER_PLAN, "shard_size": 2}))
    return root / "out", paper[1]


def loader_parts(output: Path, tokenizers, **kwargs):
    from transformers import AutoTokenizer

    from model.data import AnnotationSampler, Collator, ResumableShardStream, image_transform, shard_urls, \
        split_key_counts

    sampler = AnnotationSampler.from_setting(kwargs.pop("balance", "uniform"), split_key_counts(str(output), "train"))
    collator = Collator(AutoTokenizer.from_pretrained(tokenizers[0]), AutoTokenizer.from_pretrained(tokenizers[1]),
                        use_prefix=kwargs.pop("use_prefix", False))
    stream = ResumableShardStream(shard_urls(str(output), "train"), sampler, image_transform(kwargs.pop("size", 64)),
                                  seed=0, shuffle_buffer=8, **kwargs)
    return stream, collator


def test_batches_hold_images_prompts_and_masked_labels(paper):
    from model.data import train_loader

    stream, collator = loader_parts(*paper, size=224, use_prefix=True)
    batch = next(iter(train_loader(stream, collator, batch_size=6, workers=0)))
    assert batch["pixel_values"].shape == (6, 3, 224, 224)
    assert batch["pixel_values"].dtype == torch.uint8  # the model normalizes on its device (model/pixels.py)
    assert 0 < float(batch["pixel_values"].float().std())
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["labels"].shape == batch["decoder_input_ids"].shape
    decoder = collator.decoder_tokenizer
    for row, key in enumerate(batch["keys"]):
        assert (batch["decoder_input_ids"][row, 0] == decoder.bos_token_id)
        labels = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert labels[-1] == decoder.eos_token_id
        text = decoder.decode(labels[:-1])
        if key.startswith("caption-") and key != "caption-en":
            assert text.startswith(f"[{key.split('-')[1]}]")  # the target, not the prefix, is learned
        inputs = decoder.decode(batch["decoder_input_ids"][row][batch["decoder_attention_mask"][row] == 1])
        if key == "caption-de":
            assert "Das Bild zeigt" in inputs
    prompts = collator.encoder_tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert all(p.startswith("The target language is ") for p in prompts)


def test_annotations_are_balanced_over_task_language_keys(paper):
    import itertools

    stream, _ = loader_parts(*paper)
    keys = Counter(f"{e.annotation.task}-{e.annotation.lang}" for e in itertools.islice(iter(stream), 1400))
    # the paper's plan: caption-en, caption-de, translation-{de,fr,es,ru,zh}; held-out captions never drawn
    assert set(keys) == {"caption-en", "caption-de", "translation-de", "translation-fr", "translation-es",
                         "translation-ru", "translation-zh"}
    assert all(150 <= n <= 250 for n in keys.values()), keys  # 200 each when uniform
    weighted, _ = loader_parts(*paper, balance={"caption-en": 3.0, "translation-fr": 1.0})
    keys = Counter(f"{e.annotation.task}-{e.annotation.lang}" for e in itertools.islice(iter(weighted), 800))
    assert set(keys) == {"caption-en", "translation-fr"} and 0.68 < keys["caption-en"] / 800 < 0.82


def test_the_stream_resumes_where_it_stopped(paper):
    import itertools

    stream, _ = loader_parts(*paper)
    run = list(itertools.islice(iter(stream), 90))  # more than one shard (16 samples) per stream
    stop = run[52]
    resumed, _ = loader_parts(*paper, start={stop.position[0]: stop.position[1:]})
    again = list(itertools.islice(iter(resumed), 37))
    assert [(e.key, e.annotation) for e in again] == [(e.key, e.annotation) for e in run[53:]]
    assert all(torch.equal(a.image, b.image) for a, b in zip(again, run[53:]))


def run_train(config: Path, *extra: str, torchrun: int = 0) -> dict:
    command = ([str(BIN / "torchrun"), "--nproc_per_node", str(torchrun), "-m", "model.train"] if torchrun
               else [str(BIN / "florenz-train")])
    done = subprocess.run([*command, str(config), *extra], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_few_hundred_steps_overfit_a_small_set(tmp_path, small):
    config = train_config(tmp_path, *small, **{"optim.steps": 300, "optim.lr": 3e-3, "optim.warmup_steps": 20,
                                               "run.eval_every": 300, "run.checkpoint_every": 300,
                                               "run.log_every": 10, "data.batch_size": 8})
    summary = run_train(config)
    losses = [m["loss"] for m in metrics(tmp_path / "run") if "loss" in m]
    assert losses[0] > 5 and summary["loss"] < 0.3, (losses[0], summary["loss"])
    assert summary["step"] == 300 and summary["seen"] == 2400


# scheduled unfreezing, every scheduled layer after 3 stages of 2 steps (tiny: 2 encoder, 2 decoder layers)
SUF = {"steps_per_stage": 2, "layers_per_stage": 1}


@pytest.mark.parametrize("steps, stop, overrides", [
    (12, 7, {}),
    (8, 4, {"trainable.unfreeze": {**SUF, "parts": ["encoder", "decoder_cross_attention"]}}),
], ids=["paper freezing", "across an unfreezing step"])
def test_a_resumed_run_gives_the_same_losses_as_an_uninterrupted_one(tmp_path, paper, steps, stop, overrides):
    """Stopped after an odd number of batches with 2 loader workers, so the resumed loader must also
    hand the first batch to the right worker stream; dropout is on, so RNG state matters too. Under
    scheduled unfreezing, stopped right before the step that unfreezes the encoder's last layer."""
    common = {"optim.steps": steps, "run.checkpoint_every": 100, "run.eval_every": 100, "data.workers": 2,
              "model.size": "tiny-gemma", **overrides}
    straight = run_train(train_config(tmp_path / "a", *paper, **common))
    interrupted = train_config(tmp_path / "b", *paper, **common)
    run_train(interrupted, "--steps", str(stop))
    assert (tmp_path / "b" / "run" / "checkpoints" / "latest").read_text() == f"step-{stop:08d}"
    resumed = run_train(interrupted)

    def losses(run: Path) -> tuple[dict, dict]:
        rows = metrics(run)
        return {m["step"]: m["loss"] for m in rows if "loss" in m}, [m for m in rows if "eval" in m][-1]

    (a, a_eval), (b, b_eval) = losses(tmp_path / "a" / "run"), losses(tmp_path / "b" / "run")
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    assert a == b and a_eval == b_eval
    assert straight["parameter_digest"] == resumed["parameter_digest"]
    assert a[steps] != a[steps - 1]  # the losses do move


def test_scheduled_unfreezing_trains_the_top_layers_first_and_leaves_the_rest_untouched(tmp_path, paper):
    """A real run checkpointed after every step: its weights and optimizer state, step by step, against
    the schedule. Florence-2's decoder scheduled too: the decoder's top layer first, the encoder's bottom
    layer (with its embeddings) last."""
    from model.checkpoint import read_training_state
    from model.factory import build_model, load_tokenizers
    from model.modeling import load_weights
    from model.train_config import load_train_config
    from model.unfreeze import TrainableSchedule

    steps = 8
    parts = ["encoder", "decoder_layers", "decoder_cross_attention"]
    path = train_config(tmp_path, *paper, **{"optim.steps": steps, "run.checkpoint_every": 1,
                                             "run.keep_checkpoints": steps, "run.eval_every": 100,
                                             "optim.weight_decay": 0.1, "trainable.unfreeze": {**SUF, "parts": parts}})
    run_train(path)
    config = load_train_config(str(path))
    torch.manual_seed(config.run.seed)  # florenz-train's initial weights
    model = build_model(config.model, *load_tokenizers(config.model), torch.device("cpu"))
    schedule = TrainableSchedule(model, config.trainable)
    weights = [dict(model.state_dict())] + [load_weights(tmp_path / "run" / "checkpoints" / f"step-{k:08d}" / "model")
                                            for k in range(1, steps + 1)]

    def layers(step: int) -> list[str]:
        return sorted({".".join(n.split(".")[:3]) for n in schedule.trainable(step) if ".layers." in n})

    stages = [["decoder.layers.1"], ["decoder.layers.0", "decoder.layers.1"],
              ["decoder.layers.0", "decoder.layers.1", "encoder.layers.1"],
              ["decoder.layers.0", "decoder.layers.1", "encoder.layers.0", "encoder.layers.1"]]
    assert [layers(step) for step in range(steps)] == [stage for stage in stages for _ in range(2)]
    assert [("encoder.embed_tokens.weight" in schedule.trainable(step)) for step in range(steps)] == [False] * 6 + [True] * 2
    assert all("decoder.embed_tokens.weight" in schedule.trainable(step) for step in range(steps))  # the LM head
    assert not any(n.startswith(("vision_tower.", "projector.")) for n in schedule.policy)
    numel = dict(model.named_parameters())
    logged = [row["trainable_params"] for row in metrics(tmp_path / "run") if "loss" in row]
    assert logged == [sum(numel[n].numel() for n in schedule.trainable(step)) for step in range(steps)]

    first = {name: min(s for s in range(steps) if name in schedule.trainable(s)) for name in schedule.policy}
    for step in range(steps):  # weights[step] -> weights[step + 1]: the step with index `step`
        trained = schedule.trainable(step)
        for name in schedule.policy:
            same = torch.equal(weights[step][name], weights[step + 1][name])
            assert same != (name in trained), (step, name)
        optimizer = read_training_state(tmp_path / "run" / "checkpoints" / f"step-{step + 1:08d}")["optimizer"]
        assert set(optimizer["state"]) == trained  # no state for what has not trained yet
        for name, state in optimizer["state"].items():  # already-trained layers keep counting: no reset
            assert int(state["step"]) == step + 1 - first[name], (step, name)


@pytest.mark.parametrize("overrides", [{"optim.grad_accum": 2},
                                       {"trainable.unfreeze": {**SUF, "parts": ["encoder", "decoder_layers"]}}],
                         ids=["paper freezing, accumulated", "scheduled unfreezing"])
def test_two_processes_with_torchrun_train_and_agree(tmp_path, paper, overrides):
    """Under scheduled unfreezing DDP is rebuilt at every stage; with gradient accumulation the first
    micro-step's gradients are not all-reduced (no_sync) but the last one's are; the ranks still end
    identical."""
    config = train_config(tmp_path, *paper, **{"optim.steps": 6, "run.eval_every": 6, "run.checkpoint_every": 6,
                                               **overrides})
    summary = run_train(config, torchrun=2)
    assert summary["ranks"] == 2 and summary["ranks_agree"]
    trainable = [m["trainable_params"] for m in metrics(tmp_path / "run") if "loss" in m]
    assert len(set(trainable)) == (3 if "trainable.unfreeze" in overrides else 1)
    assert summary["seen"] == 6 * 4 * 2 * overrides.get("optim.grad_accum", 1)
    assert (tmp_path / "run" / "checkpoints" / "step-00000006" / "model" / "model.safetensors").exists()
    evals = [m["eval"] for m in metrics(tmp_path / "run") if "eval" in m]
    assert {"loss/seen_caption", "loss/seen_translation", "loss/unseen_caption"} <= set(evals[-1])


def test_the_loss_is_read_back_and_logged_every_log_every_steps_only(tmp_path, paper):
    config = train_config(tmp_path, *paper, **{"optim.steps": 5, "run.log_every": 2, "run.eval_every": 5,
                                               "run.checkpoint_every": 5})
    summary = run_train(config)
    logged = {m["step"]: m["loss"] for m in metrics(tmp_path / "run") if "loss" in m}
    assert sorted(logged) == [2, 4, 5]  # and the last step
    assert summary["loss"] == logged[5] and summary["seen"] == 5 * 4


def test_evaluation_scores_every_task_language_pair_held_out_ones_included(tmp_path, paper):
    config = train_config(tmp_path, *paper, **{"optim.steps": 4, "run.eval_every": 4, "run.checkpoint_every": 4})
    run_train(config)
    results_path = tmp_path / "results.json"
    done = subprocess.run([str(BIN / "florenz-eval"), str(config), "--beams", "2", "--prefix", "--max-images", "3",
                           "--max-new-tokens", "8", "--results", str(results_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(results_path.read_text())
    keys = results["keys"]
    for lang in ("en", "de", "fr", "es", "ru", "zh"):
        assert keys[f"caption-{lang}"]["n"] == 3 and 0 <= keys[f"caption-{lang}"]["cider"]
    for lang in ("de", "fr", "es", "ru", "zh"):
        assert keys[f"translation-{lang}"]["n"] >= 3 and {"bleu", "chrf"} <= set(keys[f"translation-{lang}"])
    assert results["unseen_caption"]["keys"] == ["caption-es", "caption-fr", "caption-ru", "caption-zh"]
    rows = [json.loads(l) for l in (tmp_path / "run" / "scaling_rows.jsonl").read_text().splitlines()]
    assert rows[-1]["params"] > 0 and rows[-1]["seen"] == 16 and "loss/unseen_caption" in rows[-1]


def test_a_wrong_training_config_is_refused_naming_the_field(tmp_path, paper):
    from model.train_config import load_train_config
    from schemas.errors import ConfigError

    for override, field in [({"optim.lr": "fast"}, "train.optim.lr"), ({"run.precision": "fp8"}, "train.run.precision"),
                            ({"data.image_size": 100}, "train.data.image_size"),
                            ({"data.batch_size": 0}, "train.data.batch_size"),
                            ({"trainable.unfreeze": {"steps_per_stage": 0}}, "train.trainable.unfreeze.steps_per_stage"),
                            ({"trainable.unfreeze": {**SUF, "parts": ["encoder", "decoder"]}},
                             "train.trainable.unfreeze.parts[1]"),  # no such part
                            ({"trainable.unfreeze": {**SUF, "parts": ["projector"]}},
                             "train.trainable.unfreeze.parts[0]"),  # no layers
                            ({"model.size": "tiny-gemma", "trainable.unfreeze": {**SUF, "parts": ["decoder_layers"]}},
                             "train.trainable.unfreeze.parts[0]"),  # frozen by the paper's Gemma-2 policy
                            ({"trainable.parts": ["encoder", "encoder"]}, "train.trainable.parts"),
                            ({"trainable.unfreeze": SUF, "run.strategy": "fsdp"}, "train.trainable.unfreeze")]:
        with pytest.raises(ConfigError) as error:
            load_train_config(str(train_config(tmp_path, *paper, **override)))
        assert error.value.field == field
    path = train_config(tmp_path, *paper)
    path.write_text(path.read_text() + "extra: 1\n")
    with pytest.raises(ConfigError, match="train.extra"):
        load_train_config(str(path))
