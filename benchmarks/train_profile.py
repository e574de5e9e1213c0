"""Benchmark: where one training step's GPU time goes, and what candidate changes buy, in one run.

    python3 benchmarks/train_profile.py --sizes florenz-0.4b:512,florenz-3.5b:256
    python3 benchmarks/train_profile.py --device cpu --sizes tiny:2 --steps 1 --variants eager  # smoke

First the loss' elementwise part on one chunk, eager vs compiled; then per size:batch
- the step's time by phase (CUDA events at module boundaries of model/step.py's train_step, the "after"
  variant of train_throughput.py): vision tower + projector forward, encoder forward, decoder forward,
  loss (the LM head, its gradients computed in forward), backward, clip + optimizer;
- the top kernels of one step (torch.profiler), by GPU time;
- samples/s of the step under each variant (each against the eager step measured in the same run): one
  region of model/step.py's compile_regions compiled (`tower_compiled`, `loss_compiled`, `blocks_compiled`),
  or all of them (`compiled`, what run.compile does).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.train_throughput import benchmark_step, seconds_per_step, training_setup  # noqa: E402
from model.losses import CHUNK_ROWS, chunk_losses, compiled_chunk_losses  # noqa: E402
from model.modeling import FlorenzModel  # noqa: E402
from model.sizes import GEMMA2_VOCAB  # noqa: E402
from model.step import compile_regions  # noqa: E402

VARIANTS = ("eager", "tower_compiled", "loss_compiled", "blocks_compiled", "compiled")
PHASES = ("image", "encoder", "decoder", "loss", "backward", "optimizer")


def build(size: str, batch_size: int, device: torch.device, variant: str):
    """The model, its optimizer and a train_step closure over one synthetic batch, compiled as `variant` says."""
    model, optimizer, inputs = training_setup(size, batch_size, 224, 24, 32, device)
    if variant == "compiled":
        compile_regions(model)
    elif variant == "tower_compiled":
        model.vision_tower.compile()
    elif variant == "loss_compiled":
        model.loss_backend = "inductor"
    elif variant == "blocks_compiled":
        for block in model.blocks():
            block.compile()
    return model, optimizer, lambda: benchmark_step(model, model, optimizer, inputs, device)


def decoder_stack(model: FlorenzModel) -> torch.nn.Module:
    """The module decoder_states calls: BART's decoder, or the Gemma-2 model under its LM head."""
    return model.decoder if model.config.gemma is None else model.decoder.model


def phase_times(model: FlorenzModel, optimizer, step, steps: int) -> dict[str, float]:
    """Milliseconds per step of each phase (PHASES), from CUDA events recorded at module boundaries."""
    marks: list[tuple[str, torch.cuda.Event]] = []

    def mark(name: str):
        def hook(*_):
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            marks.append((name, event))
        return hook

    hooks = [model.vision_tower.register_forward_pre_hook(mark("start")),
             model.projector.register_forward_hook(mark("image")),
             model.encoder.register_forward_hook(mark("encoder")),
             decoder_stack(model).register_forward_hook(mark("decoder")),
             optimizer.register_step_post_hook(mark("optimizer"))]
    original_backward = torch.Tensor.backward

    def backward(tensor, *args, **kwargs):  # the loss' backward: marks the loss' end and the backward's
        mark("loss")()
        original_backward(tensor, *args, **kwargs)
        mark("backward")()

    totals = dict.fromkeys(PHASES, 0.0)
    try:
        torch.Tensor.backward = backward
        for _ in range(steps):
            marks.clear()
            step()
            torch.cuda.synchronize()
            for (_, before), (name, after) in zip(marks, marks[1:]):
                totals[name] += before.elapsed_time(after)
    finally:
        torch.Tensor.backward = original_backward
        for hook in hooks:
            hook.remove()
    return {name: total / steps for name, total in totals.items()}


def top_kernels(step, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70)


def loss_chunk_rows(device: torch.device, vocab: int, repeats: int) -> list[str]:
    """The loss' elementwise part on one CHUNK_ROWS x vocab chunk of bf16 head outputs (cast, soft-cap,
    logsumexp, softmax gradient), eager vs compiled: ms per chunk and the bf16 chunk bytes over that time."""
    logits = torch.randn(CHUNK_ROWS, vocab, device=device).mul_(4).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (CHUNK_ROWS, 1), device=device)
    lines, eager = [], None
    for softcap in (None, 30.0):
        for name, fn in (("eager", chunk_losses), ("compiled", compiled_chunk_losses())):
            ms = seconds_per_step(lambda: fn(logits, targets, softcap, None, True), repeats, 2, device) * 1e3
            eager = ms if name == "eager" else eager
            lines.append(f"loss chunk {CHUNK_ROWS}x{vocab} softcap {softcap}: {name:<9}{ms:8.2f} ms "
                         f"({logits.numel() * 2 / ms / 1e6:7.1f} GB/s of bf16 logits)  {eager / ms:.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="florenz-0.4b:512,florenz-3.5b:256", help="size:batch,...")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--kernels", type=int, default=20, help="rows of the top-kernel table (0: none)")
    parser.add_argument("--loss-vocab", type=int, default=GEMMA2_VOCAB, help="the loss-chunk rows' vocabulary")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    for line in loss_chunk_rows(device, args.loss_vocab, args.steps * 4):
        print(line, flush=True)
    for item in args.sizes.split(","):
        size, batch_size = item.split(":")[0], int(item.split(":")[1])
        eager = None
        for variant in args.variants.split(","):
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            model, optimizer, step = build(size, batch_size, device, variant)
            rate = batch_size / seconds_per_step(step, args.steps, args.warmup, device)
            eager = rate if variant == "eager" else eager
            peak = f"{torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB" if cuda else "n/a"
            ratio = f"{rate / eager:.2f}x" if eager else ""
            print(f"{size:<14}{batch_size:>5} {variant:<16}{rate:>9.1f} samples/s  peak {peak:>10}  {ratio}",
                  flush=True)
            if variant == "eager" and cuda:
                times = phase_times(model, optimizer, step, args.steps)
                total = sum(times.values())
                print(f"  phases (ms/step, total {total:.1f}): "
                      + ", ".join(f"{k} {v:.1f} ({v / total:.0%})" for k, v in times.items()), flush=True)
                if args.kernels:
                    print(top_kernels(step, args.kernels), flush=True)
            del model, optimizer, step
    return 0


if __name__ == "__main__":
    sys.exit(main())
