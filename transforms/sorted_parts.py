"""Records written as sorted JSONL parts, FOLDER/part-NNNNN.jsonl, each by its own worker (the
rejects and the missing-translations report).

One file would be written by one worker holding every record: at CC12M scale that is tens to
hundreds of GB in one call. Instead a record's part is a hash bucket: sha256 of its sort key modulo
the bucket count, so the same records land in the same parts whatever the runner or the number of
workers, and no step holds more than one bucket. The bucket count follows the number of records (a
global count, a side input): ceil(records / records_per_part), so a part holds about
records_per_part records whatever the input's size — a fixed count would let every part, and the
grouping that builds it, grow with the input. Each part is sorted by the sort key (ties by the
line itself), so two runs write byte-identical parts. Only non-empty buckets are written (a grouping
has no empty groups, and S3 cannot hold a zero-length object). Each part is written to the run's
temporary folder and renamed, so a retried bundle writes the same bytes again. Each part yields a
small summary of what it holds for the caller to combine: the records are never collected in one
place.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Iterable, Iterator, Optional

import apache_beam as beam

from apache_beam.options.pipeline_options import PipelineOptions

from schemas.layout import MAX_PARTS, part_name
from transforms.atomic import atomic_create, join
from transforms.group_metrics import MeasuredGroupByKey
from transforms.run_folder import run_tmp



class PartsOptions(PipelineOptions):
    """`--records_per_part N`: records per part of the rejects and missing-translations folders
    (default: each kind's own, sized for parts of a few MB)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--records_per_part", type=int, default=None,
                            help="records per rejects/missing-translations part (default: per kind)")


@dataclasses.dataclass(frozen=True)
class PartFormat:
    """How one kind of record is spread over parts, ordered, written and summarized. The functions
    must be module-level (they travel to the workers pickled)."""

    records_per_part: int
    sort_key: Callable[[Any], tuple]  # JSON-serializable; also what the bucket is a hash of
    to_json: Callable[[Any], dict]
    summarize: Callable[[list], Any]  # one part's records, in order -> a small summary


def parts_for(records: int, records_per_part: int) -> int:
    """How many parts `records` records are spread over."""
    return min(MAX_PARTS, max(1, -(-records // records_per_part)))


def bucket_of(sort_key: tuple, buckets: int) -> int:
    """Stable across processes and runs (never Python's salted hash())."""
    digest = hashlib.sha256(json.dumps(sort_key, ensure_ascii=False).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % buckets


class _WritePart(beam.DoFn):
    def __init__(self, folder: str, output: str, run_id: str, fmt: PartFormat):
        self.folder, self.output, self.run_id, self.fmt = folder, output, run_id, fmt

    def process(self, item: tuple[int, Iterable[Any]], missing: int = 0) -> Iterator[Any]:
        if missing:  # the build stops: translations it needs are missing (transforms/missing.py)
            return
        bucket, records = item
        rows = sorted(((self.fmt.sort_key(r), _line(self.fmt.to_json(r)), r) for r in records),
                      key=lambda row: row[:2])
        with atomic_create(join(self.folder, part_name(bucket)), run_tmp(self.output, self.run_id)) as f:
            for _, line, _ in rows:
                f.write(line)
        yield self.fmt.summarize([r for _, _, r in rows])


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


class WriteSortedParts(beam.PTransform):
    """records -> FOLDER/part-NNNNN.jsonl (one per non-empty bucket); yields each part's summary.

    `gate`: {"missing": side input}, as every writing step of a build takes it (pipeline/build.py)."""

    def __init__(self, folder: str, output: str, run_id: str, fmt: PartFormat, gate: Optional[dict] = None):
        super().__init__()
        self.folder, self.output, self.run_id, self.fmt = folder, output, run_id, fmt
        self.gate = gate or {}

    def expand(self, records):
        fmt = self.fmt
        per_part = records.pipeline.options.view_as(PartsOptions).records_per_part or fmt.records_per_part
        if per_part < 1:
            raise ValueError(f"--records_per_part must be positive, not {per_part}")
        buckets = beam.pvalue.AsSingleton(records
                                          | "Count" >> beam.combiners.Count.Globally()
                                          | "Parts" >> beam.Map(parts_for, per_part))
        return (records
                | "Bucket" >> beam.Map(lambda r, n: (bucket_of(fmt.sort_key(r), n), r), buckets)
                | "GroupBuckets" >> MeasuredGroupByKey(name=f"parts:{self.folder.rstrip('/').rsplit('/', 1)[-1]}")
                | "WriteParts" >> beam.ParDo(_WritePart(self.folder, self.output, self.run_id, fmt), **self.gate))
