"""Benchmark: the Beam shard build vs a plain single-process loop writing the same shards with
webdataset's TarWriter, on the real COCO sample images replicated to N records; peak memory at each
N (the pipeline's DoFns stream, but the DirectRunner holds its groupings in memory: see
runner_memory.py).

    .venv/bin/python benchmarks/build_throughput.py --sizes 10000,100000 [--source parquet|coco]
        [--workdir DIR] [--multiprocess]

Sources: `parquet` (default) is a streaming source, one row per image (key, image path, caption
list) in row groups of 1000, read by row group with pyarrow's iter_batches; `coco` is one captions
JSON, which the pipeline streams (ijson) and joins by image id in a grouping, and the plain loop
parses whole.

Both sides do the same work per image: read the bytes, decode fully with PIL, write `<key>.jpg` +
`<key>.json` into tars of 1000 samples. Each measurement runs in a fresh process whose RSS (and its
child processes') is sampled every 0.1 s, so its peak is its own.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.group_bounds import with_jpeg_comment  # noqa: E402  (after the path: run as a script)
from schemas.layout import STATS  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "coco-val2017-sample"
CLI = Path(sys.executable).with_name("florenz-data")
SHARD_SIZE = 1000

WRITE_LOOP = r'''
import io, json, sys
from PIL import Image
from webdataset import TarWriter
source, images, out = sys.argv[1:4]
writer, n = None, 0
for key, file_name, captions in records(source):
    if n %% %(shard)d == 0:
        if writer: writer.close()
        writer = TarWriter(f"{out}/{n // %(shard)d:06d}.tar", mtime=0)
    raw = open(f"{images}/{file_name}", "rb").read()
    Image.open(io.BytesIO(raw)).load()
    body = {"key": key, "annotations": [{"task": "caption", "lang": "en", "target": c} for c in captions]}
    writer.write({"__key__": key, "jpg": raw, "json": json.dumps(body, ensure_ascii=False, sort_keys=True).encode()})
    n += 1
writer.close()
''' % {"shard": SHARD_SIZE}

COCO_RECORDS = r'''
import json
def records(path):
    data = json.load(open(path))
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    for img in data["images"]:
        yield f"coco_{img['id']}", img["file_name"], by_image.get(img["id"], [])
'''

PARQUET_RECORDS = r'''
import pyarrow.parquet as pq
def records(path):
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1000):
        for row in batch.to_pylist():
            yield f"pq_{row['key']}", row["image_path"], row["captions"]
'''

BASELINES = {"coco": COCO_RECORDS + WRITE_LOOP, "parquet": PARQUET_RECORDS + WRITE_LOOP}


@dataclasses.dataclass(frozen=True)
class Replica:
    """The sample's images replicated to n records, as one source: its file, its image folder and its
    pipeline config."""

    kind: str  # coco | parquet
    path: Path
    images: Path
    texts: frozenset[str]  # every caption text it holds

    def source_config(self) -> dict:
        if self.kind == "coco":
            return {"name": "coco", "type": "coco", "captions": str(self.path), "images": str(self.images)}
        return {"name": "pq", "type": "parquet", "files": str(self.path), "id_column": "key",
                "caption_column": "captions", "image_path_column": "image_path", "image_root": str(self.images)}


def replicate(n: int, root: Path, kind: str = "parquet") -> Replica:
    """n image records cycling over the 100 real images and their captions, as a COCO captions JSON
    or as Parquet (row groups of 1000). Each record's image is its own file: the real image with a
    JPEG comment naming the record (the same pixels, other bytes), since the build keeps one sample
    per image content."""
    sample = json.loads((SAMPLE / "captions.json").read_text())
    captions: dict[int, list[str]] = {}
    for ann in sample["annotations"]:
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    cycled = [sample["images"][i % len(sample["images"])] for i in range(n)]
    texts = frozenset(c for caps in captions.values() for c in caps)
    images = root / f"images-{n}"
    images.mkdir(parents=True, exist_ok=True)
    originals = {src["file_name"]: (SAMPLE / "images" / src["file_name"]).read_bytes() for src in sample["images"]}
    names = [f"{i:07d}.jpg" for i in range(n)]
    for name, src in zip(names, cycled):
        if not (images / name).exists():
            (images / name).write_bytes(with_jpeg_comment(originals[src["file_name"]], f"record {name}"))
    if kind == "coco":
        entries = [{"id": i, "file_name": name} for i, name in enumerate(names)]
        annotations = [{"image_id": i, "caption": c} for i, src in enumerate(cycled) for c in captions[src["id"]]]
        for j, ann in enumerate(annotations):
            ann["id"] = j
        path = root / f"captions-{n}.json"
        path.write_text(json.dumps({"images": entries, "annotations": annotations}))
        return Replica(kind, path, images, texts)
    table = pa.table({"key": [str(i) for i in range(n)], "image_path": names,
                      "captions": [captions[src["id"]] for src in cycled]})
    path = root / f"records-{n}.parquet"
    pq.write_table(table, path, row_group_size=SHARD_SIZE)
    return Replica(kind, path, images, texts)


@dataclasses.dataclass(frozen=True)
class Measured:
    """One command's wall time and peak memory, sampled: of its largest process, of the command's own
    process (the Beam runner: it holds the local runners' groupings) and of the largest
    child (the SDK workers that run the DoFns, with --direct_running_mode multi_processing)."""

    seconds: float
    peak_rss: float  # MiB
    main_rss: float
    worker_rss: float


def timed(cmd: list[str], every: float = 0.1) -> Measured:
    """Run `cmd`, sampling the RSS of it and its descendants every `every` seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peaks: dict[int, int] = {}
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            for p in [root, *root.children(recursive=True)]:
                peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
        except psutil.Error:
            pass  # a process ended between listing and reading
        time.sleep(every)
    seconds = time.perf_counter() - start
    reader.join()
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed:\n{''.join(stderr)[-3000:]}")
    mib = 1 / 2**20
    main = peaks.pop(proc.pid, 0) * mib
    workers = max(peaks.values(), default=0) * mib
    return Measured(seconds, max(main, workers), main, workers)


def beam_build(n: int, replica: Replica, root: Path, extra: list[str]) -> Measured:
    out = root / f"beam-{n}"
    config = {"output": str(out), "sources": [replica.source_config()],
              "store": {"path": str(root / "store"), "fingerprint": "none"},
              "plan": {"languages": ["en", "de"], "caption_languages": ["en"], "translation_languages": ["de"],
                       "eval_fraction": 0.0, "seed": 0, "shard_size": SHARD_SIZE}}
    path = root / f"config-{n}.yaml"
    path.write_text(yaml.safe_dump(config))
    result = timed([str(CLI), "build", str(path), "--allow-missing-translations", *extra])
    stats = json.loads((out / STATS).read_text())
    if stats["images"]["written"] != n:
        raise RuntimeError(f"beam build wrote {stats['images']['written']} of {n} images")
    shutil.rmtree(out)
    return result


def baseline(n: int, replica: Replica, root: Path) -> Measured:
    out = root / f"loop-{n}"
    out.mkdir()
    result = timed([sys.executable, "-c", BASELINES[replica.kind], str(replica.path), str(replica.images), str(out)])
    shutil.rmtree(out)
    return result


METHODS = {"plain loop (TarWriter)": None, "Beam DirectRunner": [],
           "Beam DirectRunner, 2 processes": ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]}


