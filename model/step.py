"""One optimizer step of Florenz training, shared by model/train.py and benchmarks/train_throughput.py.

Why one function: the benchmark measures exactly the step that trains. The step never waits for the
GPU: the loss comes back as a detached device tensor, to be read (.item(), a host sync) only when it is
logged; the labelled positions the loss needs are found on the CPU batch (`to_device`), not on the GPU.
Gradient all-reduce happens on the last micro-step only (DDP's no_sync, FSDP2's
set_requires_gradient_sync). Under `run.compile` the repeated blocks, the vision tower and the loss are
compiled (`compile_regions`) and batches padded to bucketed lengths (`bucketed`), so a handful of shapes,
not one per batch, get compiled.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, ContextManager, Iterator, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from model.losses import IGNORE_INDEX, labelled_positions
from model.modeling import FlorenzModel

MIN_BUCKET = 8  # shortest padded length: lengths pad to the next power of two from here


@dataclasses.dataclass
class StepResult:
    loss: torch.Tensor  # mean loss per labelled token, summed over micro-steps / accumulation: detached, on device
    grad_norm: torch.Tensor  # before clipping, on device


def gradient_sync(wrapped: Callable, sync: bool) -> ContextManager:
    """A context in which backward all-reduces gradients (sync) or only accumulates them: DDP's no_sync,
    FSDP2's set_requires_gradient_sync (reduce-scatter skipped), nothing on one process."""
    if isinstance(wrapped, DistributedDataParallel):
        return contextlib.nullcontext() if sync else wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):  # torch.distributed.fsdp.FSDPModule
        wrapped.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def to_device(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """The model's inputs of a collated CPU batch on `device`, with the labelled positions found on the
    CPU (the loss gathers those rows; finding them on the GPU would wait for it)."""
    inputs = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    inputs["label_positions"] = labelled_positions(inputs["labels"])
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}


def train_step(wrapped: Callable[..., torch.Tensor], model: FlorenzModel, optimizer: torch.optim.Optimizer,
               scheduler: Optional[torch.optim.lr_scheduler.LRScheduler], micro_batches: Iterator[dict],
               accumulation: int, clip: float, autocast: Callable[[], ContextManager]) -> StepResult:
    """`accumulation` micro-steps over `micro_batches` (device inputs, see to_device), then clip, optimizer
    and scheduler step, zero_grad(set_to_none). `wrapped` runs forward to the mean loss: the model, its
    DDP/FSDP wrapper, or (the benchmark's "before") another loss over it."""
    loss_sum = None
    for micro in range(accumulation):
        inputs = next(micro_batches)
        with gradient_sync(wrapped, micro == accumulation - 1), autocast():
            loss = wrapped(**inputs) / accumulation
        loss.backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_sum, grad_norm)


def compile_regions(model: FlorenzModel, backend: str = "inductor") -> None:
    """Regional compilation (run.compile): every encoder and decoder layer compiled on its own (one graph
    reused by all layers of a kind), the vision tower as one region, and the loss' elementwise part
    (model/losses.py compiled_chunk_losses), rather than the whole model (slow to compile, graph breaks).
    On an H200 (benchmarks/train_profile.py) the eager florenz-0.4b step spent 52 % in the frozen tower's
    forward and 28 % in the loss; compiling the tower alone gave 1.31x."""
    for block in model.blocks():
        block.compile(backend=backend)
    model.vision_tower.compile(backend=backend)
    model.loss_backend = backend


def bucket(length: int) -> int:
    """The padded length of a sequence of `length`: the next power of two, at least MIN_BUCKET."""
    return max(MIN_BUCKET, 1 << max(0, length - 1).bit_length())


def _pad(tensor: torch.Tensor, length: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(tensor, (0, length - tensor.shape[1]), value=value)


def bucketed(batch: dict, encoder_pad: int, decoder_pad: int) -> dict:
    """A collated batch with prompt and decoder sequences padded to their buckets: padded positions are
    masked and unlabelled, so losses and token counts do not change."""
    prompt, target = bucket(batch["input_ids"].shape[1]), bucket(batch["decoder_input_ids"].shape[1])
    return {**batch, "input_ids": _pad(batch["input_ids"], prompt, encoder_pad),
            "attention_mask": _pad(batch["attention_mask"], prompt, 0),
            "decoder_input_ids": _pad(batch["decoder_input_ids"], target, decoder_pad),
            "decoder_attention_mask": _pad(batch["decoder_attention_mask"], target, 0),
            "labels": _pad(batch["labels"], target, IGNORE_INDEX)}
