"""The training run config (YAML): data, model, optimisation, run. Declared with the pipeline config's
contract (schemas/contract.py): unknown or mistyped fields, sizes model/sizes.py does not build and
balance modes the sampler does not know are refused with the field's dotted name (`train.model.size`)
and what is allowed."""
from __future__ import annotations

import os
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, Field, ValidationInfo, model_validator

from model.configuration import LAYERED_PARTS, PAPER_PARTS, PARTS
from model.prompts import DECODER_STARTS
from model.sizes import PRETRAINED, SIZES, decoder_kind
from schemas.contract import (Bool, Language, NonNegativeFloat, NonNegativeInt, Path, PositiveFloat, PositiveInt,
                              Text, config_model, described, resolve_path, validate_config)
from schemas.errors import ConfigError
from schemas.records import TASKS

PRECISIONS = ("bf16", "fp32")
STRATEGIES = ("auto", "ddp", "fsdp")
BALANCE_MODES = ("uniform", "natural")  # model/data.py AnnotationSampler.from_setting


def _some_weight(balance: Union[str, dict[str, float]]) -> Union[str, dict[str, float]]:
    if isinstance(balance, dict) and not any(balance.values()):
        raise ValueError("gives no task-language key a weight above 0: nothing would be drawn")
    return balance


TaskLanguageKey = Annotated[str, Field(strict=True, pattern=rf"^({'|'.join(TASKS)})-[a-z]{{2}}$")]
# "uniform" over task-language keys (the paper), "natural", or explicit {key: weight} (keys left out are never drawn)
Weights = Annotated[dict[TaskLanguageKey, NonNegativeFloat], Field(json_schema_extra={"additionalProperties": False})]
Balance = Annotated[Union[Literal[BALANCE_MODES], Weights],
                    described(f"one of {', '.join(repr(m) for m in BALANCE_MODES)}, or a mapping of task-language "
                              "keys (caption-de, translation-fr) to weights >= 0"),
                    AfterValidator(_some_weight)]
ImageSize = Annotated[int, Field(strict=True, ge=32, multiple_of=32),
                      described("a multiple of 32 (224 or 768 in the paper)")]
Unit = Annotated[float, Field(strict=True, ge=0, le=1), described("a number in [0, 1]")]
Beta = Annotated[float, Field(strict=True, ge=0, lt=1), described("a number in [0, 1)")]


def _distinct(parts: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(parts)) != len(parts):
        raise ValueError(f"names a part twice: {list(parts)}")
    return parts


Part = Literal[PARTS]  # model/configuration.py; FlorenzModel.part_of says which parameters each holds
Parts = Annotated[tuple[Part, ...], Field(min_length=1), AfterValidator(_distinct)]


def _checkpoint_folder(init: str, info: ValidationInfo) -> str:
    """random | pretrained, or a Florenz checkpoint folder (resolved like the config's paths)."""
    return init if init in ("random", "pretrained") else resolve_path(init, info)


def loader_cores() -> int:
    """The cores this process may run on (its CPU affinity), shared among the processes torchrun starts
    on this node (LOCAL_WORLD_SIZE): the default number of loader workers, at least 1."""
    return max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


@config_model
class DataConfig:
    output: Path  # a pipeline output folder (train/, eval/, stats.json, config.yaml); local or gs://
    image_size: ImageSize = 224
    batch_size: PositiveInt = 8  # per process and micro-step
    # DataLoader worker processes; default: loader_cores(), resolved when the config is made, so resume
    # checks compare a number (a run resumed on other cores sets it to the number it was written with)
    workers: NonNegativeInt = Field(default_factory=loader_cores)
    balance: Balance = "uniform"
    shuffle_buffer: PositiveInt = 256
    max_prompt_tokens: PositiveInt = 128
    max_target_tokens: PositiveInt = 64
    decoder_prefix: Bool = False
    eval_images: NonNegativeInt = 256  # eval images read per evaluation (all their annotations)
    # bos: the decoder starts from [bos]; eos_bos: from [eos] and bos is scored (the official code). model/data.py
    decoder_start: Literal[DECODER_STARTS] = "bos"


@config_model
class ModelConfig:
    size: Literal[SIZES] = "tiny"  # model/sizes.py
    # random | pretrained (florence/gemma checkpoints) | a Florenz checkpoint folder
    init: Annotated[Text, AfterValidator(_checkpoint_folder)] = "random"
    florence: Optional[Text] = None  # hub id or folder; default: the size's checkpoint
    gemma: Optional[Text] = None
    encoder_tokenizer: Text = "florence-community/Florence-2-base"
    decoder_tokenizer: Text = "google/gemma-2-2b"

    @model_validator(mode="after")
    def _checkpoints_known(self) -> "ModelConfig":
        if self.init == "pretrained" and self.florence is None and self.size not in PRETRAINED:
            raise ConfigError("florence", f"size {self.size!r} has no default checkpoints: set model.florence "
                                          f"(and model.gemma), or use a size of {', '.join(PRETRAINED)}")
        return self


