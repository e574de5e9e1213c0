"""The translation store's layout, STORE/fingerprint=<fp>/lang=<lang>/part-*.parquet: written by its
API, read back by the pipeline (ReadStoreEntries), by plain pyarrow.dataset and by HF datasets; the
same entry chosen per key in every layout; compact-store merging parts while a real build reads the
store; a store of the old flat layout refused by builds and migrated by compact-store."""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from schemas.arrow import TRANSLATION_SCHEMA
from transforms.translation_checks import CHECKS_VERSION
from tests.helpers import (PAPER_PLAN, coco_captions, copy_images, fake_translation, read_store_rows,
                           store_part_files, write_config)
from tests.hostile import run_cli

FP = "v9-0123456789abcdef"
ODD_FP = "user fp/1%"  # escaped in its folder name, read back as written
LANGS = ("de", "fr", "zh")


def make_rows(texts: int, fingerprints=(FP,), langs=LANGS, seed: int = 0, copies: int = 3) -> list[dict]:
    """Store rows with several entries per key: accepted ones with different translations, rejected ones."""
    rng = random.Random(seed)
    rows = []
    for i in range(texts):
        text = f"caption number {i}: a dog on a sofa"
        for fp in fingerprints:
            for lang in langs:
                for _ in range(rng.randint(1, copies)):
                    accepted = rng.random() < 0.6
                    answer = f"[{lang}] {text} v{rng.randint(0, 3)}" if accepted else "x"
                    rows.append({"text_hash": hashlib.sha256(text.encode()).hexdigest(), "lang": lang,
                                 "fingerprint": fp, "source_text": text, "translation": answer,
                                 "status": "accepted" if accepted else "rejected",
                                 "reason": None if accepted else rng.choice(["empty", "wrong_script"]),
                                 "raw_output": answer, "checks_version": CHECKS_VERSION})
    rng.shuffle(rows)
    return rows


def write_like_translate(store: Path, rows: list[dict], part_rows: int) -> None:
    """Parts as the translate stage writes them: one per batch of part_rows rows of one (fingerprint, lang)."""
    from transforms.translation_store import write_store_part

    by_partition: dict = {}
    for row in rows:
        by_partition.setdefault((row["fingerprint"], row["lang"]), []).append(row)
    for (fp, lang), part in sorted(by_partition.items()):
        for start in range(0, len(part), part_rows):
            write_store_part(str(store), fp, lang, part[start:start + part_rows])


def expected_entries(rows: list[dict], fingerprint: str, langs) -> list:
    """((text_hash, lang), StoreEntry) per key, as prefer_entry picks it."""
    from transforms.translation_store import StoreEntry, prefer_entry

    grouped: dict = {}
    for r in rows:
        if r["fingerprint"] == fingerprint and r["lang"] in langs:
            grouped.setdefault((r["text_hash"], r["lang"]), []).append(
                StoreEntry(r["status"], r["translation"], r["reason"]))
    return sorted((key, prefer_entry(entries)) for key, entries in grouped.items())


def resolved_rows(rows: list[dict]) -> list[dict]:
    """One row per (fingerprint, lang, text_hash), the one prefer_entry picks."""
    from transforms.translation_store import entry_order

    best: dict = {}
    for r in rows:
        key = (r["fingerprint"], r["lang"], r["text_hash"])
        order = entry_order(r["status"], r["translation"], r["reason"])
        if key not in best or order < entry_order(best[key]["status"], best[key]["translation"], best[key]["reason"]):
            best[key] = r
    return sorted(best.values(), key=lambda r: (r["fingerprint"], r["lang"], r["text_hash"]))


def row_key(r: dict) -> tuple:
    return tuple(str(r[name]) for name in TRANSLATION_SCHEMA.names)


