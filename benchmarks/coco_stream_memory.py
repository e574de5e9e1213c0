"""Benchmark: peak memory of a real `florenz-data build` on a large COCO-shaped captions file, which
the COCO source streams (transforms/coco_source.py) instead of loading whole.

    .venv/bin/python benchmarks/coco_stream_memory.py [--size-mb 1024] [--images 300]
        [--baseline-mb 256] [--workdir DIR]

The file is COCO-shaped and mostly bulk, as instances files are: `--images` image entries that
name the real COCO sample images (cycled, so most are content duplicates the build rejects), each
with that image's real captions, and every annotation carrying a segmentation-like polygon array
sized so that the file reaches `--size-mb`. The build runs in its own process under a small wrapper
whose only child it is, so the kernel's peak RSS of that child (getrusage RUSAGE_CHILDREN) is the
build's own. `--baseline-mb` also measures what loading a file of that size whole costs
(`json.load`, what the source did before), in a process of its own.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from schemas.layout import STATS  # noqa: E402  (after the path: run as a script)

SAMPLE = Path(os.environ.get("FLORENZ_SHARED_DATA", REPO.parent / "shared" / "data")) / "coco-val2017-sample"
CLI = Path(sys.executable).with_name("florenz-data")
PLAN = {"languages": ["en", "de"], "caption_languages": ["en", "de"], "translation_languages": ["de"],
        "eval_fraction": 0.0, "seed": 0}

# Runs a command as its only child and prints the child's peak RSS in KiB (Linux ru_maxrss).
_PEAK_RSS = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
             "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def write_coco_file(path: Path, sample: Path, size_mb: int, images: int) -> dict:
    """A COCO-shaped captions file of about `size_mb` MiB; returns what it holds."""
    real = json.loads((sample / "captions.json").read_text(encoding="utf-8"))
    captions: dict[int, list[str]] = {}
    for ann in real["annotations"]:
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    files = sorted((img["id"], img["file_name"]) for img in real["images"])
    entries = [(i + 1, files[i % len(files)]) for i in range(images)]
    annotations = sum(len(captions.get(real_id, [])) for _, (real_id, _) in entries)
    polygon_bytes = max(0, size_mb * (1 << 20) // max(1, annotations) - 200)
    point = "123.45,"
    polygon = "[[" + (point * (polygon_bytes // len(point))).rstrip(",") + "]]"
    with path.open("w", encoding="utf-8") as f:
        f.write('{"info": {"description": "COCO-shaped bulk for the streaming benchmark"}, "images": [')
        f.write(",".join(json.dumps({"id": i, "file_name": name, "width": 640, "height": 480})
                         for i, (_, name) in entries))
        f.write('], "annotations": [')
        n = 0
        for image_id, (real_id, _) in entries:
            for text in captions.get(real_id, []):
                f.write(("," if n else "") + json.dumps({"id": n + 1, "image_id": image_id, "caption": text,
                                                          "area": 1.0, "bbox": [0, 0, 1, 1]})[:-1]
                        + ', "segmentation": ' + polygon + "}")
                n += 1
        f.write("]}")
    return {"images": images, "annotations": n, "bytes": path.stat().st_size}


def peak_rss(command: list[str], timeout: Optional[float] = None) -> tuple[int, float, float, str]:
    """(exit code, peak RSS MiB, seconds, output) of `command` run as the only child of a wrapper."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, *command], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO))
    seconds = time.monotonic() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_KIB")]
    peak = int(lines[-1].split()[1]) / 1024 if lines else float("nan")
    return done.returncode, peak, seconds, done.stdout + done.stderr


def build_config(workdir: Path, captions: Path, sample: Path) -> Path:
    config = {"output": str(workdir / "out"), "store": {"path": str(workdir / "store"), "fingerprint": "bench"},
              "sources": [{"name": "coco", "type": "coco", "captions": str(captions),
                           "images": str(sample / "images")}],
              "plan": PLAN}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def measure_build(workdir: Path, size_mb: int, images: int, sample: Path = SAMPLE,
                  timeout: Optional[float] = None) -> dict:
    """Generate the file, build it with the CLI; the figures, and the build's stats.json."""
    captions = workdir / "captions.json"
    held = write_coco_file(captions, sample, size_mb, images)
    rc, peak, seconds, output = peak_rss([str(CLI), "build", str(build_config(workdir, captions, sample)),
                                          "--allow-missing-translations"], timeout=timeout)
    stats_path = workdir / "out" / STATS
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else None
    return {**held, "rc": rc, "peak_rss_mib": peak, "seconds": seconds, "output": output, "stats": stats}


def measure_json_load(workdir: Path, size_mb: int, images: int, sample: Path = SAMPLE) -> dict:
    """The peak RSS of loading a file of `size_mb` whole with json.load."""
    path = workdir / "baseline.json"
    held = write_coco_file(path, sample, size_mb, images)
    rc, peak, seconds, output = peak_rss([sys.executable, "-c", f"import json; json.load(open({str(path)!r}))"])
    path.unlink()
    if rc:
        raise RuntimeError(output)
    return {**held, "peak_rss_mib": peak, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--baseline-mb", type=int, default=0, help="also measure json.load on a file this big")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        rows = []
        if args.baseline_mb:
            base = measure_json_load(Path(tmp), args.baseline_mb, args.images)
            rows.append(("json.load (the source before)", base, f"{base['peak_rss_mib'] / (base['bytes'] / 2**20):.2f}x"))
        built = measure_build(Path(tmp), args.size_mb, args.images)
        if built["rc"]:
            sys.exit(f"build failed (exit {built['rc']}):\n{built['output'][-4000:]}")
        rows.append(("florenz-data build (streamed)", built, f"{built['peak_rss_mib'] / (built['bytes'] / 2**20):.2f}x"))
        print("| what | file MiB | images | annotations | seconds | peak RSS MiB | RSS / file size |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, r, ratio in rows:
            print(f"| {name} | {r['bytes'] / 2**20:,.0f} | {r['images']} | {r['annotations']} | {r['seconds']:.1f} | "
                  f"{r['peak_rss_mib']:,.0f} | {ratio} |")
        stats = built["stats"]
        print(f"\nbuild: images read {stats['images']['read']}, written {stats['images']['written']}, "
              f"rejected {stats['images']['rejected']}; captions read {stats['captions']['read']}, "
              f"balanced: {stats['images']['balanced'] and stats['captions']['balanced']}")


if __name__ == "__main__":
    main()
