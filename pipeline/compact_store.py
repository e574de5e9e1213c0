"""florenz-data compact-store STORE [--fingerprint FP] [--languages de,fr] [--rows-per-file N]:
merge a translation store's small parts into few large files per (fingerprint, lang), and move a
store of the old flat layout into partitions (transforms/store_compaction.py).

florenz-data recheck STORE [same options]: the same pipeline, rewriting instead the partitions that
hold verdicts of older checks, judged again under the current ones (transforms/store_verdicts.py);
no request is sent.

Each holds the store's lease (STORE/_lease.json) for the run, so one compaction runs at a time; translate
runs and builds go on meanwhile. Which partitions: those named (--fingerprint and --languages: nothing
is listed while the graph is built), else those found by one listing of the store's (or the
fingerprint's) files here, on the launcher: at 1.17 M uncompacted parts that is ~1.2 k list requests,
once; compacted, a few hundred names.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence
from urllib.parse import quote, unquote

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.atomic import join
from transforms.counting import counter_totals
from transforms.lease import OutputLease
from transforms.run_folder import files_under
from transforms.store_compaction import METRICS, ROWS_PER_FILE, CompactStore
from transforms.store_verdicts import checks_version
from transforms.translation_store import flat_parts

_PARTITION = re.compile(r"/fingerprint=(?P<fingerprint>[^/]+)/lang=(?P<lang>[^/]+)/part-[^/]+\.parquet$")


def store_partitions(store: str, fingerprint: Optional[str] = None) -> list[tuple[str, str]]:
    """(fingerprint, lang) of every partition holding a part, under the store or one fingerprint."""
    root = store if fingerprint is None else join(store, f"fingerprint={quote(fingerprint, safe='')}")
    found = {(unquote(m["fingerprint"]), unquote(m["lang"]))
             for m in map(_PARTITION.search, files_under(root)) if m}
    return sorted(found)


def compact_store(store: str, beam_args: Sequence[str], fingerprint: Optional[str] = None,
                  languages: Sequence[str] = (), rows_per_file: int = ROWS_PER_FILE,
                  recheck: bool = False) -> dict[str, int]:
    """Run the compaction (or, `recheck`, the re-judging) under the store's lease; returns its counts
    (parts_read, rows_read, files_written, rows_written, parts_deleted; migrated: 1 when the old flat
    layout was moved; rejudged, unchanged, <before>_to_<after> per change such as
    accepted_to_rejected_length_ratio, not_rejudgeable; checks_version, when rechecking)."""
    with OutputLease(store, "recheck" if recheck else "compact-store") as lease:
        if fingerprint is not None and languages:
            partitions = [(fingerprint, lang) for lang in sorted(set(languages))]
        else:
            partitions = [p for p in store_partitions(store, fingerprint) if not languages or p[1] in languages]
        migrate = bool(flat_parts(store, limit=1))
        p = beam.Pipeline(options=PipelineOptions(list(beam_args)))
        _ = p | "CompactStore" >> CompactStore(store, partitions, migrate, lease.run_id, rows_per_file, recheck)
        result = p.run()
        result.wait_until_finish()
    counts = {"partitions": len(partitions), "migrated": int(migrate)}
    if recheck:
        counts["checks_version"] = checks_version()
    counts.update(counter_totals(result, METRICS))
    return dict(sorted(counts.items()))