def read_with_pipeline(store: Path, fingerprint: str, langs, expected: list) -> None:
    """ReadStoreEntries on the DirectRunner, checked against `expected`."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from schemas.config import StoreConfig
    from transforms.translation_store import ReadStoreEntries

    with TestPipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        assert_that(p | ReadStoreEntries(StoreConfig(str(store), fingerprint), langs), equal_to(expected))


def compact(store: Path, rows_per_file: int, **kwargs) -> dict:
    from pipeline.compact_store import compact_store

    return compact_store(str(store), ["--runner=DirectRunner"], rows_per_file=rows_per_file, **kwargs)


# -- written by the API, read by the pipeline, pyarrow and HF ----------------------------------------
def test_parts_written_by_the_api_are_read_by_the_pipeline_pyarrow_and_hf_datasets(tmp_path):
    store = tmp_path / "store"
    rows = make_rows(30, fingerprints=(FP, ODD_FP))
    write_like_translate(store, rows, part_rows=16)
    parts = store_part_files(store)
    assert {p.parent.relative_to(store).as_posix() for p in parts} == {
        f"fingerprint={quote(fp, safe='')}/lang={lang}" for fp in (FP, ODD_FP) for lang in LANGS}
    assert (store / "fingerprint=user%20fp%2F1%25").is_dir()

    # The pipeline reads one fingerprint and the languages asked for, one entry per key.
    read_with_pipeline(store, FP, ["de", "fr"], expected_entries(rows, FP, {"de", "fr"}))
    read_with_pipeline(store, ODD_FP, ["zh"], expected_entries(rows, ODD_FP, {"zh"}))

    # pyarrow.dataset with hive partitioning: every row as written, and a filter prunes partitions.
    dataset = ds.dataset(store, format="parquet", partitioning="hive")
    assert sorted(map(row_key, dataset.to_table().to_pylist())) == sorted(map(row_key, rows))
    assert pq.read_table(store, partitioning=None).num_rows == len(rows)
    wanted = (ds.field("fingerprint") == ODD_FP) & (ds.field("lang") == "de")
    assert len(list(dataset.get_fragments(filter=wanted))) == len(
        [p for p in parts if p.parent.name == "lang=de" and "user" in p.parent.parent.name])
    assert sorted(map(row_key, dataset.to_table(filter=wanted).to_pylist())) == sorted(
        row_key(r) for r in rows if r["fingerprint"] == ODD_FP and r["lang"] == "de")

    # HF datasets, offline, in a process of its own: no code of this project.
    data_files = str(store / f"fingerprint={quote(FP, safe='')}" / "lang=fr" / "*.parquet")
    script = ("import datasets, json, sys; d = datasets.load_dataset('parquet', data_files=sys.argv[1], "
              "split='train', cache_dir=sys.argv[2]); print(json.dumps(d.to_list()))")
    done = subprocess.run([sys.executable, "-c", script, data_files, str(tmp_path / "hf-cache")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
                               "HF_HOME": str(tmp_path / "hf-home")})
    assert done.returncode == 0, done.stderr[-3000:]
    hf_rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(map(row_key, hf_rows)) == sorted(row_key(r) for r in rows if r["fingerprint"] == FP
                                                     and r["lang"] == "fr")


def test_the_part_api_names_checks_and_rewrites_parts_idempotently(tmp_path):
    from transforms.translation_store import part_exists, part_path, read_part, write_store_part

    store = str(tmp_path / "store")
    rows = [r for r in make_rows(5) if r["lang"] == "de"]
    assert part_path(store, "a/b", "pt-BR", "0f") == f"{store}/fingerprint=a%2Fb/lang=pt-BR/part-0f.parquet"
    with pytest.raises(ValueError, match="two hex digits"):
        part_path(store, FP, "de", "run-7")  # listed by no slice: would go unread
    with pytest.raises(ValueError, match="given rows of"):
        write_store_part(store, FP, "fr", rows)

    path = write_store_part(store, FP, "de", rows, name="ab12")
    assert path == part_path(store, FP, "de", "ab12") and part_exists(store, FP, "de", "ab12")
    assert not part_exists(store, FP, "fr", "ab12")
    first = Path(path).read_bytes()
    assert write_store_part(store, FP, "de", list(reversed(rows)), name="ab12") == path  # a retried bundle
    assert Path(path).read_bytes() == first
    assert sorted(map(row_key, read_part(path))) == sorted(map(row_key, rows))
    content_named = write_store_part(store, FP, "de", rows)
    assert Path(content_named).name == f"part-{hashlib.sha256(first).hexdigest()[:24]}.parquet"
    assert not list((tmp_path / "store" / "_tmp").iterdir())


# -- duplicates, compaction, determinism ------------------------------------------------------------
def test_duplicates_resolve_to_the_same_entry_in_every_layout_and_compaction_is_deterministic(tmp_path):
    from transforms.store_compaction import bucket_of
    from transforms.translation_store import COMPACTED_PART

    rows = make_rows(120, fingerprints=(FP, ODD_FP), seed=1)
    store = tmp_path / "store"
    write_like_translate(store, rows, part_rows=8)
    expected = expected_entries(rows, FP, set(LANGS))
    read_with_pipeline(store, FP, LANGS, expected)
    twin = tmp_path / "twin"
    shutil.copytree(store, twin)

    counts = compact(store, rows_per_file=50)
    assert counts["parts_read"] == counts["parts_deleted"] == len(store_part_files(twin))
    assert counts["rows_read"] == len(rows) and counts["rows_written"] == len(resolved_rows(rows))
    files = store_part_files(store)
    assert files and all(COMPACTED_PART.fullmatch(f.name) for f in files)
    assert len(files) == counts["files_written"] < counts["parts_read"] / 4
    for f in files:  # bucket k of n by text_hash, sorted by it, one row per key
        match = COMPACTED_PART.fullmatch(f.name)
        hashes = pq.read_table(f, columns=["text_hash"])["text_hash"].to_pylist()
        assert hashes == sorted(set(hashes))
        assert {bucket_of(h, int(match["n"])) for h in hashes} == {int(match["k"])}
    assert sorted(map(row_key, read_store_rows(store))) == sorted(map(row_key, resolved_rows(rows)))
    read_with_pipeline(store, FP, LANGS, expected)

    # The same inputs compacted again elsewhere: byte-identical files (only the generation differs).
    compact(twin, rows_per_file=50)

    def by_bucket(root: Path) -> dict:
        return {(f.parent.relative_to(root).as_posix(), COMPACTED_PART.fullmatch(f.name)["k"]): f.read_bytes()
                for f in store_part_files(root)}
    assert by_bucket(twin) == by_bucket(store)

    # A compacted store is left alone; new parts beside it (a mixed layout) read the same way.
    assert compact(store, rows_per_file=50) == {"migrated": 0, "partitions": 6}
    more = make_rows(150, fingerprints=(FP,), seed=2)
    write_like_translate(store, more, part_rows=8)
    read_with_pipeline(store, FP, LANGS, expected_entries(rows + more, FP, set(LANGS)))
    counts = compact(store, rows_per_file=50, fingerprint=FP)
    assert counts["partitions"] == 3 and counts["rows_written"] == len(resolved_rows(
        [r for r in rows + more if r["fingerprint"] == FP]))
    read_with_pipeline(store, FP, LANGS, expected_entries(rows + more, FP, set(LANGS)))
    assert sorted(map(row_key, read_store_rows(store))) == sorted(map(row_key, resolved_rows(rows + more)))


def test_a_reader_whose_listed_parts_were_compacted_away_reads_their_replacements(tmp_path):
    """The listing is taken, then compact-store replaces every listed part, then the listed parts are
    read: each is gone, and their partitions' compacted parts are listed and read instead."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.group_metrics import MeasuredCombinePerKey
    from transforms.translation_store import (METRICS, APPENDED_SLICES, Partition, PartRef, ReadListedParts,
                                              list_appended, list_compacted, partition_dir, prefer_entry)

    store = tmp_path / "store"
    rows = make_rows(60, seed=3)
    write_like_translate(store, rows, part_rows=8)
    listed = []
    for lang in LANGS:
        partition = Partition(lang, partition_dir(str(store), FP, lang))
        paths = [p for s in APPENDED_SLICES for p in list_appended(partition.directory, s)]
        listed += [PartRef(partition, p) for p in paths + list_compacted(partition.directory)]
    compact(store, rows_per_file=40)
    assert not any(Path(ref.path).exists() for ref in listed)

    p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    entries = (p | beam.Create(listed) | ReadListedParts() | MeasuredCombinePerKey(prefer_entry))
    assert_that(entries, equal_to(expected_entries(rows, FP, set(LANGS))))
    result = p.run()
    result.wait_until_finish()
    (gone,) = result.metrics().query(MetricsFilter().with_namespace(METRICS).with_name("parts_gone"))["counters"]
    assert gone.committed == len(listed)


