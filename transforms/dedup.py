"""One image per sample key: the same image listed twice in a source must not become two samples.

Duplicates meet where a sample's data is first grouped by key (the coverage step's bucket), so
finding them costs no shuffle of its own.
"""
from __future__ import annotations

from typing import Iterable

from schemas.records import Rejection, ValidImage


def keep_first(key: str, images: Iterable[ValidImage]) -> tuple[ValidImage, list[Rejection]]:
    """The smallest (source_id, sha256), whatever the arrival order, and a rejection for each other."""
    ordered = sorted(images, key=lambda im: (im.source_id, im.sha256))
    rejections = [Rejection(dup.source, key, "image", "duplicate_key", f"source_id {dup.source_id}", len(dup.captions))
                  for dup in ordered[1:]]
    return ordered[0], rejections
