"""The coverage plan: which task-language pairs get labels, which are held out, and the eval split.

Assignment is a pure function of (seed, image content hash, sample key) through sha256, so it never
depends on arrival order, worker count, or Python's salted hash(). The split follows the image's
*content*, not its key: the same image listed under two ids lands in one split (and is kept once,
transforms/dedup.py), so no evaluation image can reach training under another name.

The plan is pickled into every step that holds it, and Dataflow refuses a job graph over 10 MB: a
long list of eval keys therefore lives in a file (`eval_keys_file`, one key per line, read once per
worker process), and only a short one may be written inline.
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading
from typing import Any, Callable, Mapping, Optional

from schemas.errors import ConfigError, InputError
from schemas.languages import unsupported_reason
from schemas.records import SPLIT_EVAL, SPLIT_TRAIN

_PLAN_FIELDS = {
    "languages", "source_language", "caption_languages", "translation_languages",
    "eval_fraction", "eval_keys", "eval_keys_file", "seed", "shard_size", "images_per_bucket",
}
# Inline keys are pickled into every step holding the plan. Measured (random 28-character keys, the
# build graph): 10,000 keys add 1.0 MB to the job graph, 100,000 add 10.4 MB, over Dataflow's 10 MB
# limit; through eval_keys_file, 1,000,000 keys add nothing (the graph carries the path).
MAX_INLINE_EVAL_KEYS = 10_000

_loaded_keys: dict[str, frozenset[str]] = {}
_loading = threading.Lock()


def read_eval_keys(path: str) -> frozenset[str]:
    """The keys listed in `path` (one per line, blank lines skipped; .gz/.bz2 by extension), read
    once per process through Beam's FileSystems and kept for the process's later calls."""
    keys = _loaded_keys.get(path)
    if keys is not None:
        return keys
    with _loading:
        if path not in _loaded_keys:
            from apache_beam.io.filesystems import FileSystems  # schemas stay importable without Beam

            try:
                with FileSystems.open(path) as f:
                    lines = f.read().decode("utf-8").splitlines()
            except Exception as e:  # Beam wraps a missing object in BeamIOError
                raise InputError(path, f"plan.eval_keys_file cannot be read ({type(e).__name__}: {e})") from None
            _loaded_keys[path] = frozenset(k for k in (line.strip() for line in lines) if k)
        return _loaded_keys[path]


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
    eval_keys: frozenset[str] = frozenset()  # short lists only (MAX_INLINE_EVAL_KEYS)
    eval_keys_file: Optional[str] = None  # one key per line: what the job graph carries is this path
    seed: int = 0
    shard_size: int = 1000
    # The coverage step's groups: images are cut into 2^b order buckets, b sized from the count of
    # images so that a bucket holds at most this many on average (transforms/sharding.py). The
    # output does not depend on it; the memory of one bucket's group does.
    images_per_bucket: int = 4096

    @property
    def held_out_caption_languages(self) -> tuple[str, ...]:
        """Languages that get no caption labels in train: the unseen task-language pairs."""
        return tuple(l for l in self.languages if l not in self.caption_languages)

    def split_of(self, key: str, content_sha256: str) -> str:
        """train or eval: eval when the key is listed in eval_keys, else a seeded hash of the image's
        content against eval_fraction."""
        if self.is_eval_key(key):
            return SPLIT_EVAL
        if self.eval_fraction > 0 and _unit_hash(self.seed, "split", content_sha256) < self.eval_fraction * 2**64:
            return SPLIT_EVAL
        return SPLIT_TRAIN

    def is_eval_key(self, key: str) -> bool:
        """Whether the plan lists `key` for evaluation (inline or in eval_keys_file)."""
        if key in self.eval_keys:
            return True
        return self.eval_keys_file is not None and key in read_eval_keys(self.eval_keys_file)

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
    def from_dict(cls, raw: Mapping[str, Any], field: str = "plan",
                  resolve: Callable[[str], str] = lambda path: path) -> "CoveragePlan":
        """Validate a plan mapping (from YAML); every refusal names the field at fault. `resolve`
        turns a relative eval_keys_file into a path (the config resolves it against its folder)."""
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
        if len(keys) > MAX_INLINE_EVAL_KEYS:
            raise ConfigError(f"{field}.eval_keys", f"lists {len(keys):,} keys; inline keys are pickled into every "
                                                    f"step of the job (Dataflow refuses graphs over 10 MB), so above "
                                                    f"{MAX_INLINE_EVAL_KEYS:,} write them one per line to a file and "
                                                    f"give it as {field}.eval_keys_file")
        keys_file = raw.get("eval_keys_file")
        if keys_file is not None and (not isinstance(keys_file, str) or not keys_file):
            raise ConfigError(f"{field}.eval_keys_file", "must be a path (a file with one sample key per line)")
        seed = raw.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"{field}.seed", f"must be a non-negative integer, got {seed!r}")
        shard_size = raw.get("shard_size", 1000)
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ConfigError(f"{field}.shard_size", f"must be a positive integer, got {shard_size!r}")
        per_bucket = raw.get("images_per_bucket", cls.images_per_bucket)
        if isinstance(per_bucket, bool) or not isinstance(per_bucket, int) or per_bucket < 1:
            raise ConfigError(f"{field}.images_per_bucket", f"must be a positive integer, got {per_bucket!r}")
        return cls(languages=languages, caption_languages=captions, translation_languages=translations,
                   source_language=source, eval_fraction=float(fraction), eval_keys=frozenset(keys),
                   eval_keys_file=None if keys_file is None else resolve(keys_file), seed=seed,
                   shard_size=shard_size, images_per_bucket=per_bucket)


def _check_code(code: object, field: str) -> None:
    if not isinstance(code, str):
        raise ConfigError(field, f"{code!r} is not an ISO 639-1 language code")
    reason = unsupported_reason(code)
    if reason is not None:
        raise ConfigError(field, reason)


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
