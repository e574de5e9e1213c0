"""Benchmark: the Beam shard build vs a plain single-process loop writing the same shards with
webdataset's TarWriter, on the real COCO sample images replicated to N records; peak memory at each
N (it must stay flat: the pipeline streams).

    .venv/bin/python benchmarks/build_throughput.py --sizes 10000,100000 [--workdir DIR] [--multiprocess]

Both sides do the same work per image: read the bytes, decode fully with PIL, write `<key>.jpg` +
`<key>.json` into tars of 1000 samples. Each measurement runs in a fresh process, under
/usr/bin/time -v, so its peak RSS is its own.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "coco-val2017-sample"
CLI = Path(sys.executable).with_name("florenz-data")
SHARD_SIZE = 1000

BASELINE = r'''
import io, json, sys
from PIL import Image
from webdataset import TarWriter
captions_json, images, out = sys.argv[1:4]
data = json.load(open(captions_json))
by_image = {}
for ann in data["annotations"]:
    by_image.setdefault(ann["image_id"], []).append(ann["caption"])
writer, n = None, 0
for img in data["images"]:
    if n %% %(shard)d == 0:
        if writer: writer.close()
        writer = TarWriter(f"{out}/{n // %(shard)d:06d}.tar", mtime=0)
    raw = open(f"{images}/{img['file_name']}", "rb").read()
    Image.open(io.BytesIO(raw)).load()
    body = {"key": str(img["id"]), "annotations": [{"task": "caption", "lang": "en", "target": c}
                                                   for c in by_image.get(img["id"], [])]}
    writer.write({"__key__": f"coco_{img['id']}", "jpg": raw,
                  "json": json.dumps(body, ensure_ascii=False, sort_keys=True).encode()})
    n += 1
writer.close()
''' % {"shard": SHARD_SIZE}


def replicate(n: int, root: Path) -> Path:
    """A COCO captions JSON of n image entries cycling over the 100 real images and their captions."""
    sample = json.loads((SAMPLE / "captions.json").read_text())
    captions: dict[int, list[str]] = {}
    for ann in sample["annotations"]:
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    images, annotations = [], []
    for i in range(n):
        src = sample["images"][i % len(sample["images"])]
        images.append({"id": i, "file_name": src["file_name"]})
        annotations += [{"id": len(annotations), "image_id": i, "caption": c} for c in captions[src["id"]]]
    path = root / f"captions-{n}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def timed(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS MiB of the largest process) of one command."""
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"{cmd} failed:\n{result.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    return seconds, rss_kb / 1024


def beam_build(n: int, captions: Path, root: Path, extra: list[str]) -> tuple[float, float]:
    out = root / f"beam-{n}"
    config = {"output": str(out), "sources": [{"name": "coco", "type": "coco", "captions": str(captions),
                                               "images": str(SAMPLE / "images")}],
              "store": {"path": str(root / "store"), "fingerprint": "none"},
              "plan": {"languages": ["en", "de"], "caption_languages": ["en"], "translation_languages": ["de"],
                       "eval_fraction": 0.0, "seed": 0, "shard_size": SHARD_SIZE}}
    path = root / f"config-{n}.yaml"
    path.write_text(yaml.safe_dump(config))
    result = timed([str(CLI), "build", str(path), "--allow-missing-translations", *extra])
    stats = json.loads((out / "stats.json").read_text())
    if stats["images"]["written"] != n:
        raise RuntimeError(f"beam build wrote {stats['images']['written']} of {n} images")
    shutil.rmtree(out)
    return result


def baseline(n: int, captions: Path, root: Path) -> tuple[float, float]:
    out = root / f"loop-{n}"
    out.mkdir()
    result = timed([sys.executable, "-c", BASELINE, str(captions), str(SAMPLE / "images"), str(out)])
    shutil.rmtree(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--multiprocess", action="store_true", help="also --direct_num_workers 2 multi_processing")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="florenz-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        captions = replicate(n, root)
        base_s, base_rss = baseline(n, captions, root)
        rows.append({"n": n, "method": "plain loop (TarWriter)", "s": base_s, "rss": base_rss, "base": base_s})
        methods = [("Beam DirectRunner", [])]
        if args.multiprocess:
            methods.append(("Beam DirectRunner, 2 processes",
                            ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]))
        for name, extra in methods:
            s, rss = beam_build(n, captions, root, extra)
            rows.append({"n": n, "method": name, "s": s, "rss": rss, "base": base_s})
        for row in rows[-len(methods) - 1:]:
            print(f"  {row['n']:>7} {row['method']:<32} {row['s']:8.1f} s  {row['n'] / row['s']:8.1f}/s  "
                  f"{row['rss']:8.0f} MiB", flush=True)
    print("\n| records | method | seconds | samples/s | vs plain loop | peak RSS MiB |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['method']} | {r['s']:.1f} | {r['n'] / r['s']:.0f} | "
              f"{r['base'] / r['s']:.2f}x | {r['rss']:.0f} |")
    sizes = sorted({r["n"] for r in rows})
    if len(sizes) > 1:
        for method in dict.fromkeys(r["method"] for r in rows):
            small = next(r for r in rows if r["method"] == method and r["n"] == sizes[0])
            large = next(r for r in rows if r["method"] == method and r["n"] == sizes[-1])
            print(f"peak RSS {method}: {large['rss'] / small['rss']:.2f}x from {sizes[0]:,} to {sizes[-1]:,} records")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
