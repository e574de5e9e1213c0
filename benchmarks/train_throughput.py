"""Benchmark: training throughput of Florenz sizes with random weights, before and after issue 16 in the
same run — samples/s, tokens/s, achieved TFLOP/s, MFU and peak GPU memory per size, batch and variant —
against a bf16 matrix product measured in the same run (what this GPU's tensor cores give a pure GEMM).

    python3 benchmarks/train_throughput.py --sizes florenz-0.4b,florenz-3.5b --batch-sizes 64,128 --compile
    python3 benchmarks/train_throughput.py --device cpu --sizes tiny --batch-sizes 2 --steps 2   # smoke test

Both variants run model/step.py's train_step (the training loop's step: the paper's freezing, AdamW over
the trainable parameters, bf16 autocast with fp32 weights, clipping):
- before: the step as it was: the loss over fp32 logits of every position (losses.reference_token_losses),
  the frozen vision tower and projector in training mode (drop_path on) with autograd, eager blocks, and
  the loss read back every step (.item(), as the loop did);
- after: the LM head on labelled positions only (chunked, model/losses.py), frozen parts in eval mode under
  no_grad, the loss left on the device; with --compile, what run.compile does (model/step.py compile_regions).
Batches are synthetic at the paper's pre-training shape (224 px, a 24-token prompt, a 32-token target), so
the loader is not measured here (see loader_throughput.py). FLOPs are the training FLOPs of every part,
vision tower included (model/flops.py), the same useful FLOPs for both variants: MFU compares like with like.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.flops import ORDER, training_flops  # noqa: E402
from model.losses import reference_token_losses  # noqa: E402
from model.modeling import FlorenzModel  # noqa: E402
from model.optim import optimizer_for  # noqa: E402
from model.sizes import FLORENCE2_VOCAB, GEMMA2_VOCAB, florenz_config  # noqa: E402
from model.step import StepResult, compile_regions, to_device, train_step  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks (SXM)
VARIANTS = ("before", "after")
SMALL_VOCAB = 512  # the vocabularies of the tiny sizes here (their real ones come from test tokenizers)


def matmul_tflops(n: int = 8192, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e12


def synthetic_batch(batch: int, image_size: int, prompt: int, target: int, encoder_vocab: int,
                    decoder_vocab: int) -> dict:
    """A collated CPU batch (uint8 images, as the loader hands them over), every target token labelled."""
    g = torch.Generator().manual_seed(0)
    ids = lambda n, vocab: torch.randint(4, vocab - 1, (batch, n), generator=g)
    return {"pixel_values": torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, generator=g),
            "input_ids": ids(prompt, encoder_vocab), "attention_mask": torch.ones(batch, prompt, dtype=torch.long),
            "decoder_input_ids": ids(target, decoder_vocab),
            "decoder_attention_mask": torch.ones(batch, target, dtype=torch.long), "labels": ids(target, decoder_vocab)}


def config_for(size: str):
    small = size.startswith("tiny") or size.startswith("toy")
    return (florenz_config(size, SMALL_VOCAB, SMALL_VOCAB) if small
            else florenz_config(size, GEMMA2_VOCAB, FLORENCE2_VOCAB))


def reference_loss(model: FlorenzModel):
    """The step's forward as it was: today's loss, the image side with autograd in whatever mode it is."""
    def loss(**inputs) -> torch.Tensor:
        losses, tokens = reference_token_losses(model, **inputs)
        return losses.sum() / tokens.sum().clamp(min=1)
    return loss


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_step(step: Callable[[], object], steps: int, warmup: int, device: torch.device) -> float:
    """Mean wall-clock seconds of `step` over `steps` calls after `warmup` untimed ones (compilation)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def training_setup(size: str, batch_size: int, image_size: int, prompt: int, target: int, device: torch.device
                   ) -> tuple[FlorenzModel, torch.optim.Optimizer, dict]:
    """A random model of `size` in training mode under the paper's freezing, its AdamW, and one synthetic
    batch on `device`: what every benchmark row trains."""
    torch.manual_seed(0)
    with torch.device(device):
        model = FlorenzModel(config_for(size))
    model.set_trainable()
    model.train()
    optimizer = optimizer_for(model, 1e-4, 0.01, (0.9, 0.999), device)
    config = model.config
    batch = synthetic_batch(batch_size, image_size, prompt, target, config.florence.text_config.vocab_size,
                            config.decoder_vocab_size)
    return model, optimizer, to_device(batch, device)


