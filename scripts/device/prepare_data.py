"""What issue 16's GPU run reads, built here (no GPU needed) into one folder that travels with the call:

    PYTHONPATH=$PWD .venv/bin/python scripts/device/prepare_data.py .device [--images 40]

- out/: a pipeline output of the paper's plan over the first N images of the real COCO sample (the
  tests' store fixture stands in for translations), with an eval split and the square 224 px copy
  (`resized`), written by the pipeline's own build;
- tokenizers/: the tests' locally trained tokenizers, their vocabularies padded to Florence-2's and
  Gemma-2's sizes, so the end-to-end run's embeddings and LM head have the shapes the synthetic benchmark
  times (a small vocabulary would make the real loop look faster than it is);
- data/coco-val2017-sample/captions.json: the sample's captions, for benchmarks/loader_throughput.py's
  tokenizers (FLORENZ_SHARED_DATA=.device/data there);
- train-florenz-0.4b.yaml (the GPU run) and train-smoke.yaml (the same run at toy size, for the CPU
  smoke test of scripts/device/issue16.sh), paths relative to the config's folder or the repo root.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from model.sizes import FLORENCE2_VOCAB, GEMMA2_VOCAB  # noqa: E402
from tests.helpers import PAPER_PLAN, build_with_copy, coco_captions, coco_source, copy_images  # noqa: E402
from tests.train_support import train_tokenizers  # noqa: E402

IMAGE_SIZE = 224
RUN_OUT = "/tmp/florenz-issue16-run"  # outside the repo: a run folder that travelled back would be resumed


def coco_subset(dest: Path, images: int) -> Path:
    """The first `images` images of the COCO sample (by id) with their captions, as a COCO folder."""
    captions = coco_captions()
    chosen = sorted(captions["images"], key=lambda i: i["id"])[:images]
    ids = {i["id"] for i in chosen}
    subset = {**captions, "images": chosen, "annotations": [a for a in captions["annotations"] if a["image_id"] in ids]}
    dest.mkdir(parents=True)
    (dest / "captions.json").write_text(json.dumps(subset))
    copy_images([i["file_name"] for i in chosen], dest / "images")
    return dest


def build_output(dest: Path, images: int) -> None:
    with tempfile.TemporaryDirectory(prefix="issue16-build-") as tmp:
        root = Path(tmp)
        coco = coco_subset(root / "coco", images)
        plan = {**PAPER_PLAN, "eval_fraction": 0.2, "shard_size": 8}
        captions = [a["caption"] for a in json.loads((coco / "captions.json").read_text())["annotations"]]
        stats = build_with_copy(root, coco_source(root=coco), captions, plan, IMAGE_SIZE)
        shutil.move(str(root / "out"), dest)
    print(f"[prepare] {dest}: {stats['images']['written']} images, {stats['captions']['written']} captions")


def pad_vocabulary(folder: Path, size: int) -> None:
    """Unreachable vocabulary entries up to `size` (no merge produces them), so len(tokenizer) == size."""
    path = folder / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    vocab = tokenizer["model"]["vocab"]
    taken = len(vocab) + sum(1 for t in tokenizer["added_tokens"] if t["content"] not in vocab)
    for i in range(taken, size):
        vocab[f"<{i:x}>"] = i
    path.write_text(json.dumps(tokenizer, ensure_ascii=False, separators=(",", ":")))


def tokenizers(dest: Path) -> tuple[Path, Path]:
    encoder, decoder = train_tokenizers(dest)
    pad_vocabulary(encoder, FLORENCE2_VOCAB)
    pad_vocabulary(decoder, GEMMA2_VOCAB)
    from transformers import AutoTokenizer
    for folder, size in ((encoder, FLORENCE2_VOCAB), (decoder, GEMMA2_VOCAB)):
        if len(AutoTokenizer.from_pretrained(folder)) != size:
            sys.exit(f"{folder}: padding gave {len(AutoTokenizer.from_pretrained(folder))} tokens, not {size}")
    return encoder, decoder


def train_config(dest: Path, name: str, tokenizer_dirs: tuple[Path, Path], **sections: dict) -> None:
    """A florenz-train config in `dest`: data.output relative to it, tokenizers relative to the repo root
    (the run's working directory), the run folder outside the repo."""
    config = {
        "data": {"output": "out", "image_size": IMAGE_SIZE, "shuffle_buffer": 64, "eval_images": 8,
                 "max_target_tokens": 32, **sections.get("data", {})},
        "model": {"init": "random", "encoder_tokenizer": str(tokenizer_dirs[0].relative_to(REPO)),
                  "decoder_tokenizer": str(tokenizer_dirs[1].relative_to(REPO)), **sections.get("model", {})},
        "optim": {"lr": 1.0e-4, "weight_decay": 0.01, **sections.get("optim", {})},
        "run": {"seed": 0, "progress": False, **sections.get("run", {})},
    }
    (dest / name).write_text(yaml.safe_dump(config, sort_keys=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--images", type=int, default=32, help="COCO sample images in the output (size: ~200 KB each)")
    args = parser.parse_args()
    dest = args.dest.resolve()
    for made in ("out", "tokenizers", "data"):  # what this writes; the wheels beside them stay
        shutil.rmtree(dest / made, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    build_output(dest / "out", args.images)
    tokenizer_dirs = tokenizers(dest / "tokenizers")
    shared = dest / "data" / "coco-val2017-sample"
    shared.mkdir(parents=True)
    shutil.copy(Path(coco_source()["captions"]), shared / "captions.json")
    # 0.4b from random weights, bf16, compiled, batch 512 (the benchmark's fastest row), 12 loader workers;
    # eval at the end only, on 8 images
    train_config(dest, "train-florenz-0.4b.yaml", tokenizer_dirs,
                 data={"batch_size": 512, "workers": 12}, model={"size": "florenz-0.4b"},
                 optim={"steps": 200, "warmup_steps": 20},
                 run={"out": RUN_OUT, "precision": "bf16", "compile": True, "log_every": 10, "eval_every": 1000,
                      "checkpoint_every": 1000, "keep_checkpoints": 1})
    train_config(dest, "train-smoke.yaml", tokenizer_dirs,
                 data={"batch_size": 4, "workers": 2, "eval_images": 1}, model={"size": "tiny"},
                 optim={"steps": 6, "warmup_steps": 2},
                 run={"out": RUN_OUT + "-smoke", "precision": "fp32", "log_every": 2, "eval_every": 1000,
                      "checkpoint_every": 1000, "keep_checkpoints": 1})
    return 0


if __name__ == "__main__":
    sys.exit(main())
