"""The run config (YAML): sources, validation rules, translation store, coverage plan, output.

Relative paths resolve against the config file's folder, so a config means the same thing from any
working directory; URIs with a scheme (gs://, s3://) are kept as they are.
"""
from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
from typing import Any, Mapping, Optional, Union

import yaml

from schemas.coverage import CoveragePlan
from schemas.errors import ConfigError
from schemas.prompts import translator_fingerprint
from schemas.secrets import api_key_flag_in, has_url_userinfo, redact, redact_args, valid_env_name

_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


@dataclasses.dataclass(frozen=True)
class CocoSource:
    """COCO-format caption JSON plus the folder holding its images."""

    name: str
    captions: str
    images: str
    # Image paths (file_name, after symlinks) must lie inside `images`; true reads them from anywhere.
    allow_outside_root: bool = False


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
    # Image paths must lie inside it (after symlinks); unset: the folder of the Parquet file holding the row.
    image_root: Optional[str] = None
    allow_outside_root: bool = False  # true: image paths may point anywhere


SourceSpec = Union[CocoSource, WebDatasetSource, ParquetSource]
_SOURCE_TYPES = {"coco": CocoSource, "webdataset": WebDatasetSource, "parquet": ParquetSource}
_PATH_FIELDS = {"captions", "images", "urls", "files", "image_root"}
_GLOB_FIELDS = {"urls", "files"}  # patterns; the other path fields name one file or folder
_BOOL_FIELDS = {"allow_outside_root"}


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
class ManagedServer:
    """A vLLM server the pipeline starts on each worker. `command` is the launch command up to the
    model, so the server may live in another environment (e.g. [.venv-vllm/bin/python, -m,
    vllm.entrypoints.openai.api_server]); `args` are extra server flags."""

    command: tuple[str, ...] = ("python", "-m", "vllm.entrypoints.openai.api_server")
    args: tuple[str, ...] = ()
    startup_timeout_s: float = 900.0
    # One server per worker machine, shared by its SDK processes (as Beam's own vLLM handler does);
    # false gives each process its own server.
    share_across_processes: bool = True


@dataclasses.dataclass(frozen=True)
class TranslatorConfig:
    """The LLM translator: a model served by vLLM, either at `endpoints` the user runs or `managed`."""

    model: str
    endpoints: tuple[str, ...] = ()
    managed: Optional[ManagedServer] = None
    batch_size: int = 64  # requests per batch, and per store part
    # Requests one server may hold at once, shared by every process and thread of a worker VM
    # (per endpoint URL, or the managed server). None: the managed server's --max-num-seqs (from
    # its args, or vLLM's default there), for endpoints 256 (transforms/admission.py).
    max_in_flight: Optional[int] = None
    request_timeout_s: float = 120.0
    max_attempts: int = 4  # per request, for HTTP errors and timeouts
    max_tokens_cap: int = 512
    retry_rejected: bool = False  # re-translate texts the store holds as rejected
    # The NAME of the environment variable holding the API key (OpenAI convention), never the key:
    # the client sends it, a managed server is started with it. None: no key ("EMPTY").
    api_key_env: Optional[str] = None
    # A Beam resource hint on the translate step alone when a `managed` server runs there, e.g.
    # "type:nvidia-l4;count:1;machine_type:g2-standard-8;install-nvidia-driver": on Dataflow only that
    # step runs on GPU workers (right fitting).
    accelerator: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class RunConfig:
    output: str
    sources: tuple[SourceSpec, ...]
    store: StoreConfig
    plan: CoveragePlan
    validation: ValidationRules = ValidationRules()
    translator: Optional[TranslatorConfig] = None

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, as written beside the shards."""
        out = {
            "output": self.output,
            "sources": [{"type": _type_name(s), **dataclasses.asdict(s)} for s in self.sources],
            "store": dataclasses.asdict(self.store),
            "plan": self.plan.to_dict(),
            "validation": dataclasses.asdict(self.validation),
        }
        if self.translator is not None:
            translator = json.loads(json.dumps(dataclasses.asdict(self.translator)))
            # Validation refuses secrets in the config; a config built in code is masked all the same.
            translator["endpoints"] = [redact(e) for e in translator["endpoints"]]
            if translator["managed"] is not None:
                translator["managed"]["command"] = redact_args(translator["managed"]["command"])
                translator["managed"]["args"] = redact_args(translator["managed"]["args"])
            out["translator"] = translator
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], base_dir: str = ".") -> "RunConfig":
        _refuse_unknown(raw, {"output", "sources", "store", "plan", "validation", "translator"}, "")
        output = _resolve(_required_str(raw, "output", ""), base_dir)
        sources_raw = raw.get("sources")
        if not isinstance(sources_raw, list) or not sources_raw:
            raise ConfigError("sources", "must be a non-empty list")
        sources = tuple(_source(s, f"sources[{i}]", base_dir) for i, s in enumerate(sources_raw))
        names = [s.name for s in sources]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"sources[{i}].name", f"{name!r} is used by another source")
        translator = _translator(raw["translator"], base_dir) if raw.get("translator") is not None else None
        store = _store(raw.get("store"), base_dir, translator)
        plan = CoveragePlan.from_dict(raw.get("plan"), "plan", resolve=lambda path: _resolve(path, base_dir))
        validation = _validation(raw.get("validation", {}))
        _refuse_overlaps(output, sources, store)
        return cls(output=output, sources=sources, store=store, plan=plan, validation=validation,
                   translator=translator)


def _static_root(path: str) -> str:
    """The folder or file a path or glob names before its first wildcard."""
    fixed = re.match(r"^[^*?\[{]*", path).group(0)
    return fixed if fixed == path else fixed.rsplit("/", 1)[0]


def _canonical(path: str) -> str:
    """Comparable form: URIs normalized as text, local paths with symlinks resolved."""
    if "://" in path:
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{posixpath.normpath(rest)}"
    return os.path.realpath(path)


def _overlap(a: str, b: str) -> bool:
    a, b = _canonical(a).rstrip("/"), _canonical(b).rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _refuse_overlaps(output: str, sources: tuple[SourceSpec, ...], store: StoreConfig) -> None:
    """An output must neither hold nor lie inside an input or the store: a build replaces what it
    finds in its output, so an input there could be taken for an earlier run's files."""
    inputs = [(f"sources[{i}].{f.name}", getattr(spec, f.name)) for i, spec in enumerate(sources)
              for f in dataclasses.fields(spec) if f.name in _PATH_FIELDS and getattr(spec, f.name)]
    for field, path in [*inputs, ("store.path", store.path)]:
        if _overlap(output, _static_root(path) if field.rsplit(".", 1)[-1] in _GLOB_FIELDS else path):
            raise ConfigError("output", f"{output} overlaps {field} ({path}): an output folder must not "
                                        "contain, or lie inside, an input or the store; choose another output")