def benchmark_step(forward, model: FlorenzModel, optimizer: torch.optim.Optimizer, inputs: dict,
                   device: torch.device) -> StepResult:
    """One train_step on `inputs` under bf16 autocast, as the loop runs it (no accumulation, clip 1.0)."""
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return train_step(forward, model, optimizer, None, itertools.repeat(inputs), 1, 1.0, autocast)


def measure(size: str, variant: str, batch_size: int, steps: int, warmup: int, image_size: int, prompt: int,
            target: int, device: torch.device, compile_backend: str | None) -> dict:
    """One (size, variant, batch) row: samples/s, tokens/s, FLOPs per sample by part, peak memory."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, optimizer, inputs = training_setup(size, batch_size, image_size, prompt, target, device)
    flops = training_flops(model, image_size, prompt, target, labelled_tokens=target)
    if variant == "before":
        model.vision_tower.train()  # as it was: the frozen parts left in training mode
        model.projector.train()
        forward = reference_loss(model)
    else:
        if compile_backend:
            compile_regions(model, compile_backend)
        forward = model

    def step() -> None:
        result = benchmark_step(forward, model, optimizer, inputs, device)
        if variant == "before":
            result.loss.item()  # the loop read the loss back every step

    try:
        elapsed = seconds_per_step(step, steps, warmup, device)
    except torch.OutOfMemoryError:
        return {"oom": True}  # the model and optimizer go with this frame, before the next row's
    sample_flops = sum(part.total for part in flops.values())
    tokens = prompt + FlorenzModel.image_tokens(image_size) + target
    return {"samples_s": batch_size / elapsed, "tokens_s": batch_size * tokens / elapsed,
            "tflops": batch_size * sample_flops / elapsed / 1e12, "flops": flops,
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None}


def flops_line(size: str, flops: dict) -> str:
    parts = ", ".join(f"{name} {flops[name].forward / 1e9:.3g}+{flops[name].backward / 1e9:.3g}" for name in ORDER)
    total = sum(part.total for part in flops.values())
    return f"{size}: GFLOP per sample (forward+backward): {parts}; all {total / 1e9:.4g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="florenz-0.4b,florenz-3.5b")
    parser.add_argument("--batch-sizes", default="64,128")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--prompt-tokens", type=int, default=24)
    parser.add_argument("--target-tokens", type=int, default=32)
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="compile the after variant as run.compile does (torch.compile backend, default inductor)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    peak = gemm = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        gemm = matmul_tflops()
        print(f"device: {name}; torch {torch.__version__}; bf16 8192^3 matmul (baseline): {gemm:.0f} TFLOP/s"
              + (f"; spec peak {peak / 1e12:.0f}" if peak else ""))
    else:
        print(f"device: cpu ({torch.get_num_threads()} threads); torch {torch.__version__}; no MFU on a CPU")
    print(f"after: compile {args.compile or 'off'}")
    print(f"{'size':<15}{'batch':>6}{'variant':>8}{'samples/s':>11}{'tokens/s':>11}{'TFLOP/s':>9}{'MFU':>7}"
          f"{'vs GEMM':>9}{'peak GiB':>10}{'after/before':>14}")
    for size in args.sizes.split(","):
        flops = None
        for batch_size in map(int, args.batch_sizes.split(",")):
            before = None
            for variant in VARIANTS:
                r = measure(size, variant, batch_size, args.steps, args.warmup, args.image_size, args.prompt_tokens,
                            args.target_tokens, device, args.compile if variant == "after" else None)
                if r.get("oom"):
                    print(f"{size:<15}{batch_size:>6}{variant:>8}  out of memory", flush=True)
                    continue
                flops = r["flops"]
                mfu = f"{r['tflops'] * 1e12 / peak:.1%}" if peak else "n/a"
                vs_gemm = f"{r['tflops'] / gemm:.2f}" if gemm else "n/a"
                memory = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "n/a"
                ratio = f"{r['samples_s'] / before:.2f}x" if variant == "after" and before else ""
                print(f"{size:<15}{batch_size:>6}{variant:>8}{r['samples_s']:>11.1f}{r['tokens_s']:>11.0f}"
                      f"{r['tflops']:>9.3g}{mfu:>7}{vs_gemm:>9}{memory:>10}{ratio:>14}", flush=True)
                before = r["samples_s"] if variant == "before" else before
        if flops:
            print(flops_line(size, flops), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
