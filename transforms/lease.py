"""One run at a time per output folder: a lease file, OUTPUT/_lease.json, naming the run that holds it.

It works through Beam's FileSystems, so on local disk and on object stores alike:
- acquire: on local disk an atomic create-if-absent (a hard link of a complete file); object stores
  get no conditional write through FileSystems, so there the run writes its lease, waits a settle
  time and reads it back: of racing writers the last one reads its own id and every earlier one
  reads another's and refuses. Taking over a stale lease goes the same way, on every filesystem.
- stale leases are detected: a holder on this host whose process is gone, or a lease its holder has
  not renewed for `ttl_s` (a live holder renews it every `renew_s` from a background thread);
- fencing: the finalize step checks that the lease still names its run before it writes _SUCCESS
  (`check_lease`), so a run that lost its lease can never mark an output complete.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from schemas.errors import ConfigError, RunRefused
from schemas.layout import LEASE
from transforms.atomic import delete_paths, ensure_dir, join, write_bytes_atomic
from transforms.run_folder import new_run_id

TTL_S = 600.0
RENEW_S = 30.0
SETTLE_S = 2.0
log = logging.getLogger(__name__)


def read_lease(output: str) -> Optional[dict]:
    """The lease's content, or None when there is none (or it is not readable JSON)."""
    path = join(output, LEASE)
    if not FileSystems.exists(path):
        return None
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            data = json.loads(f.read().decode("utf-8"))
    except Exception:  # deleted meanwhile, or half-visible on a store: no usable lease
        return None
    return data if isinstance(data, dict) else None


def _age_s(output: str, lease: dict) -> float:
    """Seconds since the lease was last renewed, by its own clock or the filesystem's, the younger."""
    renewed = float(lease.get("renewed", 0))
    try:
        (match,) = FileSystems.match([join(output, LEASE)])[0].metadata_list
        renewed = max(renewed, match.last_updated_in_seconds)
    except Exception:  # some filesystems give no mtime: the lease's own clock decides
        pass
    return time.time() - renewed


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def stale_reason(output: str, lease: dict, ttl_s: float = TTL_S) -> Optional[str]:
    """Why `lease` may be taken over, or None while its holder may still be alive."""
    if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int) \
            and _process_gone(lease["pid"]):
        return f"its process {lease['pid']} on this host is gone"
    age = _age_s(output, lease)
    return f"not renewed for {age:.0f} s (ttl {ttl_s:.0f} s)" if age > ttl_s else None


def _describe(output: str, lease: dict) -> str:
    return (f"{output} is in use by run {lease.get('run_id')} ({lease.get('command')}, host "
            f"{lease.get('host')}, pid {lease.get('pid')}, renewed {_age_s(output, lease):.0f} s ago); wait "
            f"for it to finish, or, if that run is dead on another machine, delete {join(output, LEASE)}")


def check_lease(output: str, run_id: str) -> None:
    """Fencing, before a run marks its output complete: the lease must still be this run's."""
    lease = read_lease(output)
    if lease is None or lease.get("run_id") != run_id:
        holder = "no run" if lease is None else f"run {lease.get('run_id')}"
        raise RunRefused(f"{output}: run {run_id} no longer holds the output's lease ({holder} does); "
                         "not marking the output complete")


class OutputLease:
    """Context manager: hold `output`'s lease for one run (`run_id`), renew it, release it."""

    def __init__(self, output: str, command: str, ttl_s: float = TTL_S, renew_s: float = RENEW_S,
                 settle_s: float = SETTLE_S):
        self.output, self.command = output, command
        self.ttl_s, self.renew_s, self.settle_s = ttl_s, renew_s, settle_s
        self.run_id = new_run_id()
        self.lost: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def path(self) -> str:
        return join(self.output, LEASE)

    def _content(self) -> bytes:
        return json.dumps({"run_id": self.run_id, "command": self.command, "host": socket.gethostname(),
                           "pid": os.getpid(), "renewed": time.time()}, indent=2).encode("utf-8")

    def _write(self) -> None:
        write_bytes_atomic(self.path, self._content(), self.output)  # a temporary name beside it, renamed

    def _create_local(self) -> bool:
        """Atomic create-if-absent: link a complete file to the lease name (fails if it exists)."""
        tmp = f"{self.path}.{self.run_id}"
        with open(tmp, "wb") as f:
            f.write(self._content())
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def _write_and_confirm(self) -> None:
        self._write()
        time.sleep(self.settle_s)
        current = read_lease(self.output)
        if current is None or current.get("run_id") != self.run_id:
            raise RunRefused(_describe(self.output, current or {}))

    def acquire(self) -> "OutputLease":
        try:
            ensure_dir(self.output)
            current = read_lease(self.output)
            if current is not None:
                reason = stale_reason(self.output, current, self.ttl_s)
                if reason is None:
                    raise RunRefused(_describe(self.output, current))
                log.warning("taking over the lease of run %s on %s: %s", current.get("run_id"), self.output, reason)
                self._write_and_confirm()
            elif "://" not in self.output:
                if not self._create_local():
                    raise RunRefused(_describe(self.output, read_lease(self.output) or {}))
            else:
                self._write_and_confirm()
        except RunRefused:
            raise
        except Exception as error:  # the lease is the output's first write: it probes the output too
            raise ConfigError("output", f"cannot write to {self.output}: {error}") from error
        log.info("run %s holds %s", self.run_id, self.path)
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True)
        self._thread.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                current = read_lease(self.output)
                if current is None or current.get("run_id") != self.run_id:
                    self.lost = f"the lease now names {None if current is None else current.get('run_id')}"
                    log.error("run %s lost the lease on %s: %s", self.run_id, self.output, self.lost)
                    return
                self._write()
            except Exception as error:  # a failed renewal is retried; the ttl is many renewals long
                log.warning("could not renew the lease on %s: %s", self.output, error)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = read_lease(self.output)
        if current is not None and current.get("run_id") == self.run_id:
            delete_paths([self.path])

    def __enter__(self) -> "OutputLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