def test_the_reports_acceptance_counts_a_partition_again_when_a_listed_part_vanished(tmp_path, monkeypatch):
    """Every entry once, even when compact-store deleted a part the report had listed."""
    import pipeline.report as report
    from transforms.translation_store import partition_dir, partition_parts

    store = tmp_path / "store"
    rows = make_rows(30, langs=("de",), seed=7)
    write_like_translate(store, rows, part_rows=8)
    directory = partition_dir(str(store), FP, "de")
    expected = Counter("accepted" if r["status"] == "accepted" else f"rejected_{r['reason']}" for r in rows)
    assert report.partition_outcomes(directory) == dict(sorted(expected.items()))
    listings = [[*partition_parts(directory), f"{directory}/part-00gone.parquet"]]  # listed, then deleted
    monkeypatch.setattr(report, "partition_parts", lambda d: listings.pop() if listings else partition_parts(d))
    assert report.partition_outcomes(directory) == dict(sorted(expected.items())) and not listings


# -- compaction while a real build reads the store ---------------------------------------------------
def coco_subset(tmp: Path, images: int) -> tuple[dict, list[str]]:
    """A COCO source of the sample's first `images` images, and their captions."""
    data = coco_captions()
    kept = sorted(data["images"], key=lambda im: im["id"])[:images]
    ids = {im["id"] for im in kept}
    annotations = [a for a in data["annotations"] if a["image_id"] in ids]
    copy_images([im["file_name"] for im in kept], tmp / "images")
    (tmp / "captions.json").write_text(json.dumps({**data, "images": kept, "annotations": annotations}))
    source = {"name": "coco", "type": "coco", "captions": str(tmp / "captions.json"), "images": str(tmp / "images")}
    return source, [a["caption"] for a in annotations]


