"""Shared test helpers: locating ../shared/data, writing configs and stores, running the build."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FLORENZ_SHARED_DATA", REPO.parent / "shared" / "data"))
COCO_SAMPLE = SHARED_DATA / "coco-val2017-sample"

PAPER_PLAN = {
    "languages": ["en", "de", "fr", "es", "ru", "zh"],
    "caption_languages": ["en", "de"],
    "translation_languages": ["de", "fr", "es", "ru", "zh"],
    "eval_fraction": 0.0,
    "seed": 0,
    "shard_size": 16,
}


def require_coco_sample() -> Path:
    if not (COCO_SAMPLE / "captions.json").exists():
        pytest.skip(f"real COCO sample not found at {COCO_SAMPLE} (set FLORENZ_SHARED_DATA)")
    return COCO_SAMPLE


def coco_captions() -> dict[str, Any]:
    return json.loads((require_coco_sample() / "captions.json").read_text())


def write_config(tmp: Path, sources: list[dict], plan: dict | None = None, **extra: Any) -> Path:
    store = {"path": str(tmp / "store")}
    if "translator" not in extra:  # with a translator, the fingerprint is derived from it
        store["fingerprint"] = "test-fp"
    config = {"output": str(tmp / "out"), "sources": sources, "store": store, "plan": plan or PAPER_PLAN, **extra}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def coco_source(name: str = "coco", root: Path | None = None) -> dict:
    root = root or require_coco_sample()
    return {"name": name, "type": "coco", "captions": str(root / "captions.json"), "images": str(root / "images")}


def fake_translation(text: str, lang: str) -> str:
    """Store fixture content: the shard builder only joins translations, it does not judge them."""
    return f"[{lang}] {text}"


def fill_store(store: Path, texts: Iterable[str], languages: Iterable[str],
               skip: set[tuple[str, str]] = frozenset(), fingerprint: str = "test-fp") -> None:
    """Write one store part per language with a translation of each normalized text, except the
    (text, lang) in skip."""
    from schemas.records import normalize_text, text_hash
    from transforms.translation_checks import CHECKS_VERSION
    from transforms.translation_store import write_store_rows

    rows = []
    for text in sorted(set(normalize_text(t) for t in texts)):
        for lang in languages:
            if (text, lang) not in skip:
                rows.append({"text_hash": text_hash(text), "lang": lang, "fingerprint": fingerprint,
                             "source_text": text, "translation": fake_translation(text, lang),
                             "status": "accepted", "reason": None, "raw_output": fake_translation(text, lang),
                             "checks_version": CHECKS_VERSION})
    write_store_rows(str(store), rows)


def store_part_files(store: Path) -> list[Path]:
    """The store's part files, every partition's."""
    return sorted(store.glob("fingerprint=*/lang=*/part-*.parquet"))


def read_store_rows(store: Path) -> list[dict]:
    """Every row of a local store, read as anyone can without this project's code: pyarrow.dataset
    with hive partitioning."""
    import pyarrow.dataset as ds

    if not store_part_files(store):
        return []
    return ds.dataset(store, format="parquet", partitioning="hive").to_table().to_pylist()


def run_build(config_path: Path, allow_missing: bool = False, *beam_args: str) -> dict:
    """Run the build graph on Beam's DirectRunner through TestPipeline, under the output's lease as
    the CLI runs it; returns stats.json."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline

    from pipeline.build import build_shards
    from pipeline.output_run import output_run
    from schemas.config import load_config
    from schemas.layout import STATS

    config = load_config(str(config_path))
    with output_run(config, "build", writes_store=False) as run_id:
        with TestPipeline(options=PipelineOptions(["--runner=DirectRunner", *beam_args])) as p:
            build_shards(p, config, run_id, allow_missing=allow_missing)
    return json.loads(Path(config.output, STATS).read_text())


def build_with_copy(root: Path, source: dict, captions: list[str], plan: dict, image_size: int) -> dict:
    """Build `source` under `root` (store filled with the captions' translations, output in root/out)
    with a square pre-resized copy at `image_size` beside each original; returns stats.json. The
    outputs the loader benchmark and the GPU checks (scripts/device) read."""
    from schemas.layout import RESIZE_SQUARE

    fill_store(root / "store", captions, plan["translation_languages"])
    resized = {"image_size": image_size, "resize_mode": RESIZE_SQUARE, "quality": 95}
    return run_build(write_config(root, [source], plan, resized=resized))


