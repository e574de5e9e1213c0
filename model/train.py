"""florenz-train CONFIG: train Florenz on the pipeline's shards, on one process or many (torchrun).

    florenz-train configs/train-tiny.yaml
    torchrun --nproc_per_node 8 -m model.train configs/train-0.4b.yaml

bf16 autocast, AdamW, cosine schedule with warm-up, gradient accumulation and clipping (the step is
model/step.py's train_step, which the throughput benchmark runs too; the loss is read back from the
device only every run.log_every steps); DDP, or FSDP for the Gemma-2 sizes; optionally compiled blocks
(run.compile); the freezing policy and scheduled unfreezing of model/unfreeze.py. Checkpoints resume exactly (see model/checkpoint.py); a run folder that has one is
resumed. Writes metrics.jsonl (training and eval rows) and scaling_rows.jsonl (the inputs of the
scaling-law fits: parameters, seen samples, compute, eval loss per test set).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from model.data import (AnnotationSampler, Collator, ResumableShardStream, image_transform, shard_urls,
                        split_key_counts, train_loader)
from model.eval_loss import eval_collator, evaluate_loss, output_plan, test_sets
from model.factory import build_model, load_tokenizers
from model.modeling import FlorenzModel
from model.optim import flops_per_token, optimizer_for, warmup_cosine
from model.step import bucketed, compile_regions, to_device, train_step
from model.train_config import TrainConfig, load_train_config
from model.unfreeze import TrainableSchedule
from schemas.errors import ConfigError
from schemas.records import SPLIT_TRAIN


@dataclasses.dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_processes() -> Processes:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; NCCL on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(int(os.environ.get("RANK", "0")), world, device)


def strategy_for(model: FlorenzModel, config: TrainConfig, procs: Processes) -> str:
    """none (one process), DDP for the Florence-2 decoder sizes, FSDP for the Gemma-2 ones, or as configured.
    Scheduled unfreezing takes DDP, the combination that is tested (the config refuses it with FSDP)."""
    if procs.world == 1:
        return "none"
    strategy = config.run.strategy
    if strategy == "auto":
        strategy = "ddp" if model.config.gemma is None or config.trainable.unfreeze is not None else "fsdp"
    return strategy


def data_parallel(model: FlorenzModel, procs: Processes) -> DistributedDataParallel:
    """DDP over the parameters that require grad now: its reducer expects a gradient for exactly those in
    every step, so it is built again whenever scheduled unfreezing changes them (no find_unused_parameters,
    no static_graph needed: within a stage the set is fixed and every one of them gets a gradient)."""
    return DistributedDataParallel(model, device_ids=[procs.device.index] if procs.device.type == "cuda" else None)


def shard(model: FlorenzModel) -> None:
    """FSDP, per encoder and decoder layer."""
    from torch.distributed.fsdp import fully_shard
    for layer in model.blocks():
        fully_shard(layer)
    fully_shard(model)


def parameter_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(model.state_dict().items()):
        tensor = param.full_tensor() if hasattr(param, "full_tensor") else param
        digest.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class Metrics:
    """JSONL rows, written by the main process only."""

    def __init__(self, path: Path, enabled: bool):
        self.file = open(path, "a", encoding="utf-8") if enabled else None

    def write(self, row: dict) -> None:
        if self.file:
            self.file.write(json.dumps(row, sort_keys=True) + "\n")
            self.file.flush()


def train(config: TrainConfig, stop_at: int | None = None) -> dict:
    """Runs (or resumes) the config's schedule up to its end, or up to `stop_at` steps."""
    procs = start_processes()
    out = Path(config.run.out)
    checkpoints = out / "checkpoints"
    if procs.main:
        checkpoints.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.run.seed + procs.rank)
    encoder_tokenizer, decoder_tokenizer = load_tokenizers(config.model)
    model = build_model(config.model, encoder_tokenizer, decoder_tokenizer, procs.device)
    schedule = TrainableSchedule(model, config.trainable)  # every parameter the run ever trains requires grad
    params = model.parameter_counts()  # trained P: all of the policy's parts, scheduled layers included
    strategy = strategy_for(model, config, procs)
    if strategy == "fsdp":
        shard(model)
    if config.run.compile:
        compile_regions(model)
    # over every parameter the policy trains: one not yet unfrozen has no gradient, and AdamW skips it
    optimizer = optimizer_for(model, config.optim.lr, config.optim.weight_decay, config.optim.betas, procs.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.optim.warmup_steps, config.optim.steps, config.optim.min_lr_ratio))

    data = config.data
    step, positions, rng = 0, {}, None
    counters = {"seen": 0, "tokens": 0, "consumed": 0, "compute": 0.0, "loader_workers": data.workers}
    if (resume_from := latest_checkpoint(checkpoints)) is not None:
        # the optimizer state covers what trained in the checkpoint's last step: exactly those require grad
        state = load_checkpoint(resume_from, model, optimizer, scheduler,
                                trained_at=lambda saved: schedule.apply(saved - 1))
        step, counters, positions, rng = state["step"], state["counters"], state["positions"], state["rng"]
        if counters["loader_workers"] != data.workers:  # the streams' positions belong to those workers
            raise ValueError(f"{resume_from} was written with data.workers={counters['loader_workers']}; "
                             f"resume with as many")

    transform = image_transform(data.image_size)
    sampler = AnnotationSampler.from_setting(data.balance, split_key_counts(data.output, SPLIT_TRAIN))
    collator = Collator(encoder_tokenizer, decoder_tokenizer, data.max_prompt_tokens, data.max_target_tokens,
                        data.decoder_prefix, data.decoder_start)
    loss_collator = eval_collator(config, encoder_tokenizer, decoder_tokenizer, config.eval.loss_prefix)
    test_sets(output_plan(data.output), config.eval.test_sets)  # a wrong eval.test_sets refused before training
    stream = ResumableShardStream(shard_urls(data.output, SPLIT_TRAIN), sampler, transform, config.run.seed,
                                  procs.rank, data.shuffle_buffer, start=positions,
                                  rotation=counters["consumed"] % max(1, data.workers))
    image_tokens = model.image_tokens(data.image_size)
    batches = iter(train_loader(stream, collator, data.batch_size, data.workers))
    if rng is not None:  # after the loader started: its worker seeds come from the same generator
        set_rng_state(rng)

    autocast = lambda: torch.autocast(procs.device.type, dtype=torch.bfloat16,
                                      enabled=config.run.precision == "bf16")
    metrics = Metrics(out / "metrics.jsonl", procs.main)
    scaling = Metrics(out / "scaling_rows.jsonl", procs.main)
    bar = tqdm(total=config.optim.steps, initial=step, disable=not (procs.main and config.run.progress),
               desc="train", dynamic_ncols=True)
    end = min(config.optim.steps, stop_at or config.optim.steps)
    started, last_loss = time.time(), float("nan")
    wrapped: torch.nn.Module | None = None
    pads = (encoder_tokenizer.pad_token_id, decoder_tokenizer.pad_token_id)
    token_counts = [0, 0]  # this step's (encoder, decoder) tokens, counted on the CPU batches

    def micro_batches():
        """The step's micro-batches on the device; the stream positions and token counts of each recorded
        from the CPU batch (no device sync)."""
        while True:
            batch = next(batches)
            stream_id, draw, index = batch.pop("position")
            positions[stream_id] = (draw, index)
            counters["consumed"] += 1
            token_counts[0] += int(batch["attention_mask"].sum()) + len(batch["keys"]) * image_tokens
            token_counts[1] += int(batch["decoder_attention_mask"].sum())
            yield to_device(bucketed(batch, *pads) if config.run.compile else batch, procs.device)

    inputs = micro_batches()
    while step < end:
        if schedule.apply(step) or wrapped is None:  # the first step, and every unfreezing stage
            encoder_flops, decoder_flops = flops_per_token(model)
            trainable = model.parameter_counts()["trainable"]
            wrapped = data_parallel(model, procs) if strategy == "ddp" else model
        token_counts[:] = [0, 0]
        result = train_step(wrapped, model, optimizer, scheduler, inputs, config.optim.grad_accum,
                            config.optim.clip, autocast)
        step += 1

        encoder_tokens, decoder_tokens = token_counts
        counters["seen"] += data.batch_size * config.optim.grad_accum * procs.world
        counters["tokens"] += (encoder_tokens + decoder_tokens) * procs.world  # estimated from this process's share
        counters["compute"] += (encoder_flops * encoder_tokens + decoder_flops * decoder_tokens) * procs.world
        bar.update(1)
        if step % config.run.log_every == 0 or step == end:  # the only host sync of the loop
            loss = result.loss
            if procs.world > 1:
                dist.all_reduce(loss, op=dist.ReduceOp.AVG)
            last_loss = loss.item()
            bar.set_postfix(loss=f"{last_loss:.4f}")
            metrics.write({"step": step, "loss": last_loss, "lr": scheduler.get_last_lr()[0],
                           "grad_norm": float(result.grad_norm), "trainable_params": trainable,
                           "seen": counters["seen"], "tokens": counters["tokens"],
                           "compute": counters["compute"], "elapsed_s": round(time.time() - started, 3)})
        if step % config.run.eval_every == 0 or step == end:
            losses = evaluate_loss(model, data.output, transform, loss_collator, data.batch_size, data.eval_images,
                                   procs.device, autocast, config.eval.test_sets)
            metrics.write({"step": step, "eval": losses})
            if losses:
                scaling.write({"run": str(out), "size": model.config.size, "params": params["total"],
                               "trainable_params": params["trainable"], "step": step,
                               "seen": counters["seen"], "compute": counters["compute"], **losses})
        if step % config.run.checkpoint_every == 0 or step == end:
            save_checkpoint(checkpoints, step, model, optimizer, scheduler, counters, positions,
                            config.run.keep_checkpoints)
    bar.close()
    digests = [parameter_digest(model)]
    if procs.world > 1:
        gathered: list = [None] * procs.world
        dist.all_gather_object(gathered, digests[0])
        digests = gathered
    summary = {"step": step, "loss": last_loss, "params": params, "ranks": procs.world,
               "ranks_agree": len(set(digests)) == 1, "parameter_digest": digests[0], **counters}
    metrics.write({"final": summary})
    if procs.world > 1:
        dist.destroy_process_group()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="florenz-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="training config (YAML)")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps (overrides optim.steps "
                        "for the stop only: the schedule keeps the config's length)")
    args = parser.parse_args(argv)
    try:
        config = load_train_config(args.config)
    except ConfigError as error:  # one line naming the field, as florenz-data's
        print(f"config error: {error}", file=sys.stderr)
        return 2
    try:
        summary = train(config, stop_at=args.steps)
    except CheckpointError as error:  # a checkpoint or `latest` pointer that cannot be resumed from
        print(f"checkpoint error: {error}", file=sys.stderr)
        return 2
    except ConfigError as error:  # a setting the data contradicts (eval.test_sets naming a key it lacks)
        print(f"config error: {error}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, sort_keys=True))
    return 0 if summary["ranks_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
