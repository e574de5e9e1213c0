"""Inputs, translation store and output on a real S3-compatible server (moto's standalone server in
its own process, tests/object_store.py), driven through the `florenz-data` CLI only, as a user on
Dataflow with everything on s3:// would: `translate` (tests/fault_server.py answering real Multi30K
references), `build`, `verify`, `report`. The same commands on local copies of the same inputs give
the reference: the s3 output must be byte-identical to it, leave no temporary object behind, and read
each image without downloading much more than the image (counted by a proxy at the server).

Sources: a real COCO subset (captions JSON + images), a Parquet source with image paths beside it,
a Parquet source holding its images in a column (row groups of 4 rows; validation stages them in the
run's folder on s3, and the shard writer reads the staged copies), and two plain WebDataset tars
(images referenced by byte range), all made from the real COCO sample.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.helpers import coco_captions, require_coco_sample
from tests.hostile import CliResult, run_cli
from tests.object_store import (CountingProxy, Request, download_prefix, free_port, list_keys, moto_server,
                                s3_client, s3_flags, upload_tree)
from tests.test_translate_faults import make_corpus, start_fault_server


BUCKET = "florenz"
S3_ROOT = f"s3://{BUCKET}"
PLAN = {"languages": ["en", "de", "fr"], "caption_languages": ["en", "de"], "translation_languages": ["de", "fr"],
        "eval_fraction": 0.25, "seed": 0, "shard_size": 8}
COCO_IMAGES, PARQUET_IMAGES, TAR_IMAGES, CELL_IMAGES = 12, 8, 8, 8  # distinct images of the sample, in this order
# Names of temporary objects: run folders, atomic-write temporaries (<name>.<uuid4 hex>), leases, probes.
TEMPORARY = re.compile(r"(^|/)(_runs|_tmp[^/]*|_lease\.json|_probe-[^/]*)(/|$)|\.[0-9a-f]{32}$|\.tmp$")
STAGING = re.compile(r"^out/_runs/[^/]+/staging/[0-9a-f]{32}\.bin$")  # validation's staged images


@dataclasses.dataclass
class World:
    """The finished runs on s3 and on local disk, and what the build on s3 asked the server for."""

    local_root: Path
    client: object
    runs: dict[str, CliResult]  # "s3 build", "local verify", ...
    translate_requests: list[Request]
    build_requests: list[Request]
    images: dict[str, list[tuple[int, int]]]  # object key -> (offset, size) of each image it holds
    cells: list[bytes]  # the images the Parquet cells hold (staged by the build)


def _make_inputs(root: Path, corpus_captions: list[list[str]]) -> tuple[dict[str, list[tuple[int, int]]], list[bytes]]:
    """The four sources under root/inputs; returns where each image lies, by object key, and the
    images the Parquet cells hold."""
    sample = require_coco_sample()
    names = sorted(p.name for p in (sample / "images").glob("*.jpg"))
    extents: dict[str, list[tuple[int, int]]] = {}

    def copy(name: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((sample / "images" / name).read_bytes())
        extents[dest.relative_to(root).as_posix()] = [(0, dest.stat().st_size)]

    captions = coco_captions()  # the real COCO captions of the first images
    keep = {e["file_name"]: e for e in captions["images"] if e["file_name"] in names[:COCO_IMAGES]}
    ids = {e["id"] for e in keep.values()}
    coco = {**captions, "images": list(keep.values()),
            "annotations": [a for a in captions["annotations"] if a["image_id"] in ids]}
    (root / "inputs/coco").mkdir(parents=True)
    (root / "inputs/coco/captions.json").write_text(json.dumps(coco))
    for name in keep:
        copy(name, root / "inputs/coco/images" / name)

    parquet_names = names[COCO_IMAGES:COCO_IMAGES + PARQUET_IMAGES]
    for name in parquet_names:
        copy(name, root / "inputs/parquet/images" / name)
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(len(parquet_names))],
                             "captions": corpus_captions[:len(parquet_names)],
                             "path": [f"images/{n}" for n in parquet_names]}), root / "inputs/parquet/rows.parquet")

    (root / "inputs/wds").mkdir(parents=True)
    tar_names = names[COCO_IMAGES + PARQUET_IMAGES:COCO_IMAGES + PARQUET_IMAGES + TAR_IMAGES]
    for part in range(2):
        path = root / f"inputs/wds/part-{part:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i, name in enumerate(tar_names[part::2]):
                tar.add(sample / "images" / name, arcname=f"w{part}{i}.jpg")
                caption = corpus_captions[PARQUET_IMAGES + 2 * i + part][0].encode("utf-8")
                info = tarfile.TarInfo(f"w{part}{i}.txt")
                info.size = len(caption)
                tar.addfile(info, io.BytesIO(caption))
        with tarfile.open(path) as tar:
            extents[path.relative_to(root).as_posix()] = [(m.offset_data, m.size) for m in tar.getmembers()
                                                          if m.name.endswith(".jpg")]

    first = COCO_IMAGES + PARQUET_IMAGES + TAR_IMAGES
    cells = [(sample / "images" / name).read_bytes() for name in names[first:first + CELL_IMAGES]]
    (root / "inputs/cells").mkdir(parents=True)
    pq.write_table(pa.table({"id": [f"c{i}" for i in range(CELL_IMAGES)],
                             "captions": corpus_captions[PARQUET_IMAGES + TAR_IMAGES:][:CELL_IMAGES],
                             "jpg": cells}), root / "inputs/cells/rows.parquet", row_group_size=4)
    return extents, cells


def _config(path: Path, root: str, endpoint: str) -> Path:
    """A run config whose every path lies under `root` (a local folder or s3://bucket)."""
    config = {"output": f"{root}/out", "store": {"path": f"{root}/store"}, "plan": PLAN,
              "translator": {"model": "fault", "endpoints": [endpoint], "batch_size": 16, "concurrency": 8},
              "sources": [
                  {"name": "coco", "type": "coco", "captions": f"{root}/inputs/coco/captions.json",
                   "images": f"{root}/inputs/coco/images"},
                  {"name": "rows", "type": "parquet", "files": f"{root}/inputs/parquet/*.parquet", "id_column": "id",
                   "caption_column": "captions", "image_path_column": "path"},
                  {"name": "wds", "type": "webdataset", "urls": f"{root}/inputs/wds/*.tar"},
                  {"name": "cells", "type": "parquet", "files": f"{root}/inputs/cells/*.parquet", "id_column": "id",
                   "caption_column": "captions", "image_column": "jpg"}]}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("object-store")
    pairs, captions = make_corpus(tmp, PARQUET_IMAGES + TAR_IMAGES + CELL_IMAGES)
    local = tmp / "local"
    images, cells = _make_inputs(local, captions)
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(moto_server())
        proxy = stack.enter_context(CountingProxy(endpoint, keep_body=lambda key: bool(STAGING.match(key))))
        client = s3_client(endpoint)
        client.create_bucket(Bucket=BUCKET)
        upload_tree(client, local / "inputs", BUCKET, "inputs")
        server, url = start_fault_server(pairs, tmp / "requests")
        stack.callback(server.wait)
        stack.callback(server.kill)
        configs = {"s3": (_config(tmp / "s3.yaml", S3_ROOT, url), s3_flags(proxy.url), f"{S3_ROOT}/out"),
                   "local": (_config(tmp / "local.yaml", str(local), url), [], str(local / "out"))}
        runs, marks = {}, {}
        for where, (config, flags, out) in configs.items():  # cwd=tmp: a path taken for a local one lands there
            marks[f"{where} translate"] = len(proxy.requests)
            runs[f"{where} translate"] = run_cli("translate", config, *flags, cwd=tmp)
            marks[f"{where} build"] = len(proxy.requests)
            runs[f"{where} build"] = run_cli("build", config, *flags, cwd=tmp)
            marks[f"{where} verify"] = len(proxy.requests)
            runs[f"{where} verify"] = run_cli("verify", out, *flags, cwd=tmp)
            runs[f"{where} report"] = run_cli("report", out, *flags, cwd=tmp)
        yield World(local, client, runs, proxy.requests[marks["s3 translate"]:marks["s3 build"]],
                    proxy.requests[marks["s3 build"]:marks["s3 verify"]], images, cells)


def _shown(run: CliResult) -> str:
    return f"{' '.join(run.args[1:3])}: exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"


def _succeeded(world: World, name: str) -> CliResult:
    run = world.runs[name]
    assert "Traceback (most recent call last)" not in run.output, _shown(run)
    assert run.returncode == 0, _shown(run)
    return run


def _same_bytes(s3: dict[str, bytes], local: dict[str, bytes], local_root: Path) -> list[str]:
    """Names whose bytes differ, once the s3 root in the s3 copy is read as the local root (the
    resolved config and the report name their paths)."""
    return sorted(name for name in s3.keys() | local.keys()
                  if s3.get(name, b"").replace(S3_ROOT.encode(), str(local_root).encode()) != local.get(name))


def _local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_translate_build_verify_report_all_succeed_on_s3(world):
    for command in ("translate", "build", "verify", "report"):
        _succeeded(world, f"s3 {command}")
    stats = json.loads(world.client.get_object(Bucket=BUCKET, Key="out/stats.json")["Body"].read())
    assert set(stats["sources"]) == {"coco", "rows", "wds", "cells"}
    for source, images in (("coco", COCO_IMAGES), ("rows", PARQUET_IMAGES), ("wds", TAR_IMAGES),
                           ("cells", CELL_IMAGES)):
        assert stats["sources"][source]["images"]["read"] == images, stats["sources"][source]
    assert stats["images"]["written"] == COCO_IMAGES + PARQUET_IMAGES + TAR_IMAGES + CELL_IMAGES
    assert stats["translation"]["cache_hits_accepted"] > 0  # the store on s3 was filled, then read
    assert "OK" in world.runs["s3 verify"].stdout
    assert "| train |" in world.runs["s3 report"].stdout  # the report, read back from s3 and printed


def test_the_s3_output_is_byte_identical_to_the_same_build_on_local_disk(world):
    for where in ("s3", "local"):
        _succeeded(world, f"{where} build")
    s3 = {k: v for k, v in download_prefix(world.client, BUCKET, "out").items() if not k.startswith("report/")}
    local = {k: v for k, v in _local_files(world.local_root / "out").items() if not k.startswith("report/")}
    assert any(k.endswith(".tar") for k in s3) and "stats.json" in s3
    assert s3.keys() == local.keys()
    # _SUCCESS holds its run's id; everything else must be the same bytes.
    assert json.loads(s3.pop("_SUCCESS")).keys() == json.loads(local.pop("_SUCCESS")).keys()
    assert _same_bytes(s3, local, world.local_root) == []


def test_the_report_on_s3_equals_the_report_on_local_disk(world):
    _succeeded(world, "s3 report")
    _succeeded(world, "local report")
    s3 = download_prefix(world.client, BUCKET, "out/report")
    local = _local_files(world.local_root / "out" / "report")
    assert "report.md" in s3 and s3.keys() == local.keys()
    assert _same_bytes(s3, local, world.local_root) == []


def test_no_temporary_object_is_left_in_the_bucket(world):
    for command in ("translate", "build", "verify", "report"):
        _succeeded(world, f"s3 {command}")
    keys = list_keys(world.client, BUCKET)
    print("objects in the bucket:", {top: sum(k.startswith(top + "/") for k in keys) for top in ("inputs", "store", "out")})
    assert any(k.startswith("store/fingerprint=") for k in keys) and "out/_SUCCESS" in keys
    assert [k for k in keys if TEMPORARY.search(k)] == []


def image_read_bytes(requests: list[Request], images: dict[str, list[tuple[int, int]]],
                     cells: list[bytes]) -> dict[str, dict]:
    """Per source folder: bytes the server sent for image reads, and the image bytes they were for.

    An image read is a GET starting at an image's first byte. What it was for: with a bounded Range,
    every image inside it (neighbours fetched in one request); open-ended (bytes=S-, or no Range),
    the image at S alone. A GET starting inside an image continues an earlier read: its bytes count,
    it wants nothing new. GETs starting elsewhere (a source scanning a tar from byte 0) are no image
    reads. A GET of a staging object (validation's copies of the Parquet cells, at offsets only the
    run knew) counts for the cells' source, and was for the cell images its body holds whole."""
    totals: dict[str, dict] = {}
    for r in requests:
        if r.method != "GET" or r.bucket != BUCKET or r.status not in (200, 206):
            continue
        if STAGING.match(r.key):
            wanted = [(i, len(cell)) for i, cell in enumerate(cells) if cell in r.body]
            folder = "inputs/cells"
        elif r.key in images:
            start, end = r.range_start, r.range_end
            inside = [(o, n) for o, n in images[r.key] if o <= start < o + n]
            if not inside:
                continue
            wanted = [((r.key, o), n) for o, n in images[r.key] if start <= o and o + n <= end] if end is not None \
                else [((r.key, o), n) for o, n in inside if o == start]
            folder = r.key.rsplit("/", 2)[0] if "/images/" in r.key else r.key.rsplit("/", 1)[0]
        else:
            continue
        kind = totals.setdefault(folder, {"sent": 0, "wanted": 0, "reads": 0, "images": set()})
        kind["sent"] += r.body_bytes
        kind["wanted"] += sum(n for _, n in wanted)
        kind["reads"] += len(wanted)
        kind["images"].update(image for image, _ in wanted)
    return totals


def test_image_reads_download_at_most_one_and_a_half_times_the_image(world):
    """The shard writer (and validation) read images as exact byte ranges: on a tar source that is
    the member's range (or neighbours' merged), not the rest of the tar; a Parquet cell is read from
    its staged copy, once. Counted at the server, for the s3 build."""
    _succeeded(world, "s3 build")
    totals = image_read_bytes(world.build_requests, world.images, world.cells)
    shown = {kind: f"{t['sent'] / max(1, t['wanted']):.2f}x over {t['reads']} image reads ({t['sent']:,} bytes "
                   f"sent for {t['wanted']:,})" for kind, t in sorted(totals.items())}
    print("bytes downloaded per image byte read:", json.dumps(shown, indent=2))
    assert set(totals) == {"inputs/coco", "inputs/parquet", "inputs/wds", "inputs/cells"}, shown
    for kind, t in totals.items():
        expected = len(world.cells) if kind == "inputs/cells" else \
            sum(len(images) for key, images in world.images.items() if key.startswith(kind + "/"))
        assert len(t["images"]) == expected, f"{kind}: some images never read: {shown}"
        assert t["sent"] <= 1.5 * t["wanted"], shown
    assert totals["inputs/cells"]["reads"] == CELL_IMAGES, shown  # each staged image read once, by the shard writer


def test_translate_stages_nothing(world):
    """translate validates images too, but writes no shards: it must not write (or read) staged copies."""
    _succeeded(world, "s3 translate")
    assert world.translate_requests and not [r for r in world.translate_requests if "/staging/" in r.key]


def test_s3_paths_are_refused_in_one_line_without_options_or_without_a_server(tmp_path):
    """No credentials anywhere, or an endpoint where nothing listens: a clear error within seconds,
    where Beam's S3 client would retry for minutes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    closed = f"http://127.0.0.1:{free_port()}"
    config = _config(tmp_path / "s3.yaml", S3_ROOT, "http://127.0.0.1:9/v1")
    cases = [(("verify", f"{S3_ROOT}/out"), "no S3 credentials"),
             (("report", f"{S3_ROOT}/out", *s3_flags(closed)), "cannot reach"),
             (("build", config, *s3_flags(closed)), "cannot reach")]
    for args, message in cases:
        run = run_cli(*args, env=env, timeout=120, cwd=tmp_path)
        assert "Traceback" not in run.output and run.returncode == 2, _shown(run)
        assert message in run.stderr and S3_ROOT in run.stderr, _shown(run)
        assert len(run.stderr.strip().splitlines()) == 1, _shown(run)
    assert not (tmp_path / "s3:").exists()  # nothing written to a local folder in their stead


def test_verify_and_report_refuse_what_no_option_takes(tmp_path):
    for args in (("verify", str(tmp_path), "stray"), ("report", str(tmp_path), "--s3_endpoint_urll", "x")):
        run = run_cli(*args, cwd=tmp_path)
        assert run.returncode == 2 and "unrecognized arguments" in run.stderr, _shown(run)
