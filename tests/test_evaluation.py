"""The paper's evaluation on a tiny random model and shards the pipeline wrote from the real COCO sample:
configured test sets, the per-sample mean cross-entropy checked against a hand computation, the decoder
prefix and start (what is given, what is scored), the paper's prefixes, CoMMuTE-style contrastive
accuracy, and config errors naming the field."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.helpers import COCO_SAMPLE, SHARED_DATA  # noqa: E402
from tests.train_support import paper, train_config  # noqa: E402,F401 (paper: a fixture)

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
COMMUTE = SHARED_DATA / "commute" / "en-de"
PAPER_SETS = {"unseen_caption": {"task": "caption", "languages": ["es", "zh"]},
              "seen_translation": {"task": "translation", "languages": ["es", "zh"]},
              "seen_caption": {"task": "caption", "languages": ["en", "de"]}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, paper):
    """(config, random tiny model in eval mode, encoder tokenizer, decoder tokenizer)."""
    from model.factory import build_model, load_tokenizers
    from model.train_config import load_train_config

    torch.manual_seed(0)
    path = train_config(tmp_path_factory.mktemp("tiny"), *paper, **{"eval.test_sets": PAPER_SETS})
    config = load_train_config(str(path))
    tokenizers = load_tokenizers(config.model)
    return config, build_model(config.model, *tokenizers, torch.device("cpu")).eval(), *tokenizers


def hand_sample_loss(model, collator, example) -> float:
    """One example alone (no padding): the mean of -log p over its labelled tokens, from the raw logits."""
    t = collator([example])
    states, mask = model.encode(t["pixel_values"], t["input_ids"], t["attention_mask"])
    logits, _ = model.decode(t["decoder_input_ids"], states, mask, t["decoder_attention_mask"])
    labelled = t["labels"][0] != -100
    log_probs = torch.log_softmax(logits[0].double(), dim=-1)[labelled]
    return float(-log_probs.gather(1, t["labels"][0][labelled][:, None]).mean())


@torch.no_grad()
def test_eval_loss_is_the_per_sample_mean_on_the_configured_test_sets(tiny, paper):
    import contextlib

    from model.data import eval_examples, image_transform, shard_urls
    from model.eval_loss import eval_collator, evaluate_loss
    from schemas.sample import task_language

    config, model, encoder_tokenizer, decoder_tokenizer = tiny
    collator = eval_collator(config, encoder_tokenizer, decoder_tokenizer, use_prefix=False)
    output, transform = str(paper[0]), image_transform(config.data.image_size)
    result = evaluate_loss(model, output, transform, collator, 3, 4, torch.device("cpu"), contextlib.nullcontext,
                           config.eval.test_sets)

    keys = {"caption-es", "caption-zh", "translation-es", "translation-zh", "caption-en", "caption-de"}
    assert set(result) == {f"loss/{k}" for k in keys} | {f"loss/{name}" for name in PAPER_SETS}
    samples, tokens = defaultdict(list), defaultdict(list)
    for example in eval_examples(shard_urls(output, "eval"), transform, keys, 4):
        key = task_language(example.annotation.task, example.annotation.lang)
        samples[key].append(hand_sample_loss(model, collator, example))
        tokens[key].append(int((collator([example])["labels"] != -100).sum()))
    for key in keys:
        assert result[f"loss/{key}"] == pytest.approx(sum(samples[key]) / len(samples[key]), rel=1e-5)
    for name, spec in PAPER_SETS.items():
        members = [task_language(spec["task"], lang) for lang in spec["languages"]]
        losses = [loss for key in members for loss in samples[key]]
        assert result[f"loss/{name}"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    # the token-weighted mean (the previous averaging) is a different number on these samples
    weighted = (sum(l * n for key in keys for l, n in zip(samples[key], tokens[key]))
                / sum(n for key in keys for n in tokens[key]))
    plain = sum(l for key in keys for l in samples[key]) / sum(len(samples[key]) for key in keys)
    assert abs(weighted - plain) > 1e-4


def test_the_decoder_prefix_is_given_not_scored_and_the_start_is_the_official_one(tiny):
    import contextlib

    from model.data import Collator, Example
    from model.eval_loss import sample_losses
    from model.generate import generate
    from model.prompts import DECODER_PREFIXES
    from schemas.sample import Annotation

    _, model, encoder_tokenizer, decoder_tokenizer = tiny
    bos, eos = decoder_tokenizer.bos_token_id, decoder_tokenizer.eos_token_id
    image = torch.zeros(3, 64, 64)
    caption = Example(image, Annotation("caption", "de", "Ein Hund liegt im Gras."), "k")
    translation = Example(image, Annotation("translation", "de", "Ein Hund liegt im Gras.", "A dog in grass."), "k")
    target = decoder_tokenizer("Ein Hund liegt im Gras.", add_special_tokens=False).input_ids
    prefix = decoder_tokenizer(DECODER_PREFIXES["de"], add_special_tokens=False).input_ids

    def scored(collator, example):
        t = collator([example])
        return t["decoder_input_ids"][0].tolist(), [i for i in t["labels"][0].tolist() if i != -100]

    for start, lead, bos_scored in (("bos", [], False), ("eos_bos", [eos], True)):
        off, on = (Collator(encoder_tokenizer, decoder_tokenizer, use_prefix=p, decoder_start=start)
                   for p in (False, True))
        inputs, labels = scored(off, caption)
        assert inputs[: len(lead) + 1] == [*lead, bos] and labels == [bos] * bos_scored + target + [eos]
        inputs, labels = scored(on, caption)  # the prefix is given to the decoder and never scored
        assert inputs[: len(lead) + 1 + len(prefix)] == [*lead, bos, *prefix] and labels == target + [eos]
        assert on.decoder_start(caption.annotation) == [*lead, bos, *prefix]  # where generation starts
        assert off.decoder_start(caption.annotation) == [*lead, bos]
        assert scored(on, translation) == scored(off, translation)  # translations have no prefix
        with torch.no_grad():
            loss_off, loss_on = (sample_losses(model, c([caption, translation]), torch.device("cpu"),
                                               contextlib.nullcontext) for c in (off, on))
        assert loss_off[0] != pytest.approx(loss_on[0]) and loss_off[1] == pytest.approx(loss_on[1])
        t = on([caption])  # generation continues after the start it is given, which it does not return
        rows = generate(model, t["pixel_values"], t["input_ids"], t["attention_mask"],
                        on.decoder_start(caption.annotation), eos, num_beams=2, max_new_tokens=3)
        assert len(rows) == 1 and len(rows[0]) <= 3
    # the paper's prefixes, as the official evaluation gives them (src/eval.py lines 728-735)
    assert DECODER_PREFIXES["ru"] == "На картинке изображен" and DECODER_PREFIXES["zh"] == "图为"


def commute_items(path: Path, lines: range, images: list[str]) -> Path:
    """A JSONL of real CoMMuTE en-de items (their texts, by line) paired with real COCO images: CoMMuTE's
    own images are not in the shared data."""
    from model.contrastive import commute_rows

    rows = commute_rows(COMMUTE, COCO_SAMPLE / "images")
    chosen = [{**rows[i], "image": str(COCO_SAMPLE / "images" / image)} for i, image in zip(lines, images)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen), encoding="utf-8")
    return path


def test_a_commute_folder_converts_to_the_jsonl(tmp_path):
    from model.contrastive import main

    out = tmp_path / "commute-de.jsonl"
    assert main([str(COMMUTE), "--images", str(tmp_path / "images"), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    sources = (COMMUTE / "src.en").read_text(encoding="utf-8").splitlines()
    order = (COMMUTE / "img.order").read_text(encoding="utf-8").splitlines()
    assert len(rows) == len(sources) and [r["source"] for r in rows] == sources
    assert rows[0] == {"image": str(tmp_path / "images" / order[0]), "source": sources[0], "lang": "de",
                       "correct": (COMMUTE / "correct.de").read_text(encoding="utf-8").splitlines()[0],
                       "incorrect": (COMMUTE / "incorrect.de").read_text(encoding="utf-8").splitlines()[0]}
    broken = tmp_path / "en-de"
    broken.mkdir()
    for name in ("img.order", "src.en", "correct.de", "incorrect.de"):
        lines = (COMMUTE / name).read_text(encoding="utf-8").splitlines()
        (broken / name).write_text("\n".join(lines[:-1] if name == "correct.de" else lines) + "\n", encoding="utf-8")
    assert main([str(broken), "--images", str(tmp_path), "--out", str(out)]) == 2


@torch.no_grad()
def test_contrastive_accuracy_counts_the_items_whose_correct_translation_has_the_lower_loss(tiny, tmp_path):
    import contextlib

    from model.contrastive import contrastive_accuracy, read_items
    from model.data import Example, image_transform
    from model.eval_loss import eval_collator
    from PIL import Image
    from schemas.sample import Annotation
    from transforms.image_pixels import to_rgb

    config, model, encoder_tokenizer, decoder_tokenizer = tiny
    collator = eval_collator(config, encoder_tokenizer, decoder_tokenizer, use_prefix=False)
    transform, cpu, plain = image_transform(config.data.image_size), torch.device("cpu"), contextlib.nullcontext
    images = sorted(p.name for p in (COCO_SAMPLE / "images").glob("*.jpg"))

    # CoMMuTE's pairs: the same ambiguous source twice, correct and incorrect swapped. With the same image
    # for both rows the model sees identical inputs, so exactly one row of each pair is right: 50 %.
    items = read_items(commute_items(tmp_path / "same.jsonl", range(6), [images[0]] * 2 + [images[1]] * 2
                                     + [images[2]] * 2))
    for a, b in zip(items[::2], items[1::2]):
        assert a.source == b.source and (a.correct, a.incorrect) == (b.incorrect, b.correct)
    result = contrastive_accuracy(model, items, transform, collator, 4, cpu, plain)
    assert result["n"] == 6 and result["accuracy"] == 50.0
    for a, b in zip(result["items"][::2], result["items"][1::2]):
        assert a["loss_correct"] == pytest.approx(b["loss_incorrect"], rel=1e-5) and a["right"] != b["right"]

    # different images: against each translation scored alone (no padding), by hand
    items = read_items(commute_items(tmp_path / "items.jsonl", range(10), images[:10]))
    result = contrastive_accuracy(model, items, transform, collator, 3, cpu, plain)

    def alone(item, target):
        image = transform(to_rgb(Image.open(item.image)))
        return hand_sample_loss(model, collator, Example(image, Annotation("translation", "de", target, item.source),
                                                         "k"))

    right = [alone(i, i.correct) < alone(i, i.incorrect) for i in items]
    assert [r["right"] for r in result["items"]] == right and result["accuracy"] == 100 * sum(right) / 10
    for item, row in zip(items, result["items"]):
        assert row["loss_correct"] == pytest.approx(alone(item, item.correct), rel=1e-5)

    # a tie is not a win (the official `correct < incorrect`)
    tie = tmp_path / "tie.jsonl"
    tie.write_text(json.dumps({"image": images[0], "source": "the bank", "correct": "die Bank", "incorrect": "die Bank",
                               "lang": "de"}) + "\n")
    (tmp_path / images[0]).write_bytes((COCO_SAMPLE / "images" / images[0]).read_bytes())  # relative to the file
    assert contrastive_accuracy(model, read_items(tie), transform, collator, 2, cpu, plain)["accuracy"] == 0.0


def test_contrastive_input_errors_name_the_line_and_field(tmp_path):
    from model.contrastive import ContrastiveInputError, read_items

    image = str(COCO_SAMPLE / "images" / "000000000139.jpg")
    good = {"image": image, "source": "a mole", "correct": "ein Maulwurf", "incorrect": "ein Leberfleck", "lang": "de"}
    for bad, message in [({**good, "correct": ""}, ":2: correct must be a non-empty string"),
                         ({k: v for k, v in good.items() if k != "lang"}, ":2: lang must be"),
                         ({**good, "lang": "xx"}, ":2: lang 'xx'"),
                         ({**good, "image": "missing.jpg"}, ":2: image")]:
        path = tmp_path / "items.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(ContrastiveInputError, match=message):
            read_items(path)


def test_florenz_eval_contrastive_writes_the_accuracy(tiny, paper, tmp_path):
    tiny[1].save_pretrained(tmp_path / "ckpt" / "model")
    config_path = train_config(tmp_path, *paper)
    images = sorted(p.name for p in (COCO_SAMPLE / "images").glob("*.jpg"))
    items = commute_items(tmp_path / "items.jsonl", range(4), images[:4])
    results = tmp_path / "contrastive.json"
    done = subprocess.run([str(BIN / "florenz-eval"), str(config_path), "--checkpoint", str(tmp_path / "ckpt"),
                           "--contrastive", str(items), "--results", str(results)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    written = json.loads(results.read_text())["contrastive"]
    assert written["n"] == 4 and written["accuracy"] == 100 * sum(r["right"] for r in written["items"]) / 4
    assert json.loads(done.stdout)["accuracy"] == written["accuracy"]


def test_wrong_eval_settings_are_refused_naming_the_field(tmp_path, paper):
    from model.eval_loss import output_plan, test_sets
    from model.train_config import load_train_config
    from schemas.errors import ConfigError

    for override, field in [({"eval.test_sets": {"uc": {"task": "captions", "languages": ["es"]}}},
                             "train.eval.test_sets.uc.task"),
                            ({"eval.test_sets": {"uc": {"task": "caption", "languages": []}}},
                             "train.eval.test_sets.uc.languages"),
                            ({"eval.test_sets": {"uc": {"task": "caption"}}}, "train.eval.test_sets.uc.languages"),
                            ({"eval.test_sets": {"UC-1": {"task": "caption", "languages": ["es"]}}},
                             "train.eval.test_sets"),
                            ({"eval.test_sets": {}}, "train.eval.test_sets"),
                            ({"eval.loss_prefix": "yes"}, "train.eval.loss_prefix"),
                            ({"eval.max_target_tokens": 0}, "train.eval.max_target_tokens"),
                            ({"eval.prefix": True}, "train.eval.prefix"),
                            ({"data.decoder_start": "eos"}, "train.data.decoder_start")]:
        with pytest.raises(ConfigError) as error:
            load_train_config(str(train_config(tmp_path, *paper, **override)))
        assert error.value.field.startswith(field), (override, error.value.field)
    # a language the data never evaluates: refused before training or evaluation starts
    config = load_train_config(str(train_config(tmp_path, *paper, **{
        "eval.test_sets": {"uc": {"task": "caption", "languages": ["es", "ja"]}}})))
    with pytest.raises(ConfigError) as error:
        test_sets(output_plan(config.data.output), config.eval.test_sets)
    assert error.value.field == "train.eval.test_sets.uc.languages" and "caption-ja" in str(error.value)
    done = subprocess.run([str(BIN / "florenz-train"), str(tmp_path / "train.yaml")], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2 and "train.eval.test_sets.uc.languages" in done.stderr


def test_the_paper_configs_evaluate_on_the_paper_test_sets():
    from model.train_config import load_train_config

    for name in ("train-florenz-0.4b.yaml", "train-florenz-3.5b-finetune.yaml"):
        config = load_train_config(str(REPO / "configs" / name))
        sets = {k: {"task": v.task, "languages": list(v.languages)} for k, v in config.eval.test_sets.items()}
        assert sets == PAPER_SETS and not config.eval.loss_prefix and config.data.decoder_start == "eos_bos"
