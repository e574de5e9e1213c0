"""Each run's private folder inside its output: OUTPUT/_runs/<run id>/ holds the run's temporary
files (tmp/), its staged images (staging/, transforms/staging.py) and, while it finalizes, the earlier
shards it is about to remove (superseded.json), so two runs never share a temporary name, and a
finalize killed midway still knows what to remove.

Deleting works on object stores too, where a "folder" is a prefix that `exists()` calls absent:
every object under it is matched and deleted.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid

from apache_beam.io.filesystems import FileSystems

from schemas.layout import RUN_STAGING, RUN_TMP, RUNS_DIR, run_folder
from transforms.atomic import delete_paths, glob_escape, join


def new_run_id() -> str:
    """Sortable by start time, unique across hosts."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def run_dir(output: str, run_id: str) -> str:
    return join(output, run_folder(run_id))


def run_tmp(output: str, run_id: str) -> str:
    """Temporary names of this run's atomic writes."""
    return join(run_dir(output, run_id), RUN_TMP)


def run_staging(output: str, run_id: str) -> str:
    """This run's staged images: read by its shard writers, gone with the run folder after _SUCCESS."""
    return join(run_dir(output, run_id), RUN_STAGING)


def files_under(path: str) -> list[str]:
    """Every file below `path` (a folder, or an object-store prefix)."""
    pattern = glob_escape(path.rstrip("/")) + "/**"
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def delete_tree(path: str) -> None:
    """Delete a folder (or every object under a prefix); nothing to do when absent."""
    files = files_under(path)
    if files:
        delete_paths(files)
    if "://" not in path and os.path.isdir(path):
        shutil.rmtree(path)  # the empty folders local disks keep


def remove_run_dir(output: str, run_id: str) -> None:
    """Delete one run's folder, and _runs/ itself on a local disk once no other run's is left there
    (object stores have no empty folders)."""
    delete_tree(run_dir(output, run_id))
    if "://" not in output:
        with contextlib.suppress(OSError):  # absent, or another run's folder is in it
            os.rmdir(join(output, RUNS_DIR))
