"""Stored verdicts under the current checks: every store row says which checks version judged it
(`checks_version`, transforms/translation_checks.CHECKS_VERSION) and keeps the text it was judged
from (`raw_output`), so a verdict from older checks is judged again, never used as it is.

Why re-judging is sound and cheap: the checks are pure functions of (source text, answer, language),
so the current checks applied to the stored answer give exactly the verdict a translate run would
give that answer today, with no request sent. Which text is judged:
- `raw_output`, the server's answer to the request whose verdict is stored (the strict retry's,
  when there was one);
- for an accepted row stored before raw answers were kept, its translation: the cleaned answer, the
  very text the checks looked at after cleaning and that shards receive. It becomes the row's
  `raw_output` when the new verdict is stored (so a rejection keeps it, and it can be judged again);
- a rejected row stored before raw answers were kept holds no text at all: it cannot be judged
  again. Its verdict is STALE: readers treat the key as not stored (translate sends it again,
  a build without a translator lists it as missing, reason `stale_verdict`), never as rejected.

Rows judged under a newer checks version than this code's are refused (an older release must not
overrule newer checks). Nothing here does I/O; the checks module is imported on first use (a build
whose store is current never loads langdetect).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from schemas.arrow import STATUS_ACCEPTED, STATUS_REJECTED
from schemas.errors import InputError

CURRENT = "current"  # judged under the current checks: used as stored
REJUDGED = "rejudged"  # judged under older checks, judged again now
STALE = "stale"  # judged under older checks, nothing left to judge again: not used


def checks_version() -> int:
    """The current checks' version (read at call time, so a bumped constant is what counts)."""
    from transforms import translation_checks

    return translation_checks.CHECKS_VERSION


@dataclasses.dataclass(frozen=True)
class Verdict:
    status: str
    translation: Optional[str]
    reason: Optional[str]
    raw_output: Optional[str]
    checks_version: Optional[int]
    kind: str  # CURRENT, REJUDGED or STALE


def current_verdict(where: str, lang: str, source_text: str, status: str, translation: Optional[str],
                    reason: Optional[str], raw_output: Optional[str], version: Optional[int]) -> Verdict:
    """The verdict of one stored row under the current checks; `where` names the row's file in errors."""
    current = checks_version()
    if version is not None and version > current:
        raise InputError(where, f"translation store row judged under checks version {version}, newer than this "
                                f"code's {current}: run a florenz-data release with checks version >= {version}")
    if version == current:
        return Verdict(status, translation, reason, raw_output, version, CURRENT)
    judged = raw_output if raw_output is not None else translation if status == STATUS_ACCEPTED else None
    if judged is None:
        return Verdict(status, translation, reason, raw_output, version, STALE)
    from transforms import translation_checks

    result = translation_checks.check_translation(source_text, judged, lang)
    if result.text is not None:
        return Verdict(STATUS_ACCEPTED, result.text, None, judged, current, REJUDGED)
    return Verdict(STATUS_REJECTED, None, result.reason, judged, current, REJUDGED)


def outcome_name(status: str, reason: Optional[str]) -> str:
    """accepted, or rejected_<reason>: how counts name a verdict."""
    return STATUS_ACCEPTED if status == STATUS_ACCEPTED else f"{STATUS_REJECTED}_{reason}"


def change_name(before: tuple[str, Optional[str]], after: Verdict) -> str:
    """A re-judged row's change, as recheck counts it: unchanged, or <before>_to_<after>."""
    old, new = outcome_name(*before), outcome_name(after.status, after.reason)
    return "unchanged" if old == new else f"{old}_to_{new}"
