"""The run config (YAML): sources, validation rules, translation store, coverage plan, output.

Declared as pydantic dataclasses (schemas/contract.py): types, ranges, allowed values and unknown keys
are checked by the library, and a refused config names the field. Relative paths resolve against the
config file's folder, so a config means the same thing from any working directory; URIs with a
scheme (gs://, s3://) are kept as they are.
"""
from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
from typing import Annotated, Any, ClassVar, Literal, Mapping, Optional, Union

import yaml
from pydantic import AfterValidator, Field, StrictFloat, StrictInt, StrictStr, ValidationInfo, model_validator

from schemas.bitext import BitextConfig, check_bitext_plan
from schemas.contract import (Bool, NonNegativeInt, Path, PositiveFloat, PositiveInt, Text, config_model,
                              described, resolve_path, validate_config)
from schemas.coverage import CoveragePlan
from schemas.errors import ConfigError
from schemas.layout import RESIZE_MODES, RESIZE_SQUARE
from schemas.prompts import CONTEXT_FORMAT, RequestTemplate
from schemas.recaption_prompts import (DEFAULT_ANSWER_PREFIX, DEFAULT_MODEL, DEFAULT_PROMPT,
                                        DescriptionTemplate)
from schemas.secrets import api_key_flag_in, has_url_userinfo, redact, redact_args, valid_env_name

SourceName = Annotated[str, Field(strict=True, pattern=r"^[a-z0-9][a-z0-9-]{0,31}$"),
                       described("1-32 characters of a-z, 0-9 and '-' (it prefixes sample keys)")]
# How a source's captions become caption samples (transforms/caption_styles.py): `short` keeps each
# one whole as a <CAPTION> (human captions such as COCO's); `by_sentences` splits each into its first
# sentence (<CAPTION>) and, with 2 or 3+ sentences, the whole text (<DETAILED_CAPTION> or
# <MORE_DETAILED_CAPTION>), as the paper does for long web and model-written captions.
CaptionStyle = Literal["short", "by_sentences"]


@config_model
class CocoSource:
    """COCO-format caption JSON plus the folder holding its images."""

    name: SourceName
    captions: Path
    images: Path
    # Image paths (file_name, after symlinks) must lie inside `images`; true reads them from anywhere.
    allow_outside_root: Bool = False
    caption_style: CaptionStyle = "short"
    type: Literal["coco"] = "coco"


@config_model
class WebDatasetSource:
    """Tars as img2dataset writes them: <key>.jpg plus <key>.txt or <key>.json with a caption field."""

    name: SourceName
    urls: Path  # a glob, e.g. data/{shards}/*.tar or gs://bucket/x/*.tar
    # "txt", or "json:<field>" (the field may hold a string or a list)
    caption: Annotated[str, Field(strict=True, pattern=r"^(txt|json:.+)$"), described("'txt' or 'json:<field>'")] = "txt"
    caption_style: CaptionStyle = "short"
    type: Literal["webdataset"] = "webdataset"


@config_model
class ParquetSource:
    """Parquet rows with an id, caption(s), and image bytes or an image path."""

    name: SourceName
    files: Path  # a glob
    id_column: Text = "key"
    caption_column: Text = "caption"  # string or list<string>
    image_column: Optional[Text] = None  # binary
    image_path_column: Optional[Text] = None  # relative paths resolve against image_root
    # Image paths must lie inside it (after symlinks); unset: the folder of the Parquet file holding the row.
    image_root: Optional[Path] = None
    allow_outside_root: Bool = False  # true: image paths may point anywhere
    caption_style: CaptionStyle = "short"
    type: Literal["parquet"] = "parquet"

    @model_validator(mode="after")
    def _one_image_column(self) -> "ParquetSource":
        if (self.image_column is None) == (self.image_path_column is None):
            raise ConfigError("image_column", "give exactly one of image_column and image_path_column")
        return self


SourceSpec = Union[CocoSource, WebDatasetSource, ParquetSource]
_PATH_FIELDS = {"captions", "images", "urls", "files", "image_root"}
_GLOB_FIELDS = {"urls", "files"}  # patterns; the other path fields name one file or folder


@config_model
class ValidationRules:
    """What an image and a caption must satisfy; the caption default is the paper's >25 characters."""

    min_side: NonNegativeInt = 32
    max_pixels: NonNegativeInt = 50_000_000
    min_caption_chars: NonNegativeInt = 26
    max_caption_chars: NonNegativeInt = 1000

    @model_validator(mode="after")
    def _ordered(self) -> "ValidationRules":
        if self.min_caption_chars > self.max_caption_chars:
            raise ConfigError("min_caption_chars", "is larger than max_caption_chars")
        return self


