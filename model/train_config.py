"""The training run config (YAML): data, model, optimisation, run. Unknown or mistyped fields are refused
with the field's dotted name, like the pipeline's config."""
from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any, Mapping, Optional, Union

import yaml

from schemas.errors import ConfigError

PRECISIONS = ("bf16", "fp32")
STRATEGIES = ("auto", "ddp", "fsdp")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    output: str  # a pipeline output folder (train/, eval/, stats.json, config.yaml); local or gs://
    image_size: int = 224
    batch_size: int = 8  # per process and micro-step
    workers: int = 2
    balance: Union[str, dict] = "uniform"  # "uniform" over task-language keys, "natural", or {key: weight}
    shuffle_buffer: int = 256
    max_prompt_tokens: int = 128
    max_target_tokens: int = 64
    decoder_prefix: bool = False
    eval_images: int = 256  # eval images read per evaluation (all their annotations)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    size: str = "tiny"  # florenz-0.4b | florenz-1.0b | florenz-3.5b | florenz-11.2b | tiny | tiny-gemma
    init: str = "random"  # random | pretrained (florence/gemma checkpoints) | a Florenz checkpoint folder
    florence: Optional[str] = None  # hub id or folder; default: the size's checkpoint
    gemma: Optional[str] = None
    encoder_tokenizer: str = "florence-community/Florence-2-base"
    decoder_tokenizer: str = "google/gemma-2-2b"


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    steps: int = 1000
    lr: float = 1e-4
    min_lr_ratio: float = 0.0
    warmup_steps: int = 100
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    grad_accum: int = 1
    clip: float = 1.0


@dataclasses.dataclass(frozen=True)
class RunSettings:
    out: str
    seed: int = 0
    precision: str = "bf16"
    strategy: str = "auto"  # auto: DDP for the Florence-2 decoder sizes, FSDP for the Gemma-2 ones
    log_every: int = 10
    eval_every: int = 250
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig
    run: RunSettings


def _build(cls: type, raw: Any, field: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(field, "must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in known:
            raise ConfigError(f"{field}.{name}", f"unknown field (known: {sorted(known)})")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            if f.default is dataclasses.MISSING:
                raise ConfigError(f"{field}.{f.name}", "is required")
            continue
        values[f.name] = _check(raw[f.name], hints[f.name], f"{field}.{f.name}")
    return cls(**values)


def _check(value: Any, hint: Any, field: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, field)
    options = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
        if option is int and isinstance(value, bool):
            continue
        if isinstance(option, type) and isinstance(value, option):
            return value
    raise ConfigError(field, f"must be {' or '.join(getattr(o, '__name__', str(o)) for o in options)}, "
                             f"got {value!r}")


def train_config_from_dict(raw: Mapping[str, Any], base_dir: str = ".") -> TrainConfig:
    config = _build(TrainConfig, raw, "train")
    if config.run.precision not in PRECISIONS:
        raise ConfigError("train.run.precision", f"must be one of {PRECISIONS}")
    if config.run.strategy not in STRATEGIES:
        raise ConfigError("train.run.strategy", f"must be one of {STRATEGIES}")
    if config.data.image_size % 32:
        raise ConfigError("train.data.image_size", "must be a multiple of 32 (224 or 768 in the paper)")
    for name in ("steps", "grad_accum", "batch_size"):
        section = config.optim if hasattr(config.optim, name) else config.data
        if getattr(section, name) < 1:
            raise ConfigError(f"train.{'optim' if section is config.optim else 'data'}.{name}", "must be >= 1")
    resolve = lambda p: p if "://" in p or os.path.isabs(p) else os.path.normpath(os.path.join(base_dir, p))
    model = config.model
    if model.init not in ("random", "pretrained"):  # a Florenz checkpoint folder
        model = dataclasses.replace(model, init=resolve(model.init))
    return dataclasses.replace(config, data=dataclasses.replace(config.data, output=resolve(config.data.output)),
                               run=dataclasses.replace(config.run, out=resolve(config.run.out)), model=model)


def load_train_config(path: str) -> TrainConfig:
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    return train_config_from_dict(raw, base_dir=os.path.dirname(os.path.abspath(path)))
