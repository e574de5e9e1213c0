"""Images are read once where they can be: a tar's image bytes go from the parse step into validation
(no second read), the shard writer reads exact byte ranges (adjacent members of one file in one
request), images that no byte range of their source holds (Parquet cells, members of a compressed
tar) are staged once by validation and read once from the staging file, a source image deleted or
changed after validation is a counted rejection in a build that still completes balanced, and
Parquet image bytes are not carried past the source step.

Reads are counted by a Beam FileSystem for the scheme `counted://` (a local file underneath), which
records every read made through it: the sources and the image reader both go through FileSystems for
a scheme that is neither local, S3 nor GCS. Staged images (local files in the run folder) are
counted at the image reader (`RangeReader.read`) and at the staging writer.
"""
from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import re
import tarfile
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that

from pipeline import build
from pipeline.verify import iter_tar_samples, verify_output
from schemas.config import ParquetSource
from schemas.records import ImageRef
from tests.helpers import COCO_SAMPLE, copy_images, require_coco_sample, run_build, write_config, write_staged_sources
from tests.hostile import rejects
from transforms import shard_writer, staging
from transforms.image_io import MAX_REQUEST, MERGE_GAP, ImageChanged, ImageFetcher, plan_requests
from transforms.range_reader import NotARegularFile, RangeReader
from transforms.sources import ReadSource
from transforms.staging import StagingWriter
from transforms.validate import ValidateRecord

IMAGES = sorted(p.name for p in (COCO_SAMPLE / "images").glob("*.jpg"))
CAPTION = "A man rides a bicycle down a busy city street."
PLAN = {"languages": ["en", "de"], "caption_languages": ["en"], "translation_languages": ["de"],
        "eval_fraction": 0.0, "seed": 0}  # an empty store: the builds run with missing translations allowed


@dataclasses.dataclass(frozen=True)
class Read:
    path: str
    opened: int  # which open() of the process made it
    position: int
    size: int


class CountedFileSystem(LocalFileSystem):
    """`counted:///abs/path` is the local file /abs/path; every read through open() is recorded."""

    PREFIX = "counted://"
    reads: list[Read] = []
    _opens = itertools.count()
    _lock = threading.Lock()

    @classmethod
    def scheme(cls) -> str:
        return "counted"

    def _local(self, path: str) -> str:
        return path[len(self.PREFIX):] if path.startswith(self.PREFIX) else path

    def _list(self, dir_or_prefix):
        for m in super()._list(self._local(dir_or_prefix)):
            yield FileMetadata(self.PREFIX + m.path, m.size_in_bytes, m.last_updated_in_seconds)

    def exists(self, path):
        return super().exists(self._local(path))

    def metadata(self, path):
        m = super().metadata(self._local(path))
        return FileMetadata(path, m.size_in_bytes, m.last_updated_in_seconds)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        with self._lock:
            opened = next(self._opens)
        return _CountingFile(super().open(self._local(path), mime_type, compression_type), path, opened)


class _CountingFile:
    def __init__(self, raw, path: str, opened: int):
        self._raw, self._path, self._opened = raw, path, opened

    def _record(self, position: int, size: int) -> None:
        with CountedFileSystem._lock:
            CountedFileSystem.reads.append(Read(self._path, self._opened, position, size))

    def read(self, size: int = -1) -> bytes:
        position = self._raw.tell()
        data = self._raw.read(size)
        self._record(position, len(data))
        return data

    def readinto(self, buffer) -> int:
        position = self._raw.tell()
        n = self._raw.readinto(buffer)
        self._record(position, n or 0)
        return n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._raw.close()

    def __getattr__(self, name):
        return getattr(self._raw, name)


@pytest.fixture(autouse=True)
def _sample():
    require_coco_sample()
    CountedFileSystem.reads.clear()