def load_config(path: str, translator_overrides: Optional[Mapping[str, Any]] = None) -> RunConfig:
    """Read and validate a run config file; `translator_overrides` (from the command line) replace
    keys of its translator section before validation, so the fingerprint follows them."""
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, Mapping):
        raise ConfigError("(top level)", f"{path} does not hold a mapping")
    if translator_overrides:
        translator = dict(raw.get("translator") or {})
        translator.update(translator_overrides)
        if "endpoints" in translator_overrides:  # the command line picks the server: one or the other
            translator.pop("managed", None)
        if "managed" in translator_overrides:
            translator.pop("endpoints", None)
        raw = {**raw, "translator": translator}
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
        if f.name in _BOOL_FIELDS:
            if f.name in values and not isinstance(values[f.name], bool):
                raise ConfigError(f"{field}.{f.name}", f"must be true or false, got {values[f.name]!r}")
            continue
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


def _store(raw: Any, base_dir: str, translator: Optional[TranslatorConfig]) -> StoreConfig:
    """The fingerprint comes from the translator when one is configured; a stated one must match."""
    if not isinstance(raw, Mapping):
        raise ConfigError("store", "must be a mapping with path (and fingerprint, without a translator)")
    _refuse_unknown(raw, {"path", "fingerprint"}, "store")
    path = _resolve(_required_str(raw, "path", "store"), base_dir)
    if translator is None:
        return StoreConfig(path, _required_str(raw, "fingerprint", "store"))
    fingerprint = translator_fingerprint(translator.model, translator_sampling(translator))
    if raw.get("fingerprint") not in (None, fingerprint):
        raise ConfigError("store.fingerprint", f"{raw['fingerprint']!r} differs from the translator's "
                                               f"fingerprint {fingerprint!r}; drop it or fix the translator")
    return StoreConfig(path, fingerprint)


def translator_sampling(translator: TranslatorConfig) -> dict[str, Any]:
    """The sampling settings that shape outputs, and so belong in the fingerprint."""
    return {"temperature": 0.0, "stop": ["\n"], "max_tokens": f"16+len(text) capped at {translator.max_tokens_cap}"}


