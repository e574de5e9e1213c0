"""The run config (YAML): sources, validation rules, translation store, coverage plan, output.

Relative paths resolve against the config file's folder, so a config means the same thing from any
working directory; URIs with a scheme (gs://, s3://) are kept as they are.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping, Optional, Union

import yaml

from schemas.coverage import CoveragePlan
from schemas.errors import ConfigError

_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


@dataclasses.dataclass(frozen=True)
class CocoSource:
    """COCO-format caption JSON plus the folder holding its images."""

    name: str
    captions: str
    images: str


@dataclasses.dataclass(frozen=True)
class WebDatasetSource:
    """Tars as img2dataset writes them: <key>.jpg plus <key>.txt or <key>.json with a caption field."""

    name: str
    urls: str  # a glob, e.g. data/{shards}/*.tar or gs://bucket/x/*.tar
    caption: str = "txt"  # "txt", or "json:<field>" (the field may hold a string or a list)


@dataclasses.dataclass(frozen=True)
class ParquetSource:
    """Parquet rows with an id, caption(s), and image bytes or an image path."""

    name: str
    files: str  # a glob
    id_column: str = "key"
    caption_column: str = "caption"  # string or list<string>
    image_column: Optional[str] = None  # binary
    image_path_column: Optional[str] = None  # relative paths resolve against image_root
    image_root: Optional[str] = None


SourceSpec = Union[CocoSource, WebDatasetSource, ParquetSource]
_SOURCE_TYPES = {"coco": CocoSource, "webdataset": WebDatasetSource, "parquet": ParquetSource}
_PATH_FIELDS = {"captions", "images", "urls", "files", "image_root"}


@dataclasses.dataclass(frozen=True)
class ValidationRules:
    """What an image and a caption must satisfy; the caption default is the paper's >25 characters."""

    min_side: int = 32
    max_pixels: int = 50_000_000
    min_caption_chars: int = 26
    max_caption_chars: int = 1000


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """The append-only translation store and which translator's entries to use."""

    path: str
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class RunConfig:
    output: str
    sources: tuple[SourceSpec, ...]
    store: StoreConfig
    plan: CoveragePlan
    validation: ValidationRules = ValidationRules()

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, as written beside the shards."""
        return {
            "output": self.output,
            "sources": [{"type": _type_name(s), **dataclasses.asdict(s)} for s in self.sources],
            "store": dataclasses.asdict(self.store),
            "plan": self.plan.to_dict(),
            "validation": dataclasses.asdict(self.validation),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], base_dir: str = ".") -> "RunConfig":
        _refuse_unknown(raw, {"output", "sources", "store", "plan", "validation"}, "")
        output = _resolve(_required_str(raw, "output", ""), base_dir)
        sources_raw = raw.get("sources")
        if not isinstance(sources_raw, list) or not sources_raw:
            raise ConfigError("sources", "must be a non-empty list")
        sources = tuple(_source(s, f"sources[{i}]", base_dir) for i, s in enumerate(sources_raw))
        names = [s.name for s in sources]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"sources[{i}].name", f"{name!r} is used by another source")
        store_raw = raw.get("store")
        if not isinstance(store_raw, Mapping):
            raise ConfigError("store", "must be a mapping with path and fingerprint")
        _refuse_unknown(store_raw, {"path", "fingerprint"}, "store")
        store = StoreConfig(path=_resolve(_required_str(store_raw, "path", "store"), base_dir),
                            fingerprint=_required_str(store_raw, "fingerprint", "store"))
        plan = CoveragePlan.from_dict(raw.get("plan"), "plan")
        validation = _validation(raw.get("validation", {}))
        return cls(output=output, sources=sources, store=store, plan=plan, validation=validation)


def load_config(path: str) -> RunConfig:
    """Read and validate a run config file."""
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, Mapping):
        raise ConfigError("(top level)", f"{path} does not hold a mapping")
    return RunConfig.from_dict(raw, base_dir=os.path.dirname(os.path.abspath(path)))


def _type_name(spec: SourceSpec) -> str:
    return next(name for name, cls in _SOURCE_TYPES.items() if isinstance(spec, cls))


def _source(raw: Any, field: str, base_dir: str) -> SourceSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError(field, "must be a mapping")
    kind = raw.get("type")
    if kind not in _SOURCE_TYPES:
        raise ConfigError(f"{field}.type", f"must be one of {sorted(_SOURCE_TYPES)}, got {kind!r}")
    cls = _SOURCE_TYPES[kind]
    known = {f.name for f in dataclasses.fields(cls)}
    _refuse_unknown(raw, known | {"type"}, field)
    values = {k: v for k, v in raw.items() if k != "type"}
    name = values.get("name")
    if not isinstance(name, str) or not _SOURCE_NAME.match(name):
        raise ConfigError(f"{field}.name", "must be 1-32 characters of a-z, 0-9 and '-' (it prefixes sample keys)")
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING
        if required and f.name not in values:
            raise ConfigError(f"{field}.{f.name}", "is required")
        if f.name in values and not isinstance(values[f.name], str):
            raise ConfigError(f"{field}.{f.name}", "must be a string")
        if f.name in _PATH_FIELDS and f.name in values:
            values[f.name] = _resolve(values[f.name], base_dir)
    if cls is WebDatasetSource:
        caption = values.get("caption", "txt")
        if caption != "txt" and not (caption.startswith("json:") and len(caption) > 5):
            raise ConfigError(f"{field}.caption", "must be 'txt' or 'json:<field>'")
    if cls is ParquetSource and (values.get("image_column") is None) == (values.get("image_path_column") is None):
        raise ConfigError(f"{field}.image_column", "give exactly one of image_column and image_path_column")
    return cls(**values)


def _validation(raw: Any) -> ValidationRules:
    if not isinstance(raw, Mapping):
        raise ConfigError("validation", "must be a mapping")
    known = {f.name for f in dataclasses.fields(ValidationRules)}
    _refuse_unknown(raw, known, "validation")
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"validation.{name}", f"must be a non-negative integer, got {value!r}")
    rules = ValidationRules(**raw)
    if rules.min_caption_chars > rules.max_caption_chars:
        raise ConfigError("validation.min_caption_chars", "is larger than max_caption_chars")
    return rules


def _refuse_unknown(raw: Mapping[str, Any], known: set[str], field: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        where = f"{field}.{unknown[0]}" if field else unknown[0]
        raise ConfigError(where, f"unknown field (known: {sorted(known)})")


def _required_str(raw: Mapping[str, Any], name: str, field: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{field}.{name}" if field else name, "is required (a non-empty string)")
    return value


def _resolve(path: str, base_dir: str) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir, path))
