"""A shard sample's JSON member (`<key>.json` beside `<key>.<jpg|png|webp>`, named in schemas/layout.py):
UTF-8 JSON holding the sample's metadata and its annotations, each
`{"task": caption|translation, "lang": ..., "source": English text (translation only), "target": ...}`,
and for a caption of a source split into styles (transforms/caption_styles.py) its `"style"`: one of
Florence-2's task tags below; a caption without one is a `<CAPTION>`.
Where the plan pairs a translation language with other images' captions, the metadata also holds
`caption_hashes`: the text hashes of the image's own captions, which no such source may have.
A translation annotation from a bitext matched to the image also holds `similarity`, the cosine of
the image and the English side (for a paragraph of several bitexts: the lowest of theirs); samples
written before it existed read as they did.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

from schemas.records import TASK_CAPTION, TASKS

CAPTION_HASHES = "caption_hashes"
STYLE_CAPTION, STYLE_DETAILED, STYLE_MORE_DETAILED = "<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>"
STYLES = (STYLE_CAPTION, STYLE_DETAILED, STYLE_MORE_DETAILED)


def task_language(task: str, lang: str) -> str:
    """The task-language key ("caption-de", "translation-fr") used in counts and for balancing."""
    return f"{task}-{lang}"


@dataclasses.dataclass(frozen=True)
class Annotation:
    task: str
    lang: str
    target: str
    source: Optional[str] = None  # the English text, for translation
    similarity: Optional[float] = None  # image - English side cosine, for a bitext
    style: Optional[str] = None  # a caption's style tag, where its source splits captions into styles

    @property
    def caption_style(self) -> str:
        """The style a caption is asked in and scored as (`<CAPTION>` when it states none)."""
        return self.style or STYLE_CAPTION

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "lang": self.lang, "target": self.target}
        if self.source is not None:
            out["source"] = self.source
        if self.similarity is not None:
            out["similarity"] = self.similarity
        if self.style is not None:
            out["style"] = self.style
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Annotation":
        if raw.get("task") not in TASKS:
            raise ValueError(f"unknown task {raw.get('task')!r}")
        if raw["task"] != TASK_CAPTION and not raw.get("source"):
            raise ValueError("a translation annotation needs its source text")
        similarity = raw.get("similarity")
        if similarity is not None and (isinstance(similarity, bool) or not isinstance(similarity, (int, float))):
            raise ValueError(f"similarity {similarity!r} is not a number")
        style = raw.get("style")
        if style is not None and (raw["task"] != TASK_CAPTION or style not in STYLES):
            raise ValueError(f"style {style!r}: only a caption has one, one of {', '.join(STYLES)}")
        return cls(task=raw["task"], lang=raw["lang"], target=raw["target"], source=raw.get("source"),
                   similarity=similarity, style=style)


def encode_sample_json(metadata: dict[str, Any], annotations: list[Annotation]) -> bytes:
    """Readable, deterministic JSON (sorted keys, non-ASCII kept as UTF-8)."""
    body = dict(metadata, annotations=[a.to_json() for a in annotations])
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_sample_json(data: bytes) -> tuple[dict[str, Any], list[Annotation]]:
    body = json.loads(data.decode("utf-8"))
    annotations = [Annotation.from_json(a) for a in body.pop("annotations")]
    return body, annotations
