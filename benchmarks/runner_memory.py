"""Benchmark: what the local runner itself holds per record that crosses a grouping.

The build's peak memory grows with its record count on the DirectRunner. This isolates the cause
from the project's code: the same generated records (N of them, B bytes each, produced lazily by a
generator, so the input streams) go through Beam's DirectRunner either straight to a count (the
baseline: no grouping) or through one GroupByKey (keyed by shard, 1000 records per key, as the
shard writer's grouping is) and then to the count. Each measurement is a fresh process whose RSS is
sampled every 0.1 s (build_throughput.timed).

    .venv/bin/python benchmarks/runner_memory.py [--sizes 10000,100000] [--value-bytes 64,1024]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_throughput import Measured, timed  # noqa: E402

PIPELINE = r'''
import sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
n, size, grouped = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "grouped"

def records(_):
    for i in range(n):
        yield i // 1000, i.to_bytes(8, "big") + b"x" * (size - 8)

with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
    pairs = p | beam.Create([None]) | beam.FlatMap(records)
    if grouped:
        pairs = pairs | beam.GroupByKey() | beam.FlatMap(lambda kv: kv[1])
    counted = pairs | beam.combiners.Count.Globally()
    assert_that(counted, equal_to([n]))
'''

MODES = ("no grouping", "one GroupByKey")


def measure(n: int, size: int, mode: str) -> Measured:
    return timed([sys.executable, "-c", PIPELINE, str(n), str(size), "grouped" if mode == MODES[1] else "flat"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--value-bytes", default="64,1024")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = {(n, b, mode): measure(n, b, mode)
            for b in (int(v) for v in args.value_bytes.split(",")) for n in sizes for mode in MODES}
    print("DirectRunner (in process), peak RSS of a fresh process sampled every 0.1 s")
    print("| value bytes | records | pipeline | seconds | peak RSS MiB | vs no grouping | held per record |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for (n, b, mode), m in rows.items():
        base = rows[(n, b, MODES[0])].peak_rss
        per_record = (m.peak_rss - base) * 2**20 / n
        print(f"| {b:,} | {n:,} | {mode} | {m.seconds:.1f} | {m.peak_rss:.0f} | {m.peak_rss / base:.2f}x | "
              f"{per_record:,.0f} B |")


if __name__ == "__main__":
    main()