def _mib(value: float) -> str:
    return f"{value:.0f}" if value else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--source", choices=sorted(BASELINES), default="parquet")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--multiprocess", action="store_true", help="also --direct_num_workers 2 multi_processing")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="florenz-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    methods = dict(list(METHODS.items())[:3 if args.multiprocess else 2])
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        replica = replicate(n, root, args.source)
        for name, extra in methods.items():
            m = baseline(n, replica, root) if extra is None else beam_build(n, replica, root, extra)
            rows.append({"n": n, "method": name, **dataclasses.asdict(m)})
            print(f"  {n:>7} {name:<32} {m.seconds:8.1f} s  {n / m.seconds:8.1f}/s  {m.peak_rss:8.0f} MiB", flush=True)
    print(f"\nsource: {args.source}; peak RSS sampled every 0.1 s; runner = the command's process, "
          "workers = its largest child process")
    print("| records | method | seconds | samples/s | vs plain loop | peak RSS MiB | runner MiB | workers MiB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        base = next(b for b in rows if b["n"] == r["n"] and methods[b["method"]] is None)
        print(f"| {r['n']:,} | {r['method']} | {r['seconds']:.1f} | {r['n'] / r['seconds']:.0f} | "
              f"{base['seconds'] / r['seconds']:.2f}x | {r['peak_rss']:.0f} | {_mib(r['main_rss'])} | "
              f"{_mib(r['worker_rss'])} |")
    sizes = sorted({r["n"] for r in rows})
    if len(sizes) > 1:
        for method in methods:
            small, large = (next(r for r in rows if r["method"] == method and r["n"] == n) for n in (sizes[0], sizes[-1]))
            growth = ", ".join(f"{part} {large[k] / small[k]:.2f}x" for part, k in
                               (("peak", "peak_rss"), ("runner", "main_rss"), ("workers", "worker_rss")) if small[k])
            print(f"RSS growth {sizes[0]:,} -> {sizes[-1]:,} records, {method}: {growth}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
