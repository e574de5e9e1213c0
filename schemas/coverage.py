"""The coverage plan: which task-language pairs get labels, which are held out, and the eval split.

Assignment is a pure function of (seed, image content hash, sample key) through sha256, so it never
depends on arrival order, worker count, or Python's salted hash(). The split follows the image's
*content*, not its key: the same image listed under two ids lands in one split (and is kept once,
transforms/dedup.py), so no evaluation image can reach training under another name.

The plan is pickled into every step that holds it, and Dataflow refuses a job graph over 10 MB: a
long list of eval keys therefore lives in a file (`eval_keys_file`, one key per line, read once per
worker process), and only a short one may be written inline.

`translation_pairing` says, per translation language, whose caption an image's translation
annotations translate: its own (`own_caption`), or another image's (`other_image`), so that a
held-out language's translation targets are not the image's description (README, "Translation
pairing"); or none: `bitext` gives the image the parallel sentences closest to it in an embedding
space (the config's `bitext` section, transforms/bitext_pairs.py), which need no translator.
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading
from typing import Annotated, Any, Literal, Mapping, Optional, Union

from pydantic import AfterValidator, Field, model_validator

from schemas.contract import (Language, NonNegativeInt, Path, PositiveInt, config_model, described,
                              validate_config)
from schemas.errors import ConfigError, InputError
from schemas.records import SPLIT_EVAL, SPLIT_TRAIN

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


def _distinct(codes: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(codes)) != len(codes):
        raise ValueError("lists a language twice")
    return codes


Languages = Annotated[tuple[Language, ...], Field(min_length=1), AfterValidator(_distinct)]
EvalFraction = Annotated[float, Field(strict=True, ge=0, lt=1), described("a number in [0, 1)")]
OWN_CAPTION, OTHER_IMAGE, BITEXT = "own_caption", "other_image", "bitext"
PairingMode = Literal["own_caption", "other_image", "bitext"]
TranslationPairing = Annotated[Union[PairingMode, dict[str, PairingMode]],
                               described("own_caption, other_image or bitext, or a mapping from translation "
                                         "language to one of them")]
SampleKeys = Annotated[frozenset[Annotated[str, Field(strict=True, min_length=1)]],
                       described("a list of sample keys (strings)")]


@config_model
class CoveragePlan:
    """A validated task x language coverage matrix plus eval split, seed and shard size."""

    languages: Languages
    caption_languages: Languages
    translation_languages: Languages
    source_language: Language = "en"
    eval_fraction: EvalFraction = 0.0
    eval_keys: SampleKeys = frozenset()  # short lists only (MAX_INLINE_EVAL_KEYS)
    eval_keys_file: Optional[Path] = None  # one key per line: what the job graph carries is this path
    seed: NonNegativeInt = 0
    shard_size: PositiveInt = 1000
    # The coverage step's groups: images are cut into 2^b order buckets, b sized from the count of
    # images so that a bucket holds at most this many on average (transforms/sharding.py). Ranks and
    # shards do not depend on it (nor, without other_image pairing, the output); the memory of one
    # bucket's group does.
    images_per_bucket: PositiveInt = 4096
    # Whose caption each translation language's annotations translate: one mode for all, or a mapping
    # language -> mode (languages it leaves out: own_caption). other_image pairs images within one
    # split of one order bucket (transforms/coverage.py), so with it images_per_bucket also chooses
    # which few images pair across a bucket's end.
    translation_pairing: TranslationPairing = OWN_CAPTION

    @model_validator(mode="after")
    def _consistent(self) -> "CoveragePlan":
        """The matrix must be usable: every language gets data, every caption language a source."""
        source, languages = self.source_language, self.languages
        if source not in languages:
            raise ConfigError("source_language", f"{source!r} is not in languages {list(languages)}")
        for name in ("caption_languages", "translation_languages"):
            outside = [code for code in getattr(self, name) if code not in languages]
            if outside:
                raise ConfigError(name, f"{outside[0]!r} is not in languages {list(languages)}")
        if source in self.translation_languages:
            raise ConfigError("translation_languages", f"{source!r} is the source language; translations go "
                                                       f"{source}->X")
        for lang in self.caption_languages:
            if lang != source and lang not in self.translation_languages:
                raise ConfigError("caption_languages", f"caption language {lang!r} has no translations: its "
                                                       f"captions are translated from {source!r}, so add it to "
                                                       "translation_languages")
        for lang in languages:
            if lang != source and lang not in self.translation_languages:
                raise ConfigError("translation_languages", f"language {lang!r} is in languages but not "
                                                           "translated: it would get no data at all")
        if len(self.eval_keys) > MAX_INLINE_EVAL_KEYS:
            raise ConfigError("eval_keys", f"lists {len(self.eval_keys):,} keys; inline keys are pickled into "
                                           f"every step of the job (Dataflow refuses graphs over 10 MB), so above "
                                           f"{MAX_INLINE_EVAL_KEYS:,} write them one per line to a file and give "
                                           "it as eval_keys_file")
        if isinstance(self.translation_pairing, dict):
            outside = [code for code in self.translation_pairing if code not in self.translation_languages]
            if outside:
                raise ConfigError("translation_pairing", f"{outside[0]!r} is not in translation_languages "
                                                         f"{list(self.translation_languages)}")
        return self

    def pairing_of(self, lang: str) -> str:
        """Where `lang`'s translation annotations take their English text from (translation_pairing)."""
        if isinstance(self.translation_pairing, str):
            return self.translation_pairing
        return self.translation_pairing.get(lang, OWN_CAPTION)

    @property
    def other_image_languages(self) -> tuple[str, ...]:
        """Translation languages whose annotations translate another image's caption."""
        return tuple(l for l in self.translation_languages if self.pairing_of(l) == OTHER_IMAGE)

    @property
    def bitext_languages(self) -> tuple[str, ...]:
        """Translation languages whose annotations are bitexts matched to the image (no translator)."""
        return tuple(l for l in self.translation_languages if self.pairing_of(l) == BITEXT)

    def translator_languages(self, split: str) -> tuple[str, ...]:
        """The languages an image of `split` needs its own captions translated into: all of them for
        eval (caption references in every language), else all but the bitext-paired ones that are
        not caption languages (their translation annotations are bitexts)."""
        if split == SPLIT_EVAL:
            return self.translation_languages
        return tuple(l for l in self.translation_languages
                     if self.pairing_of(l) != BITEXT or l in self.caption_languages)

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

    def seeded(self, *parts: object) -> int:
        """A 64-bit draw from (seed, parts): a choice made per sample that no run or worker changes."""
        return _unit_hash(self.seed, *parts)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["languages"] = list(self.languages)
        out["caption_languages"] = list(self.caption_languages)
        out["translation_languages"] = list(self.translation_languages)
        out["eval_keys"] = sorted(self.eval_keys)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], field: str = "plan") -> "CoveragePlan":
        """Validate a plan mapping (from YAML, or a published config.yaml's); every refusal names the
        field at fault under `field`."""
        return validate_config(cls, raw, field)