@config_model
class OptimConfig:
    steps: PositiveInt = 1000
    lr: PositiveFloat = 1e-4
    min_lr_ratio: Unit = 0.0
    warmup_steps: NonNegativeInt = 100
    weight_decay: NonNegativeFloat = 0.01
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    grad_accum: PositiveInt = 1
    clip: PositiveFloat = 1.0


@config_model
class RunSettings:
    out: Path
    seed: NonNegativeInt = 0
    precision: Literal[PRECISIONS] = "bf16"
    # auto: DDP for the Florence-2 decoder sizes and under scheduled unfreezing, FSDP for the Gemma-2 ones
    strategy: Literal[STRATEGIES] = "auto"
    log_every: PositiveInt = 10
    eval_every: PositiveInt = 250
    checkpoint_every: PositiveInt = 250
    keep_checkpoints: PositiveInt = 2
    progress: Bool = True
    # torch.compile each encoder/decoder layer, the vision tower and the loss; batches padded to power-of-two
    # lengths (model/step.py compile_regions)
    compile: Bool = False


TestSetName = Annotated[str, Field(strict=True, pattern=r"^[a-z][a-z0-9_]*$"),
                        described("a lower-case name of letters, digits and _ (a metric's name: loss/<name>)")]


@config_model
class TestSet:
    task: Literal[TASKS]
    languages: Annotated[list[Language], Field(min_length=1)]


@config_model
class EvalConfig:
    """What evaluation measures and how (model/eval_loss.py, model/evaluate.py)."""
    # name -> (task, languages); unset: seen_caption, seen_translation, unseen_caption from the data's plan.
    # The paper: unseen_caption = caption es+zh, seen_translation = translation es+zh, seen_caption = caption en+de
    test_sets: Optional[Annotated[dict[TestSetName, TestSet], Field(min_length=1)]] = None
    loss_prefix: Bool = False  # eval loss with the decoder prefix given (not scored); the paper's: without
    generate_prefix: Bool = False  # florenz-eval starts captions with the prefix (the official eval.py --use_prefix)
    max_target_tokens: PositiveInt = 1024  # target tokens scored; the official src/eval_loss.py's 1024


@config_model
class UnfreezeSchedule:
    """Scheduled unfreezing (SUF): the layers of `parts` start frozen and unfreeze from the top of the
    network down (the decoder's top layer first, the encoder's bottom layer and embeddings last),
    `layers_per_stage` more at the start of every `steps_per_stage` steps (model/unfreeze.py)."""
    steps_per_stage: PositiveInt
    parts: Parts = ("encoder",)
    layers_per_stage: PositiveInt = 1

    @model_validator(mode="after")
    def _layered(self) -> "UnfreezeSchedule":
        for i, part in enumerate(self.parts):
            if part not in LAYERED_PARTS:
                raise ConfigError(f"parts[{i}]", f"{part!r} has no layers to unfreeze; layered parts: "
                                                 f"{', '.join(LAYERED_PARTS)}")
        return self


@config_model
class TrainableConfig:
    """The freezing policy: which parts train ("paper": the paper's for the model's decoder family,
    configuration.PAPER_PARTS), and optionally scheduled unfreezing of some of them (off: null)."""
    parts: Annotated[Union[Literal["paper"], Parts],
                     described(f"'paper', or a non-empty list of distinct parts of {', '.join(PARTS)}")] = "paper"
    unfreeze: Optional[UnfreezeSchedule] = None

    def parts_for(self, kind: str) -> tuple[str, ...]:
        """The parts that train, for a model whose decoder family is `kind`."""
        return PAPER_PARTS[kind] if self.parts == "paper" else self.parts


@config_model
class TrainConfig:
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig
    run: RunSettings
    trainable: TrainableConfig = Field(default_factory=TrainableConfig)
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _schedule_trains(self) -> "TrainConfig":
        """Only a part that trains can be unfrozen by the schedule, and only under DDP or one process
        (a trainable set that changes under FSDP is untested: see README)."""
        schedule = self.trainable.unfreeze
        if schedule and self.run.strategy == "fsdp":
            raise ConfigError("trainable.unfreeze", "needs run.strategy ddp or auto (DDP then); scheduled "
                                                    "unfreezing under FSDP is untested")
        parts = self.trainable.parts_for(decoder_kind(self.model.size))
        for i, part in enumerate(schedule.parts if schedule else ()):
            if part not in parts:
                policy = f"the paper's freezing for {self.model.size}" if self.trainable.parts == "paper" else "trainable.parts"
                raise ConfigError(f"trainable.unfreeze.parts[{i}]", f"{part!r} does not train under {policy} "
                                                                   f"({', '.join(parts)})")
        return self


def train_config_from_dict(raw: object, base_dir: str = ".") -> TrainConfig:
    """Validate a training config mapping; relative paths resolve against `base_dir`; refusals name
    the field under `train.`."""
    return validate_config(TrainConfig, raw, "train", base_dir)


def load_train_config(path: str) -> TrainConfig:
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    return train_config_from_dict(raw, base_dir=os.path.dirname(os.path.abspath(path)))
