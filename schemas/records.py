"""Record types that flow between the pipeline's transforms.

Image bytes are *not* carried through shuffles: records hold an `ImageRef` (a byte range of a file:
a plain tar's member, a whole image file, or validation's staged copy of an image that no byte range
of its source holds) and the shard writer reads the bytes again. That keeps every GroupByKey small,
so memory does not grow with image volume.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from typing import Optional, Union

TASK_CAPTION = "caption"
TASK_TRANSLATION = "translation"
TASKS = (TASK_CAPTION, TASK_TRANSLATION)

SPLIT_TRAIN = "train"
SPLIT_EVAL = "eval"
SPLITS = (SPLIT_TRAIN, SPLIT_EVAL)


@dataclasses.dataclass(frozen=True, slots=True)
class ImageRef:
    """Where an image's bytes are: [offset, offset + length) of the file `uri` (length -1: to its
    end), read again with one exact ranged read.

    An image that no byte range of its source file holds (a Parquet cell, a member of a compressed
    tar) leaves its source without a `uri`, named only by `origin`; validation stages its bytes in
    the run's folder and points `uri`, `offset` and `length` at the staged copy
    (transforms/staging.py). `origin` stays with it: messages name the image by it, because a staging
    file's name and offsets differ from run to run and must not reach the output."""

    uri: str = ""
    offset: int = 0
    length: int = -1  # -1: to the end of the file
    origin: str = ""  # the image as its source holds it ("rows.parquet: row group 0, row 3, column jpg")

    @property
    def addressable(self) -> bool:
        """Whether a byte range of a file holds the image (false: only `origin` names it, not staged yet)."""
        return bool(self.uri)

    @property
    def name(self) -> str:
        """The image as messages name it, the same in every run: its origin, else its file."""
        return self.origin or self.uri


@dataclasses.dataclass(frozen=True, slots=True)
class SourceRecord:
    """One image and its raw English captions, as a source read them (nothing checked yet)."""

    source: str
    source_id: str
    key: str
    image: Optional[ImageRef]
    captions: tuple[Union[str, bytes], ...]
    # The image's bytes when the source already read them (a tar member, a Parquet cell): validation,
    # fused right after the source, checks these instead of reading the image a second time (and
    # stages them when `image` is not addressable). They end there: a ValidImage holds only a reference.
    data: Optional[bytes] = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class ValidImage:
    """An image that decoded and passed the size rules, with its cleaned, accepted captions."""

    source: str
    source_id: str
    key: str
    image: ImageRef  # addressable in a build (staged if need be); `translate` writes no shards and stages nothing
    image_format: str  # WebDataset extension: jpg, png, webp
    width: int
    height: int
    sha256: str
    captions: tuple[str, ...]
    # Its accepted VLM description (the description store's, normalized), where the build uses
    # descriptions (transforms/image_descriptions.py); None where it has none or the build uses none.
    description: Optional[str] = None


STATUS_FAILED = "failed"  # a translation that got no decided outcome: never stored, sent again later


@dataclasses.dataclass(frozen=True, slots=True)
class TranslationRequest:
    """One English text to translate into one language (a translator-stage record), with the context
    its caller gives it (a description of the image, another caption of it), if any: sent along where
    the translator sends contexts (schemas/prompts.py). `text_hash` is its store key, `request_key`."""

    text_hash: str
    lang: str
    text: str
    context: Optional[str] = None


@dataclasses.dataclass(frozen=True, slots=True)
class TranslationOutcome:
    request: TranslationRequest
    status: str  # accepted | rejected | failed
    translation: Optional[str] = None
    reason: Optional[str] = None
    raw_output: Optional[str] = None  # the answer the verdict judged (stored), or the cause (a failure)
    strict_retry: bool = False  # whether the stricter prompt was needed
    requests_sent: int = 0  # HTTP requests this translation took, retries included
    context_fallback: bool = False  # whether the answer lost its context part and was asked again without


@dataclasses.dataclass(frozen=True, slots=True)
class Rejection:
    """Why one input (an image, or a single caption of one) did not reach a shard."""

    source: str
    key: str
    level: str  # "image" or "caption"
    reason: str
    detail: str = ""
    captions: int = 0  # how many captions this rejection removes from the accounting

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_KEY_CHARS = 80  # tar member names past ~100 characters fail in the default tar format


def sample_key(source: str, source_id: str) -> str:
    """A WebDataset-safe sample key: no dots (the reader splits at the first one), short enough.

    Where the id had to be changed to be safe, a hash of the original keeps keys unique.
    """
    safe = _KEY_UNSAFE.sub("_", source_id)
    key = f"{source}_{safe}"
    if safe != source_id or len(key) > MAX_KEY_CHARS:
        digest = hashlib.sha1(source_id.encode("utf-8")).hexdigest()[:10]
        key = f"{key[: MAX_KEY_CHARS - 11]}_{digest}"
    return key


_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFC, control and format characters removed, whitespace collapsed: the form we hash and store."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(
        " " if ch in "\t\n\r\v\f" else ch
        for ch in text
        if ch in "\t\n\r\v\f" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn")
    )
    return _WHITESPACE.sub(" ", text).strip()


def text_hash(normalized: str) -> str:
    """Stable key of an English text in the translation store (sha256 of its normalized UTF-8)."""
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def request_key(normalized: str, context: Optional[str] = None) -> str:
    """The store key of a translation request, both texts normalized: its text's hash, or with a
    context, the hash of both (one caption in two images' contexts is two translations). The text
    ends at the NUL, which normalize_text removes from every text, so no two pairs share a key."""
    if context is None:
        return text_hash(normalized)
    return hashlib.sha256(f"{normalized}\0{context}".encode("utf-8")).hexdigest()