@config_model
class ResizedImages:
    """A copy of every image resized at build time, beside the original (img2dataset's image_size,
    resize_mode, encode quality), so the training loader decodes a small JPEG instead of resizing a
    full-size one per sample. Written by the shard writer as `<key>.224.jpg` (schemas/layout.py), upright
    RGB as the loader converts (transforms/image_pixels.py), byte-identical on every rebuild. `square`
    stretches to image_size x image_size ignoring the aspect: Florence-2's resize, the mode the loader
    reads (model/data.py). keep_original false: the shards hold the copy alone (smaller; a loader at
    another resolution has nothing to resize from)."""

    image_size: Annotated[int, Field(strict=True, ge=16, le=4096), described("an integer from 16 to 4096")] = 224
    resize_mode: Literal[RESIZE_MODES] = RESIZE_SQUARE
    quality: Annotated[int, Field(strict=True, ge=1, le=100), described("an integer from 1 to 100")] = 95
    keep_original: Bool = True


@config_model
class StoreConfig:
    """The append-only translation store and which translator's entries to use: with a translator,
    the fingerprint is its request's (schemas/prompts.py), and a stated one must match it."""

    path: Path
    fingerprint: Optional[Text] = None


def _no_key_flag(args: tuple[str, ...]) -> tuple[str, ...]:
    if api_key_flag_in(args):
        raise ValueError("must not hold --api-key: the config is logged and copied beside the shards; put the key "
                         "in an environment variable and give its name in translator.api_key_env (the server is "
                         "started with it)")
    return args


def _local_program(command: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
    """A program given by a relative path (`.venv-vllm/bin/python`) resolves like the config's paths."""
    return (resolve_path(command[0], info), *command[1:]) if "/" in command[0] else command


# Server flags: YAML numbers (--max-num-seqs 64) are passed as text; secrets are never echoed back.
ServerArg = Annotated[Union[StrictStr, StrictInt, StrictFloat], described("a string", show_input=False),
                      AfterValidator(str)]
ServerArgs = Annotated[tuple[ServerArg, ...], AfterValidator(_no_key_flag)]


@config_model
class ManagedServer:
    """A vLLM server the pipeline starts on each worker. `command` is the launch command up to the
    model, so the server may live in another environment (e.g. [.venv-vllm/bin/python, -m,
    vllm.entrypoints.openai.api_server]); `args` are extra server flags."""

    command: Annotated[tuple[ServerArg, ...], Field(min_length=1), AfterValidator(_no_key_flag),
                       AfterValidator(_local_program)] = (
        "python", "-m", "vllm.entrypoints.openai.api_server")
    args: ServerArgs = ()
    startup_timeout_s: PositiveFloat = 900.0
    # One server per worker machine, shared by its SDK processes (as Beam's own vLLM handler does);
    # false gives each process its own server.
    share_across_processes: Bool = True


def _endpoint(url: str) -> str:
    if "://" not in url:
        raise ValueError("must be a URL like http://host:8000/v1")
    if has_url_userinfo(url):  # the message must not repeat the URL: it holds the password
        raise ValueError("holds a user name or password (user:pass@host); the config is logged and copied beside "
                         "the shards, so put the key in an environment variable and give its name in "
                         "translator.api_key_env")
    return url.rstrip("/")


def _env_name(name: str) -> str:
    if not valid_env_name(name):
        raise ValueError("must be the name of an environment variable holding the API key (letters, digits, _), "
                         "not the key itself")
    return name


def _accelerator(hint: str) -> str:
    if "type:" not in hint or "count:" not in hint:
        raise ValueError("must be a Dataflow accelerator hint like 'type:nvidia-l4;count:1;"
                         "machine_type:g2-standard-8;install-nvidia-driver'")
    return hint


def _local_model(model: str, info: ValidationInfo) -> str:
    """A model folder given relative to the config resolves against it; a hub id stays as it is."""
    local = resolve_path(model, info)
    return local if os.path.exists(local) else model


Endpoint = Annotated[str, Field(strict=True), described("a URL like http://host:8000/v1", show_input=False),
                     AfterValidator(_endpoint)]


@config_model
class ServedModel:
    """A model served by vLLM, either at `endpoints` the user runs or `managed` (started on each
    worker): what the translator and the recaption VLM share (transforms/dispatcher.py serves both)."""

    model: Annotated[Text, AfterValidator(_local_model)]
    endpoints: tuple[Endpoint, ...] = ()
    managed: Optional[ManagedServer] = None
    batch_size: PositiveInt = 64  # requests per batch, and per store part
    # Requests one server may hold at once, shared by every process and thread of a worker VM
    # (per endpoint URL, or the managed server). None: the managed server's --max-num-seqs (from
    # its args, or vLLM's default there), for endpoints 256 (transforms/admission.py).
    # `concurrency` is its old name.
    max_in_flight: Optional[PositiveInt] = None
    request_timeout_s: PositiveFloat = 120.0
    max_attempts: PositiveInt = 4  # per request, for HTTP errors and timeouts
    # The NAME of the environment variable holding the API key (OpenAI convention), never the key:
    # the client sends it, a managed server is started with it. None: no key ("EMPTY").
    api_key_env: Optional[Annotated[str, Field(strict=True), AfterValidator(_env_name)]] = None
    # A Beam resource hint on the step that asks the model alone when a `managed` server runs there, e.g.
    # "type:nvidia-l4;count:1;machine_type:g2-standard-8;install-nvidia-driver": on Dataflow only that
    # step runs on GPU workers (right fitting).
    accelerator: Optional[Annotated[str, Field(strict=True), AfterValidator(_accelerator)]] = None

    SECTION: ClassVar[str] = "served model"  # the config section, in messages

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, raw: Any) -> Any:
        """`concurrency` is max_in_flight's old name: its meaning, requests in flight per worker, is this one's."""
        if not isinstance(raw, Mapping) or "concurrency" not in raw:
            return raw
        if "max_in_flight" in raw:
            raise ConfigError("concurrency", "is the old name of max_in_flight; give only max_in_flight")
        return {**{k: v for k, v in raw.items() if k != "concurrency"}, "max_in_flight": raw["concurrency"]}

    @model_validator(mode="after")
    def _one_server(self) -> "ServedModel":
        if bool(self.endpoints) == (self.managed is not None):
            raise ConfigError("endpoints", "give exactly one of endpoints (servers you run) and managed")
        if self.managed is not None and not self.managed.share_across_processes and _gpu_count(self.accelerator) == 1:
            raise ConfigError("managed.share_across_processes",
                              f"is false, which starts one vLLM server per SDK process, but {self.SECTION}.accelerator "
                              "gives each worker one GPU: every process would load the model onto it; set it to true")
        return self


