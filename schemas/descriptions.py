"""The recaption stage's records and its store's rows: one request per distinct image (by content
hash), its outcome, and the description store's pyarrow schema (transforms/description_store.py)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import pyarrow as pa

from schemas.records import ImageRef

DESCRIPTION_LANG = "en"  # descriptions are English; also the one "language" batches are cut by


@dataclasses.dataclass(frozen=True)
class DescriptionRequest:
    """One distinct image to describe: its content hash, where its bytes are, and the source's own
    first caption (the short caption a prompt with {caption} is given)."""

    image_sha256: str
    image: ImageRef
    caption: Optional[str] = None

    @property
    def text_hash(self) -> str:
        """The key batches are cut and parts are read by (translate_batches.Keyed)."""
        return self.image_sha256

    @property
    def lang(self) -> str:
        return DESCRIPTION_LANG


@dataclasses.dataclass(frozen=True)
class DescriptionOutcome:
    request: DescriptionRequest
    status: str  # accepted | rejected | failed
    description: Optional[str] = None  # accepted: the prefix and the model's words, cut to whole sentences
    reason: Optional[str] = None  # rejected: the check's reason; failed: the request's error
    raw_output: Optional[str] = None  # the model's answer as sent back (failed: the cause, in one line)
    finish_reason: Optional[str] = None  # "length": the answer hit max_tokens
    requests_sent: int = 0
    strict_retry: bool = False  # descriptions are asked once (the dispatcher's counters read it)


# One row per (image, request fingerprint): the append-only description store,
# STORE/fingerprint=<fp>/part-<batch name>.parquet.
DESCRIPTION_SCHEMA = pa.schema([
    pa.field("image_sha256", pa.string(), nullable=False),
    pa.field("fingerprint", pa.string(), nullable=False),
    pa.field("description", pa.string()),
    pa.field("status", pa.string(), nullable=False),  # accepted | rejected
    pa.field("reason", pa.string()),  # why rejected; null when accepted
    pa.field("raw_output", pa.string()),  # the answer the verdict was judged from
    pa.field("finish_reason", pa.string()),
    pa.field("checks_version", pa.int32(), nullable=False),  # description_checks.CHECKS_VERSION
])
