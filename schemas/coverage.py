"""The coverage plan: which task-language pairs get labels, which are held out, and the eval split.

Assignment is a pure function of (seed, image content hash, sample key) through sha256, so it never
depends on arrival order, worker count, or Python's salted hash(). The split follows the image's
*content*, not its key: the same image listed under two ids lands in one split (and is kept once,
transforms/dedup.py), so no evaluation image can reach training under another name.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Mapping

from schemas.errors import ConfigError
from schemas.languages import ISO_639_1
from schemas.records import SPLIT_EVAL, SPLIT_TRAIN

_PLAN_FIELDS = {
    "languages", "source_language", "caption_languages", "translation_languages",
    "eval_fraction", "eval_keys", "seed", "shard_size",
}


def _unit_hash(*parts: object) -> int:
    """64-bit stable hash of the parts."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


@dataclasses.dataclass(frozen=True)
class CoveragePlan:
    """A validated task x language coverage matrix plus eval split, seed and shard size."""

    languages: tuple[str, ...]
    caption_languages: tuple[str, ...]
    translation_languages: tuple[str, ...]
    source_language: str = "en"
    eval_fraction: float = 0.0
    eval_keys: frozenset[str] = frozenset()
    seed: int = 0
    shard_size: int = 1000

    @property
    def held_out_caption_languages(self) -> tuple[str, ...]:
        """Languages that get no caption labels in train: the unseen task-language pairs."""
        return tuple(l for l in self.languages if l not in self.caption_languages)

    def split_of(self, key: str, content_sha256: str) -> str:
        """train or eval: eval when the key is listed in eval_keys, else a seeded hash of the image's
        content against eval_fraction."""
        if key in self.eval_keys:
            return SPLIT_EVAL
        if self.eval_fraction > 0 and _unit_hash(self.seed, "split", content_sha256) < self.eval_fraction * 2**64:
            return SPLIT_EVAL
        return SPLIT_TRAIN

    def order_of(self, key: str) -> int:
        """Position key of a sample within its split: a seeded shuffle, stable across runs."""
        return _unit_hash(self.seed, "order", key)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["languages"] = list(self.languages)
        out["caption_languages"] = list(self.caption_languages)
        out["translation_languages"] = list(self.translation_languages)
        out["eval_keys"] = sorted(self.eval_keys)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], field: str = "plan") -> "CoveragePlan":
        """Validate a plan mapping (from YAML); every refusal names the field at fault."""
        if not isinstance(raw, Mapping):
            raise ConfigError(field, "must be a mapping")
        unknown = sorted(set(raw) - _PLAN_FIELDS)
        if unknown:
            raise ConfigError(f"{field}.{unknown[0]}", f"unknown field (known: {sorted(_PLAN_FIELDS)})")
        languages = _language_list(raw, "languages", field)
        source = raw.get("source_language", "en")
        _check_code(source, f"{field}.source_language")
        if source not in languages:
            raise ConfigError(f"{field}.source_language", f"{source!r} is not in languages {list(languages)}")
        captions = _language_list(raw, "caption_languages", field, within=languages)
        translations = _language_list(raw, "translation_languages", field, within=languages)
        if source in translations:
            raise ConfigError(f"{field}.translation_languages",
                              f"{source!r} is the source language; translations go {source}->X")
        for lang in captions:
            if lang != source and lang not in translations:
                raise ConfigError(f"{field}.caption_languages",
                                  f"caption language {lang!r} has no translations: its captions are "
                                  f"translated from {source!r}, so add it to translation_languages")
        for lang in languages:
            if lang != source and lang not in translations:
                raise ConfigError(f"{field}.translation_languages",
                                  f"language {lang!r} is in languages but not translated: "
                                  f"it would get no data at all")
        fraction = raw.get("eval_fraction", 0.0)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise ConfigError(f"{field}.eval_fraction", f"must be a number in [0, 1), got {fraction!r}")
        keys = raw.get("eval_keys", [])
        if not isinstance(keys, (list, tuple)) or not all(isinstance(k, str) and k for k in keys):
            raise ConfigError(f"{field}.eval_keys", "must be a list of sample keys (strings)")
        seed = raw.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"{field}.seed", f"must be a non-negative integer, got {seed!r}")
        shard_size = raw.get("shard_size", 1000)
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ConfigError(f"{field}.shard_size", f"must be a positive integer, got {shard_size!r}")
        return cls(languages=languages, caption_languages=captions, translation_languages=translations,
                   source_language=source, eval_fraction=float(fraction), eval_keys=frozenset(keys),
                   seed=seed, shard_size=shard_size)


def _check_code(code: object, field: str) -> None:
    if not isinstance(code, str) or code not in ISO_639_1:
        raise ConfigError(field, f"{code!r} is not an ISO 639-1 language code")


def _language_list(raw: Mapping[str, Any], name: str, field: str,
                   within: tuple[str, ...] | None = None) -> tuple[str, ...]:
    path = f"{field}.{name}"
    value = raw.get(name)
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(path, "must be a non-empty list of ISO 639-1 codes")
    for code in value:
        _check_code(code, path)
        if within is not None and code not in within:
            raise ConfigError(path, f"{code!r} is not in languages {list(within)}")
    if len(set(value)) != len(value):
        raise ConfigError(path, "lists a language twice")
    return tuple(value)