@config_model
class TranslatorConfig(ServedModel):
    """The LLM translator."""

    max_tokens_cap: PositiveInt = 512
    retry_rejected: Bool = False  # re-translate texts the store holds as rejected
    # Context-enhanced translation: send each request's context (an image's description, another of its
    # captions) as "{caption} ### ({context})" (schemas/prompts.py). Its own fingerprint and store keys.
    context: Bool = False

    SECTION: ClassVar[str] = "translator"

    @property
    def request(self) -> RequestTemplate:
        """What every request sends, and so the store fingerprint (schemas/prompts.py)."""
        return RequestTemplate(model=self.model, max_tokens_cap=self.max_tokens_cap,
                               context_format=CONTEXT_FORMAT if self.context else "")


@config_model
class DescriptionChecks:
    """Bounds of the checks on a VLM description (transforms/description_checks.py)."""

    min_words: PositiveInt = 5
    max_chars: PositiveInt = 2000
    max_compression_ratio: PositiveFloat = 2.6  # zlib: a repetition loop compresses far better than prose
    max_consecutive_repeats: PositiveInt = 3  # the same word n-gram this many times in a row


@config_model
class RecaptionConfig(ServedModel):
    """The recaption stage: a VLM writes a detailed English description of each distinct image into
    the description store (`store`), once per request fingerprint. Defaults: the paper's fine-tuning
    set (schemas/recaption_prompts.py); a prompt holding {caption} gets the source's first caption."""

    model: Annotated[Text, AfterValidator(_local_model)] = DEFAULT_MODEL
    store: Optional[Path] = None  # the description store; required (checked by RunConfig)
    batch_size: PositiveInt = 16  # images per batch, and per store part
    prompt: Text = DEFAULT_PROMPT
    answer_prefix: str = DEFAULT_ANSWER_PREFIX  # "" sends no assistant turn to continue
    max_tokens: PositiveInt = 64
    temperature: Annotated[float, Field(strict=True, ge=0), described("a non-negative number")] = 0.0
    image_max_side: PositiveInt = 768  # resized to fit (never enlarged), sent as a JPEG data URL
    jpeg_quality: Annotated[int, Field(strict=True, ge=1, le=95), described("an integer from 1 to 95")] = 90
    checks: DescriptionChecks = DescriptionChecks()
    # true: `build` and `run` add each image's accepted description to its sample as an English caption
    # styled by sentences (<CAPTION>, <DETAILED_CAPTION>, <MORE_DETAILED_CAPTION>), translated like
    # its captions; false: the store is only filled (and read for translator.context).
    use_in_shards: Bool = False

    SECTION: ClassVar[str] = "recaption"

    @property
    def request(self) -> DescriptionTemplate:
        """What every request sends, and so the description store's fingerprint."""
        return DescriptionTemplate(model=self.model, prompt=self.prompt, answer_prefix=self.answer_prefix,
                                   max_tokens=self.max_tokens, temperature=self.temperature,
                                   image_max_side=self.image_max_side, jpeg_quality=self.jpeg_quality)