def store_rows_for(captions: list[str], fingerprint: str = "test-fp") -> list[dict]:
    from schemas.records import normalize_text, text_hash

    return [{"text_hash": text_hash(t), "lang": lang, "fingerprint": fingerprint, "source_text": t,
             "translation": fake_translation(t, lang), "status": "accepted", "reason": None,
             "raw_output": fake_translation(t, lang), "checks_version": CHECKS_VERSION}
            for t in sorted({normalize_text(c) for c in captions}) for lang in PAPER_PLAN["translation_languages"]]


def shards(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*/*.tar"))}


def reading_a_part(pid: int, store: Path) -> bool:
    """Whether process `pid` has one of the store's part files open."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith(str(store)) and target.endswith(".parquet"):
            return True
    return False


def test_compaction_while_a_build_reads_the_store_leaves_the_build_and_its_shards_unchanged(tmp_path):
    """A real `florenz-data build` process: stopped while it reads the store's parts, the store is
    compacted (every part it listed is deleted), then it goes on; and then the store is compacted over
    and over until it ends. It succeeds, with the shards of a build from an untouched copy."""
    source, captions = coco_subset(tmp_path / "coco", 40)
    rows = store_rows_for(captions)
    store = tmp_path / "store"
    write_like_translate(store, rows, part_rows=1)  # many parts: the build's reading takes a while
    reference = tmp_path / "reference"
    shutil.copytree(store, reference / "store")
    assert run_cli("build", write_config(reference, [source])).returncode == 0

    log = tmp_path / "build.log"
    with log.open("w") as stderr:
        build = subprocess.Popen([str(Path(sys.executable).with_name("florenz-data")), "build",
                                  str(write_config(tmp_path, [source]))], stdout=subprocess.DEVNULL, stderr=stderr)
    swaps, langs = [], PAPER_PLAN["translation_languages"]
    try:
        while not reading_a_part(build.pid, store):
            assert build.poll() is None, "the build ended before it was seen reading the store"
            time.sleep(0.001)
        os.kill(build.pid, signal.SIGSTOP)
        try:
            first = compact(store, rows_per_file=40)
        finally:
            os.kill(build.pid, signal.SIGCONT)
        assert first["parts_deleted"] == len(rows)
        while build.poll() is None:
            # Rejected duplicates (they lose to the accepted entries) make every partition worth rewriting.
            lang = langs[len(swaps) % len(langs)]
            write_like_translate(store, [{**r, "status": "rejected", "translation": None, "reason": "empty"}
                                         for r in rows if r["lang"] == lang][:3], part_rows=3)
            swaps.append(compact(store, rows_per_file=40).get("parts_deleted", 0))
        build.wait(timeout=600)
    finally:
        build.kill()
    output = log.read_text()
    assert build.returncode == 0, output[-5000:]
    assert "were compacted while this run read them" in output  # it found listed parts gone, and read on
    assert all(swaps), swaps  # every later compaction replaced parts too
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["translation"]["cache_hits_accepted"] == stats["translation"]["requested"] == len(rows)
    assert shards(tmp_path / "out") == shards(reference / "out") != {}


# -- the old flat layout ------------------------------------------------------------------------------
def write_flat_part(store: Path, rows: list[dict]) -> None:
    """A part as the store wrote them before partitions: STORE/part-<content hash>.parquet, any
    fingerprints and languages together."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=TRANSLATION_SCHEMA), buffer, compression="zstd")
    store.mkdir(parents=True, exist_ok=True)
    (store / f"part-{hashlib.sha256(buffer.getvalue()).hexdigest()[:24]}.parquet").write_bytes(buffer.getvalue())


def test_an_old_flat_store_is_refused_by_builds_and_migrated_by_compact_store(tmp_path):
    source, captions = coco_subset(tmp_path / "coco", 6)
    rows = store_rows_for(captions) + [r for r in make_rows(20, fingerprints=(FP,), seed=4)]
    rows += [{**r, "status": "rejected", "translation": None, "reason": "empty"} for r in rows[:7]]
    random.Random(5).shuffle(rows)
    store = tmp_path / "store"
    for start in range(0, len(rows), 37):
        write_flat_part(store, rows[start:start + 37])
    config = write_config(tmp_path, [source])

    refused = run_cli("build", config)
    assert refused.returncode == 2, refused.output[-3000:]
    assert "old flat layout" in refused.stderr and f"florenz-data compact-store {store}" in refused.stderr
    assert "Traceback" not in refused.output and not (tmp_path / "out" / "_SUCCESS").exists()

    migrated = run_cli("compact-store", store)
    assert migrated.returncode == 0, migrated.output[-3000:]
    counts = json.loads(migrated.stdout[migrated.stdout.index("{"):])
    assert counts["migrated"] == 1 and counts["rows_read"] == len(rows)
    assert not list(store.glob("part-*.parquet")) and not list(store.glob("_tmp/*"))
    assert not (store / "_lease.json").exists()
    assert sorted(map(row_key, read_store_rows(store))) == sorted(map(row_key, resolved_rows(rows)))

    built = run_cli("build", config)
    assert built.returncode == 0, built.output[-3000:]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["translation"]["cache_hits_accepted"] == stats["translation"]["requested"] > 0


# -- on an object store ---------------------------------------------------------------------------------
def test_compact_store_on_s3(tmp_path):
    from tests.object_store import download_prefix, moto_server, s3_client, s3_flags, upload_tree

    rows = make_rows(40, fingerprints=(ODD_FP,), langs=("de", "zh"), seed=6)
    write_like_translate(tmp_path / "local", rows, part_rows=8)
    with moto_server() as endpoint:
        client = s3_client(endpoint)
        client.create_bucket(Bucket="bucket")
        upload_tree(client, tmp_path / "local", "bucket", "store")
        done = run_cli("compact-store", "s3://bucket/store", "--rows-per-file", "30", *s3_flags(endpoint))
        assert done.returncode == 0, done.output[-3000:]
        objects = download_prefix(client, "bucket", "store")
    assert objects and all(name.startswith("fingerprint=") and "/part-compacted-" in name for name in objects)
    for name, data in objects.items():
        (tmp_path / "back" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "back" / name).write_bytes(data)
    assert sorted(map(row_key, read_store_rows(tmp_path / "back"))) == sorted(map(row_key, resolved_rows(rows)))
