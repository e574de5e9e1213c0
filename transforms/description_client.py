"""One description over vLLM's OpenAI-compatible API, on the dispatcher's event loop
(transforms/dispatcher.py): the image read and prepared as the request fingerprint says (longest
side, JPEG quality), sent as a base64 data URL (no server-side access to the images needed), the
answer checked (transforms/description_checks.py). Admission, retries and failure reasons are
ChatClient's, shared with the translator.

A failed request (HTTP errors past their retries, an image that cannot be read now) is returned as
`failed`, never stored, so the next run asks again; a rejected answer is final, with its reason.
"""
from __future__ import annotations

import asyncio
import base64
import io
import threading
from typing import Optional

from PIL import Image, ImageOps

from schemas.arrow import STATUS_ACCEPTED, STATUS_REJECTED
from schemas.config import RecaptionConfig
from schemas.descriptions import DescriptionOutcome, DescriptionRequest
from schemas.recaption_prompts import DescriptionTemplate
from schemas.records import STATUS_FAILED
from transforms.admission import Admission
from transforms.description_checks import check_description
from transforms.image_io import ImageFetcher
from transforms.translation_client import Backend, ChatClient, RequestFailed, _answer, _one_line

IMAGE_UNREADABLE = "image_unreadable"  # failed: the image's bytes could not be read or decoded now


def prepare_image(data: bytes, template: DescriptionTemplate) -> bytes:
    """The JPEG the VLM is sent: turned upright by its EXIF orientation, RGB, shrunk to fit
    image_max_side (never enlarged), at jpeg_quality. Deterministic, and part of the fingerprint."""
    with Image.open(io.BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img).convert("RGB")
    img.thumbnail((template.image_max_side, template.image_max_side), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=template.jpeg_quality)
    return out.getvalue()


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


class DescriptionClient(ChatClient):
    """Describes images one by one; each thread reading images has its own fetcher."""

    def __init__(self, config: RecaptionConfig, backend: Backend, admission: Admission, api_key: Optional[str]):
        super().__init__(config, backend, admission, api_key)
        self._template = config.request  # the body sent is the one the store fingerprint hashes
        self._checks = config.checks
        self._local = threading.local()

    def _image_url(self, request: DescriptionRequest) -> str:
        fetcher = getattr(self._local, "fetcher", None)
        if fetcher is None:
            fetcher = self._local.fetcher = ImageFetcher(threads=1)
        try:
            return data_url(prepare_image(fetcher.read(request.image), self._template))
        except Exception as error:  # gone, changed, or no longer decodes: asked again next run
            raise RequestFailed(IMAGE_UNREADABLE, _one_line(f"{request.image.name}: {type(error).__name__}: {error}"))

    async def answer(self, request: DescriptionRequest) -> tuple[DescriptionOutcome, int]:
        """The request's outcome, and how many of its HTTP requests were retries after an error."""
        sent = [0, 0]
        try:
            url = await asyncio.to_thread(self._image_url, request)
            response = await self._complete(self._template.body(url, request.caption), sent)
        except RequestFailed as failed:  # raw_output: the cause, in one line (failures are never stored)
            return DescriptionOutcome(request, STATUS_FAILED, reason=failed.reason, raw_output=failed.detail,
                                      requests_sent=sent[0]), sent[1]
        output = _answer(response)
        finish = getattr(response.choices[0], "finish_reason", None)
        result = check_description(output, finish, self._template, self._checks, request.caption)
        status = STATUS_ACCEPTED if result.description is not None else STATUS_REJECTED
        return DescriptionOutcome(request, status, result.description, result.reason, output, finish,
                                  requests_sent=sent[0]), sent[1]
