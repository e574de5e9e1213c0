"""`florenz-data import-translations`: Multi30K's real human German and French translations, as a
Parquet (wide) and a JSONL (long) source, into the store under import-* fingerprints, through the
translator's checks; a second import writes nothing; a build with no translator builds shards from
them; bad input stops with one line naming the file, column or language."""
from __future__ import annotations

import gzip
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from schemas.records import normalize_text, text_hash
from tests.helpers import MULTI30K, PAPER_PLAN, caption_parquet_source, read_store_rows, store_part_files, write_config
from tests.hostile import run_cli
from transforms.translation_checks import CHECKS_VERSION, check_translation

PLAN = {**PAPER_PLAN, "languages": ["en", "de", "fr"], "caption_languages": ["en", "de"],
        "translation_languages": ["de", "fr"]}
N = 300  # real lines of Multi30K val imported


def multi30k(code: str) -> list[str]:
    path = MULTI30K / "raw" / f"val.{code}.gz"
    if not path.exists():
        pytest.skip(f"Multi30K not found at {MULTI30K}")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def source_rows() -> list[dict]:
    """N real (en, de, fr) rows, then the bad and repeated ones a real source holds: a German cell
    that is the English copied, an empty French cell, a French sentence as German, a null German
    cell, a null English, the same English again with an identical and with another German."""
    en, de, fr = multi30k("en"), multi30k("de"), multi30k("fr")
    rows = [{"en": e, "de": d, "fr": f} for e, d, f in zip(en[:N], de[:N], fr[:N])]
    french = next(f for e, f in zip(en[N:], fr[N:]) if check_translation(e, f, "de").reason == "wrong_language")
    extra = [(en[N + 40], en[N + 40], fr[N + 40]),  # copy_of_source (de)
             (en[N + 41], de[N + 41], ""),  # empty (fr)
             (en[N + 42], french, fr[N + 42]),  # wrong_language (de)
             (en[N + 43], None, fr[N + 43]),  # skipped: no German
             (None, de[N + 44], fr[N + 44]),  # skipped: no English (two cells)
             (f"  {en[0]} ", de[0], fr[0]),  # the same text (normalized) and translations again
             (en[1], de[2], fr[1])]  # the same text with another German: a conflict
    return rows + [{"en": e, "de": d, "fr": f} for e, d, f in extra]


def verdict(en: str, cell: str, lang: str) -> tuple[str, str | None, str | None]:
    result = check_translation(normalize_text(en), cell, lang)
    return ("accepted", result.text, None) if result.text is not None else ("rejected", None, result.reason)


def expected_entries(rows: list[dict]) -> tuple[dict[tuple[str, str], dict], int, int]:
    """(text_hash, lang) -> the row the store must hold: each cell's verdict under the checks; of a
    key's several cells, accepted before rejected, then the smaller translation. Also the cells that
    repeat a key (duplicates) and the keys whose cells differ (conflicting)."""
    entries: dict[tuple[str, str], dict] = {}
    cells: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        for lang in ("de", "fr"):
            if row["en"] is None or row[lang] is None:
                continue
            text = normalize_text(row["en"])
            status, translation, reason = verdict(text, row[lang], lang)
            entry = {"source_text": text, "status": status, "translation": translation, "reason": reason,
                     "raw_output": row[lang], "checks_version": CHECKS_VERSION}
            key = (text_hash(text), lang)
            cells.setdefault(key, []).append(row[lang])
            order = lambda e: (e["status"] != "accepted", e["translation"] or "", e["reason"] or "", e["raw_output"])
            if key not in entries or order(entry) < order(entries[key]):
                entries[key] = entry
    duplicates = sum(len(c) - 1 for c in cells.values())
    return entries, duplicates, sum(len(set(c)) > 1 for c in cells.values())


def stored(store: Path, fingerprint: str) -> dict[tuple[str, str], dict]:
    rows = [r for r in read_store_rows(store) if r["fingerprint"] == fingerprint]
    by_key = {(r["text_hash"], r["lang"]): {k: r[k] for k in ("source_text", "status", "translation", "reason",
                                                               "raw_output", "checks_version")} for r in rows}
    assert len(by_key) == len(rows), "one row per (text, language)"
    return by_key