Source = Annotated[SourceSpec, Field(discriminator="type")]


@config_model
class RunConfig:
    output: Path
    sources: Annotated[tuple[Source, ...], Field(min_length=1)]
    store: StoreConfig
    plan: CoveragePlan
    validation: ValidationRules = ValidationRules()
    translator: Optional[TranslatorConfig] = None
    bitext: Optional[BitextConfig] = None  # parallel sentences matched to the images (schemas/bitext.py)
    # present: `recaption` describes the sources' images, and `run` does too before it builds
    recaption: Optional[RecaptionConfig] = None
    resized: Optional[ResizedImages] = None  # present: the shards also hold a resized copy of each image

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        names = [s.name for s in self.sources]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"sources[{i}].name", f"{name!r} is used by another source")
        if self.translator is None and self.store.fingerprint is None:
            raise ConfigError("store.fingerprint", "is required without a translator (which entries to read)")
        if self.translator is not None:
            fingerprint = self.translator.request.fingerprint
            if self.store.fingerprint not in (None, fingerprint):
                raise ConfigError("store.fingerprint", f"{self.store.fingerprint!r} differs from the translator's "
                                                       f"fingerprint {fingerprint!r}; drop it or fix the translator")
            # Derived, never stated twice: the frozen instance is completed during its own validation.
            object.__setattr__(self, "store", StoreConfig(self.store.path, fingerprint))
        if self.recaption is not None and self.recaption.store is None:
            raise ConfigError("recaption.store", "is required: the folder of the description store")
        if self.translator is not None and self.translator.context and self.recaption is None:
            raise ConfigError("translator.context", "is true, but the config has no recaption section: the "
                                                    "context of an image's captions is its description, read "
                                                    "from recaption.store; add the section or set it to false")
        _refuse_overlaps(self.output, self.sources, self.store)
        if self.recaption is not None:
            _refuse_overlaps(self.output, (), StoreConfig(self.recaption.store), "recaption.store")
        check_bitext_plan(self.plan, self.bitext)
        return self

    @property
    def uses_descriptions(self) -> bool:
        """Whether the build joins each image to its description: to put it in the shards, or to send
        it as its captions' context."""
        return self.recaption is not None and (
            self.recaption.use_in_shards or (self.translator is not None and self.translator.context))

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, as written beside the shards."""
        out = {
            "output": self.output,
            "sources": [dataclasses.asdict(s) for s in self.sources],
            "store": dataclasses.asdict(self.store),
            "plan": self.plan.to_dict(),
            "validation": dataclasses.asdict(self.validation),
        }
        for name in ("translator", "recaption"):
            if getattr(self, name) is not None:
                out[name] = _served_dict(getattr(self, name))
        for name in ("bitext", "resized"):
            if getattr(self, name) is not None:
                out[name] = dataclasses.asdict(getattr(self, name))
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], base_dir: str = ".") -> "RunConfig":
        """Validate a config mapping (from YAML); relative paths resolve against `base_dir`."""
        return validate_config(cls, raw, "", base_dir)


def _served_dict(served: ServedModel) -> dict[str, Any]:
    """A served model's section as written beside the shards. Validation refuses secrets in the config;
    a config built in code is masked all the same."""
    out = json.loads(json.dumps(dataclasses.asdict(served)))
    out["endpoints"] = [redact(e) for e in out["endpoints"]]
    if out["managed"] is not None:
        out["managed"]["command"] = redact_args(out["managed"]["command"])
        out["managed"]["args"] = redact_args(out["managed"]["args"])
    return out


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


def _refuse_overlaps(output: str, sources: tuple[SourceSpec, ...], store: StoreConfig,
                     store_field: str = "store.path") -> None:
    """An output must neither hold nor lie inside an input or the store: a build replaces what it
    finds in its output, so an input there could be taken for an earlier run's files."""
    inputs = [(f"sources[{i}].{f.name}", getattr(spec, f.name)) for i, spec in enumerate(sources)
              for f in dataclasses.fields(spec) if f.name in _PATH_FIELDS and getattr(spec, f.name)]
    for field, path in [*inputs, (store_field, store.path)]:
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


def _gpu_count(accelerator: Optional[str]) -> Optional[int]:
    """The `count:N` of a Dataflow accelerator hint; None without a hint or a readable count."""
    match = re.search(r"(?:^|;)\s*count:\s*(\d+)", accelerator or "")
    return int(match.group(1)) if match else None
