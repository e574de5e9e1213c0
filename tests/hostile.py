"""The hostile-input suite's harness: each case is a real `florenz-data` (or `florenz-train`) run in
its own process on a small real input, ending in one outcome class:

- clear_error:       non-zero exit, a one-line message naming the field or file at fault;
- counted_rejection: exit 0, the bad record in rejects/ with its reason, in = written + rejected;
- refused:           the command refuses to start (an output that overlaps an input, a held lease);
- handled:           the input is valid after all and is processed correctly (a path with '[').

Every case also asserts: no Python traceback reached the user, and (where a secret is involved) the
secret appears in no output file and no log line. `expect` records each case; conftest.py prints the
table of cases by outcome that README quotes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Optional

REPO = Path(__file__).resolve().parents[1]
OUTCOMES = ("clear_error", "counted_rejection", "refused", "handled")
# The findings, one label each (the rows of README's table).
FINDINGS = ("data loss", "leakage by content", "code execution", "secrets", "files outside the input",
            "one bad input aborts", "failures without their cause", "smaller")
RECORDED: list[dict] = []  # one row per case: finding, outcome, test


@dataclasses.dataclass
class CliResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _console_script(name: str) -> list[str]:
    script = Path(sys.executable).parent / name
    module = {"florenz-data": "pipeline.cli", "florenz-train": "model.train"}[name]
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def run_cli(*args: str, program: str = "florenz-data", env: Optional[dict] = None, timeout: float = 600,
            cwd: Optional[Path] = None) -> CliResult:
    """Run the installed console script as a user would (its own process, real argv)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [*_console_script(program), *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout,
                          env=full_env, cwd=str(cwd or REPO))
    return CliResult(command, done.returncode, done.stdout, done.stderr)


def expect(result: CliResult, outcome: str, finding: str, mentions: Iterable[str] = (),
           secrets: Iterable[str] = (), scan: Iterable[Path] = ()) -> None:
    """Assert the case ended in `outcome`, with no traceback and no secret leaked; record it."""
    assert outcome in OUTCOMES and finding in FINDINGS, (outcome, finding)
    shown = f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}"
    assert "Traceback (most recent call last)" not in result.output, f"raw traceback reached the user\n{shown}"
    if outcome in ("clear_error", "refused"):
        assert result.returncode != 0, f"expected a refusal\n{shown}"
    else:
        assert result.returncode == 0, f"expected success\n{shown}"
    for text in mentions:
        assert text in result.output, f"the message does not mention {text!r}\n{shown}"
    for secret in secrets:
        assert secret not in result.output, f"secret {secret!r} in the command's output or log"
        for root in scan:
            for path in ([root] if root.is_file() else root.rglob("*")):
                if path.is_file() and secret.encode() in path.read_bytes():
                    raise AssertionError(f"secret {secret!r} written into {path}")
    RECORDED.append({"finding": finding, "outcome": outcome,
                     "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]})


def read_stats(output: Path) -> dict:
    from schemas.layout import STATS

    return json.loads((output / STATS).read_text(encoding="utf-8"))


def rejects(output: Path) -> list[dict]:
    from pipeline.output_files import iter_rejects

    return list(iter_rejects(str(output)))


def assert_balanced(stats: dict) -> None:
    """in = written + rejected, overall and per source, for images and captions."""
    for level in ("images", "captions"):
        s = stats[level]
        assert s["read"] == s["written"] + s["rejected_total"], (level, s)
        for source, per in stats["sources"].items():
            p = per[level]
            assert p["read"] == p["written"] + sum(p["rejected"].values()), (source, level, p)