def imported(*args: str) -> dict:
    done = run_cli("import-translations", *args)
    assert done.returncode == 0, done.output[-4000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


def strings_in(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


def shard_strings(out: Path) -> set[str]:
    """Every string of every JSON member of the output's shards (whatever the annotation layout)."""
    found: set[str] = set()
    for path in sorted(out.glob("*/*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read() if member.isfile() else b""
                try:
                    found.update(strings_in(json.loads(data.decode("utf-8"))))
                except (UnicodeDecodeError, ValueError):
                    pass
    return found


def test_import_checks_stores_once_and_a_build_without_translator_uses_it(tmp_path):
    rows = source_rows()
    parquet = tmp_path / "m30k-val.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=64)
    store = tmp_path / "store"
    fingerprint = "import-multi30k-human"

    first = imported(str(parquet), "--store", str(store), "--languages", "de,fr", "--fingerprint", fingerprint,
                     "--rows-per-part", "128")
    assert first["fingerprint"] == fingerprint
    counts = first["counts"]
    expected, duplicates, conflicting = expected_entries(rows)
    assert duplicates >= 4 and conflicting >= 1  # the repeated rows (en[0] in de and fr, en[1]) at least
    assert stored(store, fingerprint) == expected  # read back by plain pyarrow.dataset, hive partitioning
    rejected = {(r["reason"], lang) for (_, lang), r in expected.items() if r["status"] == "rejected"}
    assert {("copy_of_source", "de"), ("empty", "fr"), ("wrong_language", "de")} <= rejected
    by_reason = {}
    for entry in expected.values():
        name = "accepted" if entry["status"] == "accepted" else f"rejected_{entry['reason']}"
        by_reason[name] = by_reason.get(name, 0) + 1
    assert {k: v for k, v in counts.items() if k == "accepted" or k.startswith("rejected_")} == by_reason
    assert counts["accepted"] >= 2 * N - 10  # human references pass the checks
    assert counts["rows_read"] == len(rows) and counts["translations_read"] == 2 * len(rows)
    assert counts["skipped_missing_translation"] == 1 and counts["skipped_missing_text"] == 2
    assert counts["duplicates"] == duplicates and counts["conflicting_texts"] == conflicting
    assert counts["translations_read"] == (sum(by_reason.values()) + counts["duplicates"]
                                           + counts["skipped_missing_translation"] + counts["skipped_missing_text"])
    parts = {p: p.read_bytes() for p in store_part_files(store)}
    assert counts["parts_written"] == len(parts) >= 4 and "already_stored" not in counts

    # Imported again, split over two worker processes, and again after compact-store merged the
    # parts: every verdict is already stored, nothing is written.
    for step in ("again", "after compact-store"):
        if step != "again":
            compacted = run_cli("compact-store", store)
            assert compacted.returncode == 0, compacted.output[-3000:]
            parts = {p: p.read_bytes() for p in store_part_files(store)}
            assert all("part-compacted-" in p.name for p in parts)
        again = imported(str(parquet), "--store", str(store), "--languages", "de,fr", "--fingerprint", fingerprint,
                         "--rows-per-part", "128", "--direct_num_workers", "2",
                         "--direct_running_mode", "multi_processing")["counts"]
        assert {p: p.read_bytes() for p in store_part_files(store)} == parts, step
        assert "parts_written" not in again and again["already_stored"] == len(expected), step
        assert {k: v for k, v in again.items() if k != "already_stored"} == \
            {k: v for k, v in counts.items() if k != "parts_written"}, step
    assert stored(store, fingerprint) == expected

    # The same translations as a long-format, gzipped JSONL, fingerprint derived from the file: same entries.
    jsonl = tmp_path / "m30k-val-long.jsonl.gz"
    long_rows = [{"text": r["en"], "lang": lang, "translation": r[lang]} for r in rows for lang in ("de", "fr")]
    czech = "Muž v modré košili stojí na žebříku."
    long_rows.insert(3, {"text": rows[3]["en"], "lang": "cs", "translation": czech})
    jsonl.write_bytes(gzip.compress("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in long_rows).encode()))
    long = imported(str(jsonl), "--store", str(store), "--languages", "de,fr", "--text-column", "text",
                    "--lang-column", "lang")
    derived = long["fingerprint"]
    assert derived.startswith("import-m30k-val-long-") and derived != fingerprint
    assert stored(store, derived) == expected
    assert long["counts"]["skipped_other_language"] == 1

    # A build whose store names the imported fingerprint, and no translator: shards hold the translations.
    texts = [normalize_text(r["en"]) for r in rows[:N] if len(normalize_text(r["en"])) >= 30
             and all(expected[(text_hash(normalize_text(r["en"])), l)]["status"] == "accepted" for l in ("de", "fr"))]
    captions = [texts[2 * i:2 * i + 2] for i in range(12)]
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    config = write_config(build_dir, [caption_parquet_source(build_dir, captions)], PLAN)
    raw = yaml.safe_load(config.read_text())
    raw["store"] = {"path": str(store), "fingerprint": fingerprint}
    assert "translator" not in raw
    config.write_text(yaml.safe_dump(raw))
    built = run_cli("build", config)
    assert built.returncode == 0, built.output[-4000:]
    in_shards = shard_strings(build_dir / "out")
    wanted = {expected[(text_hash(t), lang)]["translation"]
              for image in captions for t in image for lang in ("de", "fr")}
    assert [len(image) for image in captions] == [2] * 12 and len(wanted) > 40  # a few texts share a translation
    assert wanted <= in_shards, sorted(wanted - in_shards)[:3]


def test_bad_input_stops_with_one_line_naming_it(tmp_path):
    en, de = multi30k("en")[:20], multi30k("de")[:20]
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"en": en, "de": de}), good)
    store = tmp_path / "store"

    def refused(*args: str, mentions: tuple[str, ...]) -> None:
        done = run_cli("import-translations", *args, "--store", str(store))
        assert done.returncode != 0, done.output[-3000:]
        assert "Traceback" not in done.output, done.output[-3000:]
        line = done.stderr.strip().splitlines()[-1]
        assert all(m in line for m in mentions), (mentions, done.stderr[-3000:])

    refused(str(good), "--languages", "de,fr", mentions=("--column fr", "'fr'", str(good)))  # no fr column
    refused(str(good), "--languages", "de", "--column", "de=german", mentions=("'german'", str(good)))
    refused(str(good), "--languages", "de,xx", mentions=("--languages", "'xx'"))
    refused(str(good), "--languages", "de", "--fingerprint", "v1-0123456789abcdef", mentions=("--fingerprint",))
    not_parquet = tmp_path / "captions.parquet"
    not_parquet.write_text("en,de\nA dog runs.,Ein Hund rennt.\n")
    refused(str(not_parquet), "--languages", "de", mentions=(str(not_parquet), "not a readable Parquet file"))
    no_column = tmp_path / "rows.jsonl"
    no_column.write_text(json.dumps({"english": en[0], "de": de[0]}) + "\n")
    refused(str(no_column), "--languages", "de", mentions=(str(no_column), "--text-column", "'en'"))
    assert not store_part_files(store)