def _translator(raw: Any, base_dir: str) -> TranslatorConfig:
    field = "translator"
    if not isinstance(raw, Mapping):
        raise ConfigError(field, "must be a mapping")
    known = {f.name for f in dataclasses.fields(TranslatorConfig)} | {"concurrency"}
    _refuse_unknown(raw, known, field)
    model = _required_str(raw, "model", field)
    endpoints = raw.get("endpoints", [])
    if not isinstance(endpoints, list) or not all(isinstance(e, str) and "://" in e for e in endpoints):
        raise ConfigError(f"{field}.endpoints", "must be a list of URLs like http://host:8000/v1")
    for i, endpoint in enumerate(endpoints):
        if has_url_userinfo(endpoint):  # the message must not repeat the URL: it holds the password
            raise ConfigError(f"{field}.endpoints[{i}]", "holds a user name or password (user:pass@host); the "
                                                         "config is logged and copied beside the shards, so "
                                                         "put the key in an environment variable and give its "
                                                         "name in translator.api_key_env")
    api_key_env = raw.get("api_key_env")
    if api_key_env is not None and not valid_env_name(api_key_env):
        raise ConfigError(f"{field}.api_key_env", "must be the name of an environment variable holding the API "
                                                  "key (letters, digits, _), not the key itself")
    managed = None
    if raw.get("managed") is not None:
        managed = _managed(raw["managed"], base_dir)
    if bool(endpoints) == (managed is not None):
        raise ConfigError(f"{field}.endpoints", "give exactly one of endpoints (servers you run) and managed")
    # concurrency is max_in_flight's old name: its meaning, requests in flight per worker, is this one's
    if "concurrency" in raw and "max_in_flight" in raw:
        raise ConfigError(f"{field}.concurrency", "is the old name of max_in_flight; give only max_in_flight")
    in_flight_name = "concurrency" if "concurrency" in raw else "max_in_flight"
    numbers = {}
    for name in ("batch_size", "max_attempts", "max_tokens_cap", in_flight_name):
        value = raw.get(name, getattr(TranslatorConfig, name, None))
        if value is None and name == in_flight_name:
            continue  # max_in_flight unset: from the server (transforms/admission.py)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{field}.{name}", f"must be a positive integer, got {value!r}")
        numbers["max_in_flight" if name == in_flight_name else name] = value
    timeout = raw.get("request_timeout_s", TranslatorConfig.request_timeout_s)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"{field}.request_timeout_s", f"must be a positive number, got {timeout!r}")
    retry = raw.get("retry_rejected", False)
    if not isinstance(retry, bool):
        raise ConfigError(f"{field}.retry_rejected", "must be true or false")
    accelerator = raw.get("accelerator")
    if accelerator is not None and not (isinstance(accelerator, str) and "type:" in accelerator
                                        and "count:" in accelerator):
        raise ConfigError(f"{field}.accelerator", "must be a Dataflow accelerator hint like 'type:nvidia-l4;"
                                                  "count:1;machine_type:g2-standard-8;install-nvidia-driver'")
    if managed is not None and not managed.share_across_processes and _gpu_count(accelerator) == 1:
        raise ConfigError(f"{field}.managed.share_across_processes",
                          "is false, which starts one vLLM server per SDK process, but translator.accelerator "
                          "gives each worker one GPU: every process would load the model onto it; set it to true")
    if "://" not in model and not os.path.isabs(model) and os.path.exists(os.path.join(base_dir, model)):
        model = os.path.normpath(os.path.join(base_dir, model))
    return TranslatorConfig(model=model, endpoints=tuple(e.rstrip("/") for e in endpoints), managed=managed,
                            request_timeout_s=float(timeout), retry_rejected=retry, api_key_env=api_key_env,
                            accelerator=accelerator, **numbers)


def _gpu_count(accelerator: Optional[str]) -> Optional[int]:
    """The `count:N` of a Dataflow accelerator hint; None without a hint or a readable count."""
    match = re.search(r"(?:^|;)\s*count:\s*(\d+)", accelerator or "")
    return int(match.group(1)) if match else None


def _managed(raw: Any, base_dir: str) -> ManagedServer:
    field = "translator.managed"
    if not isinstance(raw, Mapping):
        raise ConfigError(field, "must be a mapping")
    _refuse_unknown(raw, {f.name for f in dataclasses.fields(ManagedServer)}, field)
    for name in ("command", "args"):
        value = raw.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
            raise ConfigError(f"{field}.{name}", "must be a list of strings")
    for name in ("command", "args"):
        if api_key_flag_in([str(a) for a in raw.get(name, [])]):
            raise ConfigError(f"{field}.{name}", "must not hold --api-key: the config is logged and copied beside "
                                                 "the shards; put the key in an environment variable and give its "
                                                 "name in translator.api_key_env (the server is started with it)")
    command = [str(c) for c in raw.get("command", ManagedServer.command)]
    if not command:
        raise ConfigError(f"{field}.command", "must not be empty")
    if "/" in command[0] and not os.path.isabs(command[0]):
        command[0] = os.path.normpath(os.path.join(base_dir, command[0]))
    timeout = raw.get("startup_timeout_s", ManagedServer.startup_timeout_s)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"{field}.startup_timeout_s", "must be a positive number")
    share = raw.get("share_across_processes", True)
    if not isinstance(share, bool):
        raise ConfigError(f"{field}.share_across_processes", "must be true or false")
    return ManagedServer(command=tuple(command), args=tuple(str(a) for a in raw.get("args", [])),
                         startup_timeout_s=float(timeout), share_across_processes=share)


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