def image_bytes(i: int) -> bytes:
    return (COCO_SAMPLE / "images" / IMAGES[i]).read_bytes()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> dict[str, tuple[int, int]]:
    """Write a plain tar; (offset, size) of each member's data by name."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        return {info.name: (info.offset_data, info.size) for info in tar}


def written_keys(out: Path) -> set[str]:
    return {key for t in out.glob("*/*.tar") for key, _ in iter_tar_samples(t.read_bytes())}


def test_tar_images_are_read_by_the_parse_and_the_writer_only_in_exact_ranges(tmp_path):
    # k2 (its only caption too short) and k4 (not an image) are rejected by validation: their
    # bytes must never be read again. The others are written; adjacent ones share a request.
    members = []
    for k in range(7):
        data = b"not an image, " * 100 if k == 4 else image_bytes(k)
        members += [(f"k{k}.jpg", data), (f"k{k}.txt", b"Too short." if k == 2 else f"{CAPTION} ({k})".encode())]
    (tmp_path / "wds").mkdir()
    tar_path = tmp_path / "wds" / "00000.tar"
    extents = write_tar(tar_path, members)
    images = {name.split(".")[0]: extents[name] for name, _ in members if name.endswith(".jpg")}
    url = CountedFileSystem.PREFIX + str(tar_path)
    sources = [{"name": "wds", "type": "webdataset", "urls": CountedFileSystem.PREFIX + str(tmp_path / "wds" / "*.tar")}]
    stats = run_build(write_config(tmp_path, sources, {**PLAN, "shard_size": 3}), allow_missing=True)
    assert stats["images"]["balanced"] and stats["images"]["rejected"] == {"image_undecodable": 1, "no_valid_caption": 1}
    written = written_keys(tmp_path / "out")
    kept = {k for k in images if any(key.startswith(f"wds_00000_tar_{k}_") for key in written)}
    assert kept == {"k0", "k1", "k3", "k5", "k6"}

    reads = [r for r in CountedFileSystem.reads if r.path == url]
    by_open: dict[int, list[Read]] = {}
    for r in reads:
        by_open.setdefault(r.opened, []).append(r)
    size = tar_path.stat().st_size
    # The parse: one pass, from byte 0 to the end, in order.
    streams = [rs for rs in by_open.values() if rs[0].position == 0 and sum(r.size for r in rs) == size]
    assert len(streams) == 1
    ranged = [r for rs in by_open.values() if rs is not streams[0] for r in rs if r.size]
    # The writer: each read starts at a written image and ends at one (adjacent ones merged), and
    # covers each written image once, a rejected one never.
    starts = {images[k][0] for k in kept}
    ends = {images[k][0] + images[k][1] for k in kept}
    assert all(r.position in starts and r.position + r.size in ends for r in ranged), ranged
    covered = Counter(k for r in ranged for k, (offset, length) in images.items()
                      if r.position <= offset and offset + length <= r.position + r.size)
    assert covered == {k: 1 for k in kept}
    assert sum(r.size for r in ranged) <= sum(images[k][1] for k in kept) + MERGE_GAP * len(kept)


def test_requests_are_exact_ranges_merged_only_where_adjacent():
    a = ImageRef("s3://b/x.tar", 512, 1000)
    b = ImageRef("s3://b/x.tar", 512 + 1000 + 1536, 2000)  # a tar's headers + caption member apart
    far = ImageRef("s3://b/x.tar", 10**6, 500)  # another image lies between
    other = ImageRef("s3://b/y.tar", 512, 300)
    whole = ImageRef("gs://b/img.jpg")
    staged = [ImageRef("s3://b/out/_runs/r/staging/u.bin", o, n, origin=f"p.parquet: row {i}")
              for i, (o, n) in enumerate(((0, 700), (700, 900), (10_000, 100)))]  # two back to back
    requests = plan_requests([far, b, a, other, whole, *staged])
    spans = {(r.uri, r.start, r.length): sorted(i for i, _ in r.members) for r in requests}
    assert spans == {
        ("s3://b/x.tar", 512, 1000 + 1536 + 2000): [1, 2],
        ("s3://b/x.tar", 10**6, 500): [0],
        ("s3://b/y.tar", 512, 300): [3],
        ("gs://b/img.jpg", 0, -1): [4],
        ("s3://b/out/_runs/r/staging/u.bin", 0, 1600): [5, 6],
        ("s3://b/out/_runs/r/staging/u.bin", 10_000, 100): [7],
    }
    # A merged request never grows past MAX_REQUEST.
    run = [ImageRef("s3://b/big.tar", i * (MAX_REQUEST // 2), MAX_REQUEST // 2) for i in range(4)]
    assert [(r.start, r.length) for r in plan_requests(run)] == [(0, MAX_REQUEST), (MAX_REQUEST, MAX_REQUEST)]
    # An image only its origin names has no bytes to read: reaching a reader unstaged is a bug, not a rejection.
    with pytest.raises(ValueError, match="p.parquet: row 9"):
        plan_requests([a, ImageRef(origin="p.parquet: row 9")])


def test_a_staging_file_opens_at_its_first_image_and_rolls_over_past_its_limit(tmp_path, monkeypatch):
    folder = tmp_path / "staging"
    empty = StagingWriter(str(folder))
    empty.close()
    assert not folder.exists()  # a bundle without such images writes nothing (S3 refuses empty objects)
    monkeypatch.setattr(staging, "MAX_FILE_BYTES", 2500)
    writer = StagingWriter(str(folder))
    refs = [writer.stage(ImageRef(origin=f"image {i}"), bytes([i]) * 1000) for i in range(3)]
    writer.close()
    assert [(r.origin, r.offset, r.length) for r in refs] == [("image 0", 0, 1000), ("image 1", 1000, 1000),
                                                              ("image 2", 0, 1000)]
    assert refs[0].uri == refs[1].uri != refs[2].uri and len(list(folder.iterdir())) == 2
    assert dict(ImageFetcher().fetch(refs)) == {i: bytes([i]) * 1000 for i in range(3)}


def test_local_reads_are_exact_and_refuse_what_is_not_a_regular_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 4)
    reader = RangeReader()
    assert reader.read(str(path), 10, 5) == bytes(range(10, 15))
    assert reader.read(str(path), 1020, 10) == bytes(range(252, 256))  # shorter: what is there
    assert reader.read(str(path)) == path.read_bytes()
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    with pytest.raises(NotARegularFile):  # at once: opening it must not wait for a writer
        reader.read(str(fifo))
    with pytest.raises(FileNotFoundError):
        reader.read(str(tmp_path / "gone.jpg"))
    # For the shard writer: a range the file no longer holds is a changed image, a file gone is gone.
    fetched = dict(ImageFetcher().fetch([ImageRef(str(path), 1000, 100), ImageRef(str(tmp_path / "gone.jpg")),
                                         ImageRef(str(fifo))]))
    assert isinstance(fetched[0], ImageChanged) and "24 of 100 bytes" in str(fetched[0])
    assert isinstance(fetched[1], FileNotFoundError) and isinstance(fetched[2], ImageChanged)


@dataclasses.dataclass
class StagingSpy:
    """What validation staged (the refs the staging writer returned) and what the image reader read."""

    staged: list[ImageRef] = dataclasses.field(default_factory=list)
    reads: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)  # (uri, offset, bytes read)

    def times_read(self) -> Counter:
        """For each staged image, how many reads of its staging file covered it."""
        return Counter({ref: sum(uri == ref.uri and offset <= ref.offset and ref.offset + ref.length <= offset + n
                                 for uri, offset, n in self.reads) for ref in self.staged})

    def staging_bytes_read(self) -> int:
        files = {ref.uri for ref in self.staged}
        return sum(n for uri, _, n in self.reads if uri in files)


@pytest.fixture
def spy(monkeypatch) -> StagingSpy:
    found = StagingSpy()
    stage, read = StagingWriter.stage, RangeReader.read

    def staging(self, ref, data):
        staged = stage(self, ref, data)
        found.staged.append(staged)
        return staged

    def reading(self, uri, offset=0, length=-1):
        data = read(self, uri, offset, length)
        found.reads.append((uri, offset, len(data)))
        return data

    monkeypatch.setattr(StagingWriter, "stage", staging)
    monkeypatch.setattr(RangeReader, "read", reading)
    return found


def staged_images(n: int, bad: int = -1) -> list[tuple[bytes, str]]:
    """n distinct real images with a caption each; image `bad` is not an image."""
    return [(b"not an image, " * 100 if i == bad else image_bytes(i), f"{CAPTION} ({i})") for i in range(n)]


def test_parquet_cells_and_compressed_tar_members_are_staged_once_and_read_once(tmp_path, spy):
    """Parquet images in row groups of 8 rows and the members of a .tar.gz, written in shards of 3
    drawn from all over the dataset: each source is read once, by its source step; each valid image
    is staged once and read once by the shard writer, with an exact range, never from its source
    (reading the cells again would read each touched row group's image column once per shard)."""
    images = staged_images(32, bad=3)
    folder = tmp_path / "in"
    sources = write_staged_sources(folder, images, row_group_size=8, prefix=CountedFileSystem.PREFIX)
    stats = run_build(write_config(tmp_path, sources, {**PLAN, "shard_size": 3}), allow_missing=True)
    out = tmp_path / "out"
    assert stats["images"]["balanced"] and stats["images"]["rejected"] == {"image_undecodable": 1}
    assert stats["images"]["written"] == 31 and verify_output(str(out)) == []
    written = {members["jpg"] for t in out.glob("*/*.tar") for _, members in iter_tar_samples(t.read_bytes())}
    assert written == {data for i, (data, _) in enumerate(images) if i != 3}  # the original bytes

    # Staged: each valid image once (the undecodable one never), in this run's folder, named by its origin.
    assert len(spy.staged) == 31 and {ref.length for ref in spy.staged} <= {len(d) for d, _ in images}
    staging_file = re.compile(re.escape(str(out)) + r"/_runs/[^/]+/staging/[0-9a-f]{32}\.bin")
    assert all(staging_file.fullmatch(ref.uri) for ref in spy.staged), spy.staged
    origins = sorted(ref.origin.rsplit("/", 1)[1] for ref in spy.staged)
    assert origins[0] == "part-000000.tar.gz: member z0.jpg"
    assert origins[-1] == "rows.parquet: row group 1, row 7, column jpg"
    # Read back once each, exactly: the staging bytes read are the staged images' bytes, no more.
    assert spy.times_read() == {ref: 1 for ref in spy.staged}
    assert spy.staging_bytes_read() == sum(ref.length for ref in spy.staged)
    # The sources: read once, by the source step only (a footer read per open aside).
    parquet, tgz = folder / "rows.parquet", folder / "part-000000.tar.gz"
    read_from = Counter()
    for r in CountedFileSystem.reads:
        read_from[r.path[len(CountedFileSystem.PREFIX):]] += r.size
    footer_reads = 3 * (64 << 10)  # pyarrow reads up to 64 KiB of tail per open: the footer check + 2 row groups
    assert 0.9 * parquet.stat().st_size < read_from[str(parquet)] <= parquet.stat().st_size + footer_reads
    assert read_from[str(tgz)] == tgz.stat().st_size
    assert not (out / "_runs").exists()  # the staging files went with the run folder, after _SUCCESS


class _RetriedBundles(ValidateRecord):
    """Every bundle runs twice: first an attempt that stages its images, closes its files and is then
    lost (as when a worker dies before the bundle commits: the runner never hands its outputs on),
    then the attempt that commits."""

    def start_bundle(self) -> None:
        super().start_bundle()
        self.lost = ValidateRecord(self.rules, self.staging)
        self.lost.setup()
        self.lost.start_bundle()

    def process(self, record):
        list(self.lost.process(record))
        yield from super().process(record)

    def finish_bundle(self) -> None:
        self.lost.finish_bundle()
        self.lost.teardown()
        super().finish_bundle()


def test_a_retried_bundles_staging_leaves_no_trace_in_the_output(tmp_path, spy, monkeypatch):
    sources = write_staged_sources(tmp_path / "in", staged_images(12), row_group_size=6)
    config = write_config(tmp_path, sources, {**PLAN, "shard_size": 4})
    out = tmp_path / "out"
    staging_files: dict[str, list[int]] = {}  # by run: sizes of the staging files there while its shards are written
    original = shard_writer.spooled

    def list_staging_then(fetcher, refs):
        for run in out.glob("_runs/*"):
            staging_files[run.name] = [p.stat().st_size for p in run.glob("staging/*.bin")]
        return original(fetcher, refs)

    monkeypatch.setattr(shard_writer, "spooled", list_staging_then)
    run_build(config, True)
    once = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    committed = len(spy.staged)
    monkeypatch.setattr(build, "ValidateRecord", _RetriedBundles)
    run_build(config, True)
    again = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    assert committed == 12 and len(spy.staged) == committed * 3  # the second build staged everything twice
    plain, retried = staging_files.values()
    assert len(retried) == 2 * len(plain) > 0  # one file per bundle, then one more per lost attempt
    assert sum(retried) == 2 * sum(plain)  # the lost attempts' files are complete, and still there
    lost = spy.staged[committed:][::2]  # the lost attempt staged each record just before the committing one
    assert all(spy.times_read()[ref] == 0 for ref in lost)  # the shard writer never read the lost copies
    assert sorted(spy.times_read().values()) == [0] * 12 + [1] * 24
    # The output: byte for byte what the build without a retry wrote (only _SUCCESS names its run).
    assert once.pop("_SUCCESS") != again.pop("_SUCCESS")
    assert again == once and any(name.endswith(".tar") for name in again)
    assert not (out / "_runs").exists() and not (out / "_lease.json").exists()
    assert not [name for name, data in again.items() if b"_runs/" in data]  # no staging file named


def test_an_image_deleted_or_changed_after_validation_is_a_counted_rejection(tmp_path, monkeypatch):
    coco = tmp_path / "coco"
    copy_images(IMAGES[:6], coco / "images")
    (coco / "captions.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": name} for i, name in enumerate(IMAGES[:6])],
        "annotations": [{"id": i, "image_id": i, "caption": f"{CAPTION} ({i})"} for i in range(6)]}))
    (tmp_path / "wds").mkdir()
    tar_path = tmp_path / "wds" / "00000.tar"
    extents = write_tar(tar_path, [("t.jpg", image_bytes(6)), ("t.txt", CAPTION.encode())])
    rows_path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": ["p1", "p2"], "caption": [CAPTION] * 2, "jpg": [image_bytes(7), image_bytes(8)]}),
                   rows_path)
    sources = [{"name": "coco", "type": "coco", "captions": str(coco / "captions.json"), "images": str(coco / "images")},
               {"name": "wds", "type": "webdataset", "urls": str(tmp_path / "wds" / "*.tar")},
               {"name": "pq", "type": "parquet", "files": str(rows_path), "id_column": "id", "image_column": "jpg"}]

    # Between validation and writing (the shard grouping lies between them): one COCO image is
    # deleted, one rewritten with other bytes, the tar cut short inside its image, the Parquet file
    # rewritten with both images replaced (it is not read again: its images were staged), and the
    # staged copy of its second row's image overwritten.
    original = shard_writer.spooled
    changed = threading.Event()

    def change_sources_then(fetcher, refs):
        if not changed.is_set():
            changed.set()
            (coco / "images" / IMAGES[0]).unlink()
            (coco / "images" / IMAGES[1]).write_bytes(image_bytes(9))
            tar_path.write_bytes(tar_path.read_bytes()[:extents["t.jpg"][0] + 100])
            pq.write_table(pa.table({"id": ["p1", "p2"], "caption": [CAPTION] * 2,
                                     "jpg": [image_bytes(10), image_bytes(11)]}), rows_path)
            staging_files = tmp_path.glob("out/_runs/*/staging/*.bin")
            (staged,) = [f for f in staging_files if image_bytes(8) in f.read_bytes()]
            data = staged.read_bytes()
            at = data.index(image_bytes(8))
            staged.write_bytes(data[:at] + bytes(64) + data[at + 64:])
        return original(fetcher, refs)

    monkeypatch.setattr(shard_writer, "spooled", change_sources_then)
    stats = run_build(write_config(tmp_path, sources, {**PLAN, "shard_size": 4}), allow_missing=True)
    out = tmp_path / "out"
    assert changed.is_set()
    unhashed = {(r["key"].rsplit("_", 1)[0] if r["source"] == "wds" else r["key"], r["reason"], r["captions"])
                for r in rejects(out)}  # a tar member's key ends in a hash of its id
    assert unhashed == {("coco_0", "image_missing_at_write", 1), ("coco_1", "image_changed", 1),
                        ("wds_00000_tar_t", "image_changed", 1), ("pq_p2", "image_changed", 1)}
    for level in ("images", "captions"):
        assert stats[level]["balanced"], stats[level]
    assert stats["images"]["written"] == 5 and stats["images"]["rejected"] == {"image_changed": 3,
                                                                                "image_missing_at_write": 1}
    assert written_keys(out) == {"coco_2", "coco_3", "coco_4", "coco_5", "pq_p1"}
    (p1,) = [m["jpg"] for t in out.glob("*/*.tar") for key, m in iter_tar_samples(t.read_bytes()) if key == "pq_p1"]
    assert p1 == image_bytes(7)  # as validated and staged
    (p2,) = [r["detail"] for r in rejects(out) if r["key"] == "pq_p2"]
    assert p2 == f"{rows_path}: row group 0, row 1, column jpg: the bytes differ from those validated"
    index = json.loads((out / "train.index.json").read_text())
    assert sum(e["nsamples"] for e in index["shardlist"]) == 5
    assert verify_output(str(out)) == []  # the shards' keys agree with the manifest, gaps and all


