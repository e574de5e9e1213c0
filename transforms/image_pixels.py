"""An image's pixels as a model sees them, in one place for the shard build and the loader: upright
8-bit RGB (`to_rgb`), and the copy resized at build time (`resized_jpeg`, img2dataset's convention).

It imports Pillow and numpy only: the build imports it and must not import torch (model/ does).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from schemas.layout import RESIZE_BORDER, RESIZE_CENTER_CROP, RESIZE_KEEP_RATIO, RESIZE_SQUARE

ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
RESAMPLING = Image.Resampling.BICUBIC  # Florence-2's processor resizes bicubically
BORDER_FILL = (255, 255, 255)  # img2dataset's border colour; white, as transparency is shown (to_rgb)
JPEG_SUBSAMPLING = 0  # 4:4:4: at 224 px, halving chroma would cost visible detail for ~1/3 fewer bytes


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB: the EXIF orientation applied (a phone photo is stored sideways and tagged),
    16-bit grey scaled to 8 bits (Pillow's own conversion clips it at 255), and transparency composited
    on white (transparent pixels' colours are arbitrary, often black; white is how they are shown)."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):
        image = _grey_to_8bit(image)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def _grey_to_8bit(image: Image.Image) -> Image.Image:
    """Mode I;16* (16-bit) or I (32-bit int, how Pillow opens some 16-bit files): the top 8 of 16 bits;
    values outside 0..65535 (not from a 16-bit file) are clipped to it first."""
    values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
    return Image.fromarray((values >> 8).astype(np.uint8))  # 2-D uint8: mode L


def resized_size(width: int, height: int, size: int, mode: str) -> tuple[int, int]:
    """The (width, height) of the copy of a width x height (upright) image: `size` square, except
    keep_ratio's, whose shorter side is `size`."""
    if mode != RESIZE_KEEP_RATIO:
        return size, size
    scale = size / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(image: Image.Image, size: int, mode: str) -> Image.Image:
    """img2dataset's resize modes, bicubic: `square` stretches to size x size ignoring the aspect
    (what Florence-2's processor does, so the loader reads this one), keep_ratio makes the shorter side
    `size`, center_crop does that then crops the centre square, border fits the longer side and pads."""
    if mode == RESIZE_SQUARE:
        return image.resize((size, size), RESAMPLING)
    if mode == RESIZE_KEEP_RATIO:
        return image.resize(resized_size(*image.size, size, mode), RESAMPLING)
    if mode == RESIZE_CENTER_CROP:
        return ImageOps.fit(image, (size, size), RESAMPLING)
    if mode == RESIZE_BORDER:
        return ImageOps.pad(image, (size, size), RESAMPLING, color=BORDER_FILL)
    raise ValueError(f"resize mode {mode!r} is not one of square, keep_ratio, center_crop, border")


def resized_jpeg(data: bytes, size: int, mode: str, quality: int) -> bytes:
    """The resized copy of an image file's bytes: upright RGB (to_rgb), resized, baseline JPEG with fixed
    encoder settings and no metadata, so the same bytes in give the same bytes out."""
    with Image.open(io.BytesIO(data)) as image:
        copy = resize(to_rgb(image), size, mode)
    out = io.BytesIO()
    copy.save(out, "JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING, optimize=False, progressive=False)
    return out.getvalue()