def assert_sorted_parts(folder: Path, records_per_part: int, sort_fields: tuple[str, ...], min_parts: int) -> None:
    """Records spread over ceil(records / records_per_part) parts by the hash of their sort key, each
    part sorted by it."""
    from pipeline.output_files import jsonl_parts
    from schemas.layout import part_name
    from transforms.sorted_parts import bucket_of, parts_for

    parts = jsonl_parts(str(folder))
    assert len(parts) >= min_parts
    records = sum(len(Path(part).read_text(encoding="utf-8").splitlines()) for part in parts)
    buckets = parts_for(records, records_per_part)
    for part in parts:
        records = [json.loads(line) for line in Path(part).read_text(encoding="utf-8").splitlines()]
        keys = [tuple(r[f] for f in sort_fields) for r in records]
        assert keys == sorted(keys), part
        assert {part_name(bucket_of(k, buckets)) for k in keys} == {Path(part).name}


def copy_images(names: Iterable[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(require_coco_sample() / "images" / name, dest / name)


MULTI30K = SHARED_DATA / "multi30k"


def multi30k_pairs(split: str, lang: str, n: int, min_chars: int = 30) -> list[tuple[str, str]]:
    """The first n (English, reference) pairs of a Multi30K split whose English passes validation."""
    import gzip

    if not (MULTI30K / "raw" / f"{split}.en.gz").exists():
        pytest.skip(f"Multi30K not found at {MULTI30K}")

    def lines(code: str) -> list[str]:
        with gzip.open(MULTI30K / "raw" / f"{split}.{code}.gz", "rt", encoding="utf-8") as f:
            return [line.strip() for line in f]

    pairs = [(en, ref) for en, ref in zip(lines("en"), lines(lang)) if len(en) >= min_chars]
    return pairs[:n]


def caption_parquet_source(tmp: Path, captions: list[list[str]], name: str = "m30k") -> dict:
    """A Parquet source pairing real COCO images (by path) with the given caption lists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = sorted(p.name for p in (require_coco_sample() / "images").glob("*.jpg"))
    rows = {"id": [f"img{i:03d}" for i in range(len(captions))],
            "captions": captions,
            "path": [images[i % len(images)] for i in range(len(captions))]}
    path = tmp / f"{name}.parquet"
    pq.write_table(pa.table(rows), path)
    return {"name": name, "type": "parquet", "files": str(path), "id_column": "id", "caption_column": "captions",
            "image_path_column": "path", "image_root": str(COCO_SAMPLE / "images")}


def write_staged_sources(folder: Path, images: list[tuple[bytes, str]], row_group_size: int,
                         prefix: str = "") -> list[dict]:
    """Two sources whose images no byte range of their file holds, so validation stages them: `cells`,
    a Parquet file holding the first half of (image, caption) in an image column (row groups of
    `row_group_size` rows), and `zipped`, a gzip-compressed WebDataset tar holding the rest. `prefix`
    goes before the paths in the source specs (a filesystem scheme)."""
    import gzip
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    half = len(images) // 2
    cells, zipped = images[:half], images[half:]
    pq.write_table(pa.table({"id": [f"c{i}" for i in range(len(cells))], "caption": [c for _, c in cells],
                             "jpg": [data for data, _ in cells]}), folder / "rows.parquet",
                   row_group_size=row_group_size)
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (data, caption) in enumerate(zipped):
            for name, content in ((f"z{i}.jpg", data), (f"z{i}.txt", caption.encode("utf-8"))):
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    (folder / "part-000000.tar.gz").write_bytes(gzip.compress(plain.getvalue(), mtime=0))
    return [{"name": "cells", "type": "parquet", "files": f"{prefix}{folder / 'rows.parquet'}", "id_column": "id",
             "caption_column": "caption", "image_column": "jpg"},
            {"name": "zipped", "type": "webdataset", "urls": f"{prefix}{folder / '*.tar.gz'}"}]