def test_parquet_image_bytes_ride_to_validation_only_not_in_the_reference(tmp_path):
    blobs = [image_bytes(0), image_bytes(1), image_bytes(2)]
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "caption": [CAPTION] * 3, "jpg": blobs}), path, row_group_size=2)
    spec = ParquetSource(name="pq", files=str(path), id_column="id", image_column="jpg")

    def check(records):
        found = {r.source_id: r for r in records}
        assert set(found) == {"a", "b", "c"}
        for i, source_id in enumerate("abc"):
            image = found[source_id].image  # no byte range of the file holds a cell: named, for staging
            assert not image.addressable and image.origin == f"{path}: row group {i // 2}, row {i % 2}, column jpg"
            assert found[source_id].data == blobs[i]  # for validation, fused right after the source

    with test_pipeline.TestPipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        assert_that((p | ReadSource(spec))["records"], check)


class _FakeGcs(BaseHTTPRequestHandler):
    """The two GCS JSON-API calls the reader makes (object metadata, media download with a Range),
    and bucket metadata (the client library's own background lookup); records each request."""

    protocol_version = "HTTP/1.1"
    objects: dict[tuple[str, str], bytes] = {}
    requests: list[tuple[str, str, str]] = []  # (kind, object, Range header)

    def log_message(self, *_):
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/octet-stream") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.split("/")
        bucket = parts[parts.index("b") + 1]
        if "o" not in parts:
            return self._send(200, json.dumps({"name": bucket}).encode(), "application/json")
        name = urllib.parse.unquote("/".join(parts[parts.index("o") + 1:]))
        data = self.objects.get((bucket, name))
        media = "alt=media" in url.query
        self.requests.append(("media" if media else "metadata", name, self.headers.get("Range", "")))
        if data is None:
            return self._send(404, b'{"error": {"code": 404, "message": "Not Found"}}', "application/json")
        if not media:
            return self._send(200, json.dumps({"bucket": bucket, "name": name, "size": str(len(data))}).encode(),
                              "application/json")
        byte_range = self.headers.get("Range")
        if byte_range:
            first, last = byte_range.split("=")[1].split("-")
            return self._send(206, data[int(first):int(last) + 1 if last else None])
        return self._send(200, data)


