"""What a run does to its output and store around the pipeline itself: hold the output's lease (one
run at a time per output; taking it is also the probe that the output is writable), probe that the
store is writable before the first translation request is paid for, and, for a command that writes
shards, clear the previous run's completion marker.

`translate` writes no shards, so it leaves a finished build in its output folder as it is (its
_SUCCESS, rejects and shards stay, and it still verifies): it writes only translation_stats.json
there."""
from __future__ import annotations

import contextlib
from typing import Iterator


from schemas.config import RunConfig
from schemas.errors import ConfigError, RunRefused
from transforms.atomic import delete_paths, join, write_bytes_atomic
from transforms.finalize import clear_run_markers
from transforms.lease import OutputLease

SHARD_COMMANDS = ("build", "run")  # the commands whose run replaces the output's shards


def probe_writable(path: str, field: str, run_id: str) -> None:
    """Create, rename and delete a small file under `path`, as every real write there will."""
    probe = join(path, f"_probe-{run_id}")
    try:
        write_bytes_atomic(probe, b"probe\n", path)
        delete_paths([probe])
    except Exception as error:
        raise ConfigError(field, f"cannot write to {path}: {error}") from error


@contextlib.contextmanager
def output_run(config: RunConfig, command: str, writes_store: bool) -> Iterator[str]:
    """Hold the output for one run; yields the run id the pipeline's writers use."""
    with OutputLease(config.output, command) as lease:
        if writes_store:
            probe_writable(config.store.path, "store.path", lease.run_id)
        if config.recaption is not None and command in ("recaption", "run"):
            probe_writable(config.recaption.store, "recaption.store", lease.run_id)
        if command in SHARD_COMMANDS:
            clear_run_markers(config.output)
        yield lease.run_id
        if lease.lost:
            raise RunRefused(f"{config.output}: run {lease.run_id} lost the output's lease during the run "
                             f"({lease.lost}); its output is not marked complete")
