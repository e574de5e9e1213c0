"""The one config contract: run configs (schemas/config.py, schemas/coverage.py) and training configs
(model/train_config.py) are pydantic dataclasses declared with `config_model`, validated by
`validate_config`, and exported as JSON Schema for editors by `config_json_schema`.

Pydantic checks types, ranges, allowed values and unknown keys (`extra="forbid"`: a typo'd YAML key is
refused, never ignored); this module turns its first error into a `ConfigError` naming the field's full
path (`plan.caption_languages[1]`, `translator.max_in_flight`, `train.model.size`) and what is allowed.
Numbers and booleans are strict (YAML's `"4096"` or `yes` is not an integer or a boolean here), while
YAML lists still fill tuples. Relative paths resolve against the config file's folder, passed as the
validation context.
"""
from __future__ import annotations

import functools
import os
from typing import Annotated, Any, Callable, Mapping, Optional, TypeVar

import pydantic
from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationInfo, WrapValidator
from pydantic_core import PydanticCustomError

from schemas.errors import ConfigError
from schemas.languages import ISO_639_1, unsupported_reason

T = TypeVar("T")

config_model = pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid"))
"""Declares a config section: a frozen dataclass (attributes, dataclasses.asdict/replace, pickling as
before) that validates on construction and refuses unknown fields."""


def described(kind: str, show_input: bool = True) -> WrapValidator:
    """Replaces pydantic's errors for a value with one 'must be <kind>, got <value>' line; `show_input`
    false for values that may hold a secret (a URL with a password)."""
    def validate(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except pydantic.ValidationError:
            got = f", got {value!r}" if show_input else ""
            raise PydanticCustomError("config_value", "must be {kind}{got}", {"kind": kind, "got": got}) from None
    return WrapValidator(validate)


PositiveInt = Annotated[int, Field(strict=True, ge=1), described("a positive integer")]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0), described("a non-negative integer")]
PositiveFloat = Annotated[float, Field(strict=True, gt=0), described("a positive number")]
NonNegativeFloat = Annotated[float, Field(strict=True, ge=0), described("a non-negative number")]
Bool = Annotated[bool, Field(strict=True), described("true or false")]
Text = Annotated[str, Field(strict=True, min_length=1), described("a non-empty string")]


def resolve_against(path: str, base_dir: Optional[str]) -> str:
    """A relative path, against `base_dir` (a config file's folder); URIs and absolute paths as they are."""
    if base_dir is None or "://" in path or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir, path))


def resolve_path(path: str, info: ValidationInfo) -> str:
    """A relative path, against the config file's folder (the context's base_dir); URIs as they are."""
    return resolve_against(path, (info.context or {}).get("base_dir"))


Path = Annotated[Text, AfterValidator(resolve_path)]
"""A file, folder or glob: relative ones resolve against the config file's folder."""


def _supported_language(code: str) -> str:
    reason = unsupported_reason(code)
    if reason is not None:
        raise ValueError(reason)
    return code


SUPPORTED_LANGUAGES = sorted(code for code in ISO_639_1 if unsupported_reason(code) is None)
Language = Annotated[str, Field(strict=True, json_schema_extra={"enum": SUPPORTED_LANGUAGES}),
                     AfterValidator(_supported_language)]
"""An ISO 639-1 code the translator can be asked for and its outputs checked (schemas/languages.py)."""


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def validate_config(cls: type[T], raw: Any, prefix: str = "", base_dir: Optional[str] = None) -> T:
    """`raw` (parsed YAML) as a `cls`, or a ConfigError naming the field under `prefix` (e.g. "plan")."""
    try:
        return _adapter(cls).validate_python(raw, context={"base_dir": base_dir})
    except pydantic.ValidationError as error:
        raise _config_error(error, cls, prefix) from None


def config_json_schema(cls: type, title: str) -> dict[str, Any]:
    """The JSON Schema of a config (what editors validate YAML against), for committed schema files."""
    schema = _adapter(cls).json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **schema}


def _config_error(error: pydantic.ValidationError, cls: type, prefix: str) -> ConfigError:
    """The first error, as a ConfigError naming its field's path and what the field allows."""
    detail = error.errors(include_url=False)[0]
    path, known = _field_path(config_json_schema(cls, cls.__name__), detail["loc"], prefix)
    kind, ctx = detail["type"], detail.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, ConfigError):  # a validator's own check, naming a field below its location
        return ConfigError(_join(path, cause.field), cause.message)
    if kind == "missing":
        return ConfigError(path, "is required")
    if kind == "unexpected_keyword_argument":
        return ConfigError(path, f"unknown field (known: {', '.join(known)})")
    if kind == "union_tag_invalid":
        tag = ctx["discriminator"].strip("'")
        return ConfigError(_join(path, tag), f"must be one of {ctx['expected_tags']}, got {ctx['tag']!r}")
    if kind == "union_tag_not_found":
        tag = ctx["discriminator"].strip("'")
        return ConfigError(_join(path, tag), "is required")
    if kind == "too_short":
        least = ctx["min_length"]
        return ConfigError(path, "must be a non-empty list" if least == 1 else f"must list at least {least} items")
    if kind == "literal_error":
        return ConfigError(path, f"must be {ctx['expected']}, got {detail['input']!r}")
    if isinstance(cause, ValueError):
        return ConfigError(path, str(cause))
    return ConfigError(path or "(top level)", detail["msg"][:1].lower() + detail["msg"][1:])


def _join(path: str, field: str) -> str:
    if not field:
        return path
    if not path or field.startswith("["):
        return f"{path}{field}"
    return f"{path}.{field}"


def _field_path(schema: Mapping[str, Any], loc: tuple, prefix: str) -> tuple[str, list[str]]:
    """The dotted path of pydantic's error location, walked along the JSON Schema so that union labels
    (a source's type tag, a union member's name) are left out; and the fields known where it ends."""
    defs = schema.get("$defs", {})

    def resolve(node: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[1]]
        return node

    def options(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        node = resolve(node)
        return [node, *(resolve(n) for n in node.get("anyOf", node.get("oneOf", [])))]

    path, node, known = prefix, schema, []
    for step in loc:
        nodes = options(node)
        known = sorted({name for n in nodes for name in n.get("properties", {})})
        if isinstance(step, int):
            node = next((n["items"] for n in nodes if "items" in n), {})
            path = _join(path, f"[{step}]")
            continue
        holder = next((n for n in nodes if step in n.get("properties", {})), None)
        mapping = next((n["discriminator"]["mapping"] for n in nodes if step in n.get("discriminator", {})
                        .get("mapping", {})), None)
        if holder is not None:
            node = holder["properties"][step]
        elif mapping is not None:  # a tagged union's tag: the member, not a field
            node = {"$ref": mapping[step]}
            continue
        elif len([n for n in nodes[1:] if n.get("type") != "null"]) > 1:  # a union member's label (not Optional's)
            continue
        else:
            node = next((n["additionalProperties"] for n in nodes
                         if isinstance(n.get("additionalProperties"), Mapping)), {})
        path = _join(path, step)
    return path, known