def test_gcs_reads_are_exact_ranged_gets_through_one_client(monkeypatch):
    tar = bytes(range(256)) * 400
    _FakeGcs.objects = {("bkt", "wds/00000.tar"): tar, ("bkt", "images/a.jpg"): b"jpeg bytes"}
    _FakeGcs.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeGcs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(FileSystems, "_pipeline_options", PipelineOptions(["--no_auth"]))
    try:
        reader = RangeReader()
        assert reader.read("gs://bkt/wds/00000.tar", 1000, 300) == tar[1000:1300]
        assert reader.read("gs://bkt/images/a.jpg") == b"jpeg bytes"
        with pytest.raises(FileNotFoundError):
            reader.read("gs://bkt/images/gone.jpg")
        with reader.open("gs://bkt/wds/00000.tar") as f:  # what pyarrow reads a Parquet footer through
            f.seek(-8, os.SEEK_END)
            assert f.read(8) == tar[-8:]
        assert reader._gcs is not None and reader._gcs is reader._gcs_client()  # one client, kept
    finally:
        server.shutdown()
        server.server_close()
    media = [(name, byte_range) for kind, name, byte_range in _FakeGcs.requests if kind == "media"]
    assert media == [("wds/00000.tar", "bytes=1000-1299"), ("images/a.jpg", ""), ("images/gone.jpg", ""),
                     ("wds/00000.tar", f"bytes={len(tar) - 8}-{len(tar) - 1}")]
