"""Checks are versioned, and `florenz-data recheck` re-judges a store without sending anything.

A real `florenz-data translate` fills the store through a loopback OpenAI-compatible server that
counts what it is sent (tests/fault_server.py, answering with Multi30K references); then the checks
change: the next checks version, loaded at the start of every Python process of the commands that
follow (the CLI and its Beam workers) from a sitecustomize module, tightens the upper length bound
and loosens the lower one. Builds re-judge stale verdicts as they read them; `recheck` stores the
new verdicts, sending nothing; a second recheck changes nothing; a run after it uses them. A part
of the layout before raw answers were kept (no raw_output, no checks_version) is handled as
transforms/store_verdicts.py says."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.records import normalize_text, text_hash
from tests.helpers import REPO, caption_parquet_source, read_store_rows, store_part_files, write_config
from tests.hostile import run_cli
from tests.test_translate_faults import PLAN, make_corpus, requests_received, start_fault_server
from transforms.translation_checks import CHECKS_VERSION, check_translation

SHORT_ANSWER = "Hunde."  # a real German word, too short for the current checks' lower length bound
NEXT_BOUNDS = (0.05, 1.1)  # the next checks' length bounds for de and fr (target/source characters)
NEXT_CHECKS = f'''"""The next checks version, for tests/test_recheck.py: length bounds {NEXT_BOUNDS} for de and fr."""
import dataclasses

from transforms import translation_checks as checks

for code in ("de", "fr"):  # length bounds live in the per-language table (schemas/languages.py)
    checks.LANGUAGES[code] = dataclasses.replace(checks.LANGUAGES[code], length_ratio={NEXT_BOUNDS})
checks.CHECKS_VERSION = {CHECKS_VERSION + 1}
'''
# The layout before raw answers and check versions were kept.
OLD_SCHEMA = pa.schema([(name, pa.string()) for name in ("text_hash", "lang", "fingerprint", "source_text",
                                                           "translation", "status", "reason")])


def next_checks_env(tmp: Path) -> dict:
    """The environment under which every Python process runs the next checks version."""
    folder = tmp / "next_checks"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(NEXT_CHECKS)
    return {"PYTHONPATH": os.pathsep.join([str(folder), str(REPO), os.environ.get("PYTHONPATH", "")])}


def next_verdict(row: dict) -> tuple[str, str | None]:
    """What the next checks decide for a row the current checks judged, worked out from its length
    alone (the length bounds are all that change; they come after the empty, line, copy and script
    checks and before the language and repetition ones): (status, reason)."""
    text = row["translation"] if row["status"] == "accepted" else normalize_text(row["raw_output"])
    within = NEXT_BOUNDS[0] <= len(text) / len(row["source_text"]) <= NEXT_BOUNDS[1]
    if row["status"] == "accepted":
        return ("accepted", None) if within else ("rejected", "length_ratio")
    if row["reason"] not in ("length_ratio", "wrong_language", "repetition"):
        return row["status"], row["reason"]
    if not within:
        return "rejected", "length_ratio"
    if row["reason"] != "length_ratio":
        return row["status"], row["reason"]
    assert text == SHORT_ANSWER  # short enough for no language or repetition check: accepted
    return "accepted", None


def write_old_part(store: Path, fingerprint: str, rows: list[dict], name: str = "0000old") -> Path:
    """A part as the store wrote it before raw answers and check versions were kept."""
    from transforms.translation_store import partition_dir

    folder = Path(partition_dir(str(store), fingerprint, "de"))
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=OLD_SCHEMA), buffer)
    path = folder / f"part-{name}.parquet"
    path.write_bytes(buffer.getvalue())
    return path


def counts_of(done) -> dict:
    assert done.returncode == 0, done.output[-4000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


def store_state(store: Path) -> dict[str, bytes]:
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in store_part_files(store)}


def shard_bytes(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(out.glob("*/*.tar")))


def test_new_checks_rejudge_the_store_on_read_and_recheck_stores_them_sending_nothing(tmp_path):
    pairs, captions = make_corpus(tmp_path, 20)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    short = {r["en"] for r in rows[:40:5] if r["lang"] == "de"}  # 8 texts whose German answer is too short
    pairs.write_text("".join(json.dumps({**r, "reference": SHORT_ANSWER if r["en"] in short and r["lang"] == "de"
                                         else r["reference"]}, ensure_ascii=False) + "\n" for r in rows))
    legacy_image, captions = captions[-1], captions[:-1]  # its German translations: only in an old part
    proc, url = start_fault_server(pairs, tmp_path / "count")
    try:
        translator = {"model": "fault", "endpoints": [url], "batch_size": 16}
        config = write_config(tmp_path, [caption_parquet_source(tmp_path, captions)], PLAN, translator=translator)
        done = run_cli("translate", config)
        assert done.returncode == 0, done.output[-4000:]
        sent = requests_received(tmp_path / "count")
        store = tmp_path / "store"
        stored = read_store_rows(store)
        assert len(stored) == 2 * len({normalize_text(c) for image in captions for c in image})
        assert {r["checks_version"] for r in stored} == {CHECKS_VERSION}
        answered = {(normalize_text(r["en"]), r["lang"]): r["reference"]
                    for r in map(json.loads, pairs.read_text().splitlines())}
        # accepted and rejected alike keep what the server answered (the English itself where it knew no answer)
        assert all(r["raw_output"] == answered.get((r["source_text"], r["lang"]), r["source_text"]) for r in stored)
        assert {r["reason"] for r in stored if r["raw_output"] == SHORT_ANSWER} == {"length_ratio"}
        fingerprint = stored[0]["fingerprint"]

        # Two German entries of the old layout: an accepted one (judged again from its translation)
        # and a rejected one (nothing left to judge: stale, asked for again).
        reference = {r["en"]: r["reference"] for r in rows if r["lang"] == "de"}
        (kept, lost) = [normalize_text(c) for c in legacy_image]
        assert check_translation(kept, reference[kept], "de").text == reference[kept]  # accepted by these checks
        old_rows = [{"text_hash": text_hash(kept), "lang": "de", "fingerprint": fingerprint, "source_text": kept,
                     "translation": reference[kept], "status": "accepted", "reason": None},
                    {"text_hash": text_hash(lost), "lang": "de", "fingerprint": fingerprint, "source_text": lost,
                     "translation": None, "status": "rejected", "reason": "wrong_language"}]
        write_old_part(store, fingerprint, old_rows)
        assert len(read_store_rows(store)) == len(stored) + 2  # plain pyarrow.dataset still reads the store

        expected = {(r["text_hash"], r["lang"]): next_verdict(r) for r in [*stored, old_rows[0]]}
        before = {(r["text_hash"], r["lang"]): (r["status"], r["reason"]) for r in [*stored, old_rows[0]]}
        changed = {k: v for k, v in expected.items() if v != before[k]}
        to_rejected = sum(1 for status, _ in changed.values() if status == "rejected")
        assert to_rejected >= 3 and len(changed) - to_rejected == len(short)  # both directions happen

        # The next checks. A build re-judges as it reads: the new verdicts, the old rejection not used.
        env = next_checks_env(tmp_path)
        config = write_config(tmp_path, [caption_parquet_source(tmp_path, [*captions, legacy_image])], PLAN,
                              translator=translator)
        built = run_cli("build", config, "--allow-missing-translations", env=env)
        assert built.returncode == 0, built.output[-4000:]
        translation = json.loads((tmp_path / "out" / "stats.json").read_text())["translation"]
        accepted = sum(1 for status, _ in expected.values() if status == "accepted")
        assert translation["cache_hits_accepted"] == accepted
        assert translation["cache_hits_rejected"] == len(expected) - accepted
        assert translation["rejudged_on_read"] == len(expected) and translation["stale_verdict"] == 1
        assert translation["not_in_store"] == 2  # the French of the image only the old part has
        reported = run_cli("report", tmp_path / "out", env=env)  # the store's counts say what judged them
        assert reported.returncode == 0, reported.output[-4000:]
        assert (f"Judged by older checks than this code's (version {CHECKS_VERSION + 1}), as stored above: "
                f"de {sum(r['lang'] == 'de' for r in stored) + 2}, fr {sum(r['lang'] == 'fr' for r in stored)}.") \
            in reported.stdout

        # recheck stores the new verdicts, sending nothing.
        counts = counts_of(run_cli("recheck", store, env=env))
        assert counts["checks_version"] == CHECKS_VERSION + 1
        assert counts["rejudged"] == len(expected) and counts["not_rejudgeable"] == 1
        assert counts["unchanged"] == len(expected) - len(changed)
        assert counts.get("accepted_to_rejected_length_ratio", 0) == to_rejected
        assert counts.get("rejected_length_ratio_to_accepted", 0) == len(changed) - to_rejected
        after = {(r["text_hash"], r["lang"]): r for r in read_store_rows(store)}
        assert {k: (r["status"], r["reason"]) for k, r in after.items() if k in expected} == expected
        assert {r["checks_version"] for k, r in after.items() if k in expected} == {CHECKS_VERSION + 1}
        assert after[(text_hash(kept), "de")]["raw_output"] == reference[kept]
        assert after[(text_hash(lost), "de")] == {**old_rows[1], "raw_output": None, "checks_version": None}
        assert all(r["translation"] == SHORT_ANSWER for k, r in after.items() if k[0] in {text_hash(t) for t in short}
                   and k[1] == "de")

        # A second recheck changes nothing.
        state = store_state(store)
        again = counts_of(run_cli("recheck", store, env=env))
        assert "rejudged" not in again and again.get("files_written", 0) == again.get("parts_deleted", 0) == 0
        assert again["not_rejudgeable"] == 1 and store_state(store) == state
        assert requests_received(tmp_path / "count") == sent  # nothing was sent since the translate run

        # A run uses the stored verdicts as they are, and asks again only for the stale entry.
        ran = run_cli("run", config, env=env)
        assert ran.returncode == 0, ran.output[-4000:]
    finally:
        proc.kill()
    translation = json.loads((tmp_path / "out" / "stats.json").read_text())["translation"]
    assert "rejudged_on_read" not in translation and translation["stale_verdict"] == 1
    assert translation["cache_hits_accepted"] == accepted and translation["translated"] == 3  # stale + 2 French
    assert requests_received(tmp_path / "count") == sent + translation["sent"]
    stale, asked_again = sorted((r for r in read_store_rows(tmp_path / "store")
                                 if (r["text_hash"], r["lang"]) == (text_hash(lost), "de")),
                                key=lambda r: r["checks_version"] is not None)
    assert stale == after[(text_hash(lost), "de")]  # kept (append-only); the new verdict beats it on read
    assert (asked_again["raw_output"], asked_again["checks_version"]) == (reference[lost], CHECKS_VERSION + 1)
    shards = shard_bytes(tmp_path / "out")
    assert SHORT_ANSWER.encode() in shards
    assert (reference[lost].encode() in shards) == (asked_again["status"] == "accepted")
    rejected_now = [after[k]["raw_output"] for k, (status, _) in changed.items() if status == "rejected"]
    assert not any(text.encode() in shards for text in rejected_now)


def test_recheck_on_s3(tmp_path):
    """The same pipeline through Beam's S3 filesystem, against a real S3-compatible server: rows
    judged under older checks are judged again and written back; a second recheck changes nothing."""
    from tests.object_store import download_prefix, moto_server, s3_client, s3_flags, upload_tree
    from transforms.translation_store import write_store_part

    # (English, the stored answer, the verdict older checks gave it)
    judged = [("A brown dog is running across a green meadow near the river.",
               "Ein brauner Hund läuft über eine grüne Wiese am Fluss.", "rejected", "wrong_language"),
              ("Two children are playing football on a sunny beach.",
               "Two children are playing football on a sunny beach.", "accepted", None)]
    rows = [{"text_hash": text_hash(english), "lang": "de", "fingerprint": "fp", "source_text": english,
             "translation": answer if status == "accepted" else None, "status": status, "reason": reason,
             "raw_output": answer, "checks_version": CHECKS_VERSION - 1} for english, answer, status, reason in judged]
    write_store_part(str(tmp_path / "local"), "fp", "de", rows)
    with moto_server() as endpoint:
        client = s3_client(endpoint)
        client.create_bucket(Bucket="bucket")
        upload_tree(client, tmp_path / "local", "bucket", "store")
        counts = counts_of(run_cli("recheck", "s3://bucket/store", *s3_flags(endpoint)))
        objects = download_prefix(client, "bucket", "store")
        again = counts_of(run_cli("recheck", "s3://bucket/store", *s3_flags(endpoint)))
        assert download_prefix(client, "bucket", "store") == objects
    assert counts["rejudged"] == 2 and counts["accepted_to_rejected_copy_of_source"] == 1
    assert counts["rejected_wrong_language_to_accepted"] == 1 and "rejudged" not in again
    for name, data in objects.items():
        (tmp_path / "back" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "back" / name).write_bytes(data)
    back = sorted((r["status"], r["reason"], r["checks_version"]) for r in read_store_rows(tmp_path / "back"))
    assert back == [("accepted", None, CHECKS_VERSION), ("rejected", "copy_of_source", CHECKS_VERSION)]


def test_every_kind_of_duplicate_resolves_the_same_in_any_order_and_after_compaction_and_recheck(tmp_path):
    """Keys holding current, older-checks and old-layout entries together, accepted and rejected:
    a read resolves each as its entries judged one by one by the checks dictate (stale ones last),
    whatever order the parts are written in, and the same after compact-store and after recheck."""
    import random

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from schemas.config import StoreConfig
    from tests.helpers import multi30k_pairs
    from tests.test_store import compact
    from transforms.translation_store import ReadStoreEntries, StoreEntry, prefer_entry, write_store_part

    rng = random.Random(0)
    rows = []
    for english, german in multi30k_pairs("val", "de", 40):
        for _ in range(rng.randint(1, 4)):
            answer = rng.choice([german, english])  # a translation, or a copy of the English
            version = rng.choice([CHECKS_VERSION, CHECKS_VERSION - 1, None])  # None: the old layout
            result = check_translation(english, answer, "de")
            status = rng.choice(["accepted", "rejected"])  # what the checks of its version said
            rows.append({"text_hash": text_hash(english), "lang": "de", "fingerprint": "fp", "source_text": english,
                         "translation": answer if status == "accepted" else None, "status": status,
                         "reason": None if status == "accepted" else rng.choice(["empty", "wrong_script"]),
                         "raw_output": None if version is None else answer, "checks_version": version,
                         "now": result})

    def entry(row: dict) -> StoreEntry:
        """A row's entry under the current checks, from check_translation directly."""
        if row["checks_version"] == CHECKS_VERSION:
            return StoreEntry(row["status"], row["translation"], row["reason"])
        if row["checks_version"] is None and row["status"] == "rejected":
            return StoreEntry(row["status"], row["translation"], row["reason"], stale=True)
        now = row["now"]
        return StoreEntry("accepted" if now.text is not None else "rejected", now.text, now.reason)

    keys = sorted({r["text_hash"] for r in rows})
    expected = [((h, "de"), (e.status, e.translation, e.reason, e.stale))
                for h in keys for e in [prefer_entry(entry(r) for r in rows if r["text_hash"] == h)]]
    assert {e[1][3] for e in expected} == {False, True} and {e[1][0] for e in expected} == {"accepted", "rejected"}

    def read(store: Path) -> None:
        with TestPipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
            read = p | ReadStoreEntries(StoreConfig(str(store), "fp"), ["de"])
            assert_that(read | beam.MapTuple(lambda key, e: (key, (e.status, e.translation, e.reason, e.stale))),
                        equal_to(expected))

    stores = []
    for order in range(2):
        store = tmp_path / f"store{order}"
        shuffled = rng.sample(rows, len(rows))
        for start in range(0, len(shuffled), 7):
            part = [{k: v for k, v in r.items() if k != "now"} for r in shuffled[start:start + 7]]
            versioned = [r for r in part if r["checks_version"] is not None]
            if versioned:
                write_store_part(str(store), "fp", "de", versioned)
            old = [{k: r[k] for k in OLD_SCHEMA.names} for r in part if r["checks_version"] is None]
            if old:
                write_old_part(store, "fp", old, name=f"{start:04x}old")
        read(store)
        stores.append(store)
    compact(stores[0], rows_per_file=20)
    read(stores[0])
    assert counts_of(run_cli("recheck", stores[1]))["rejudged"] > 0
    read(stores[1])


def test_a_verdict_of_newer_checks_than_the_codes_is_refused_naming_its_part(tmp_path):
    from transforms.translation_store import write_store_part

    english = "A brown dog is running across a green meadow."
    german = "Ein brauner Hund läuft über eine grüne Wiese."
    path = write_store_part(str(tmp_path / "store"), "fp", "de", [{
        "text_hash": text_hash(english), "lang": "de", "fingerprint": "fp", "source_text": english,
        "translation": german, "status": "accepted", "reason": None, "raw_output": german,
        "checks_version": CHECKS_VERSION + 1}])
    done = run_cli("recheck", tmp_path / "store")
    assert done.returncode == 2 and "Traceback" not in done.output, done.output[-3000:]
    assert f"{path}: translation store row judged under checks version {CHECKS_VERSION + 1}, newer than this code's " \
           f"{CHECKS_VERSION}" in done.stderr
