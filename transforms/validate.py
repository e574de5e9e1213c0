"""Validation: the image must fully decode (PIL load, not just open) and be large enough; captions
are cleaned and length-checked. Every refusal becomes a Rejection with a reason, never a silent drop."""
from __future__ import annotations

import hashlib
import io
import warnings
from typing import Iterator, Optional, Union

import apache_beam as beam
from PIL import Image

from schemas.config import ValidationRules
from schemas.layout import IMAGE_EXTENSIONS
from schemas.records import Rejection, SourceRecord, ValidImage, normalize_text
from transforms.image_io import ImageFetcher
from transforms.staging import StagingWriter

REJECTED = "rejected"
IMAGE_BYTES = "image_bytes"  # (sha256, bytes) of each valid image, when asked for


def check_caption(raw: Union[str, bytes], rules: ValidationRules) -> tuple[Optional[str], str]:
    """(cleaned caption, "") when accepted, else (None, reason)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None, "caption_not_utf8"
    if not isinstance(raw, str):
        return None, "caption_not_text"
    text = normalize_text(raw)
    if not text:
        return None, "caption_empty"
    if len(text) < rules.min_caption_chars:
        return None, "caption_too_short"
    if len(text) > rules.max_caption_chars:
        return None, "caption_too_long"
    return text, ""


_ORIENTATION_TAG = 0x0112


def _exif_orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block does not make the image unusable: no turn
        return 1
    return value if isinstance(value, int) else 1


def inspect_image(data: bytes, rules: ValidationRules) -> tuple[Optional[tuple[str, int, int]], str, str]:
    """((extension, width, height), "", "") for a usable image, else (None, reason, detail); width and
    height as displayed, after the EXIF Orientation."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > rules.max_pixels:
                    return None, "image_too_large", f"{width}x{height}"
                fmt = img.format
                img.load()
                # Viewers (and PIL's ImageOps.exif_transpose) show an image turned by its EXIF
                # Orientation; 5-8 turn it by 90 degrees, so the displayed width and height swap.
                if _exif_orientation(img) in (5, 6, 7, 8):
                    width, height = height, width
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return None, "image_too_large", str(e)
    except Exception as e:  # PIL raises many types for bad data: all mean "does not decode"
        return None, "image_undecodable", f"{type(e).__name__}: {e}"
    if fmt not in IMAGE_EXTENSIONS:
        return None, "image_format_unsupported", str(fmt)
    if min(width, height) < rules.min_side:
        return None, "image_too_small", f"{width}x{height} < {rules.min_side}"
    return (IMAGE_EXTENSIONS[fmt], width, height), "", ""


class ValidateRecord(beam.DoFn):
    """SourceRecord -> ValidImage on the main output; Rejections (image or caption) on `rejected`.

    Runs fused right after the sources: a record whose source already read the image (a tar member,
    a Parquet cell) brings the bytes along and they are checked as they are; only images named by a
    path are read here, each in one request (one client per DoFn instance).

    With a `staging` folder (the build's, in its run folder), a valid image that no byte range of
    its source holds is staged there (transforms/staging.py: one writer per bundle, its files closed
    in finish_bundle, before the runner lets any step consume the bundle's outputs). `translate`
    writes no shards and passes none: nothing is staged.

    With `image_bytes`, each valid image's (sha256, bytes) also goes to IMAGE_BYTES, for a step fused
    behind this one (the bitext matcher's image embeddings) to use the bytes read here, not read
    them again."""

    def __init__(self, rules: ValidationRules, staging: Optional[str] = None, image_bytes: bool = False):
        self.rules = rules
        self.staging = staging
        self.image_bytes = image_bytes
        self.fetcher: Optional[ImageFetcher] = None
        self.writer: Optional[StagingWriter] = None

    def setup(self) -> None:
        self.fetcher = ImageFetcher()

    def start_bundle(self) -> None:
        self.writer = StagingWriter(self.staging) if self.staging else None

    def finish_bundle(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def teardown(self) -> None:
        if self.fetcher is not None:
            self.fetcher.close()

    def process(self, record: SourceRecord) -> Iterator:
        valid, rejected, data = self.check(record)
        for r in rejected:
            beam.metrics.Metrics.counter("validate", r.reason).inc()
            yield beam.pvalue.TaggedOutput(REJECTED, r)
        if valid is not None:
            yield valid
            if self.image_bytes:
                yield beam.pvalue.TaggedOutput(IMAGE_BYTES, (valid.sha256, data))

    def check(self, record: SourceRecord) -> tuple[Optional[ValidImage], list[Rejection], Optional[bytes]]:
        """The valid image (or None), every rejection, and the bytes read; each caption is accounted
        exactly once."""
        def image_rejected(reason: str, detail: str = "", captions: int = len(record.captions)):
            return None, [Rejection(record.source, record.key, "image", reason, detail, captions)], None

        if record.image is None:
            return image_rejected("image_missing", "no image in the source record")
        try:
            data = record.data if record.data is not None else self.fetcher.read(record.image)
        except FileNotFoundError as e:
            return image_rejected("image_missing", str(e))
        except Exception as e:  # Beam wraps filesystem errors in BeamIOError
            missing = "No such file" in str(e) or "not found" in str(e).lower()
            return image_rejected("image_missing" if missing else "image_unreadable", str(e)[:300])
        info, reason, detail = inspect_image(data, self.rules)
        if info is None:
            return image_rejected(reason, detail)
        accepted: list[str] = []
        rejected: list[Rejection] = []
        for i, raw in enumerate(record.captions):
            text, reason = check_caption(raw, self.rules)
            if text is not None and text in accepted:
                text, reason = None, "caption_duplicate"
            if text is None:
                rejected.append(Rejection(record.source, f"{record.key}#c{i}", "caption", reason, captions=1))
            else:
                accepted.append(text)
        if not accepted:
            _, image, _ = image_rejected("no_valid_caption", captions=0)
            return None, rejected + image, None
        ext, width, height = info
        image = record.image
        if not image.addressable and self.writer is not None:
            image = self.writer.stage(image, data)
        return ValidImage(record.source, record.source_id, record.key, image, ext, width, height,
                          hashlib.sha256(data).hexdigest(), tuple(accepted)), rejected, data
