"""Benchmark (GPU): training throughput of Florenz sizes with random weights — samples/s, tokens/s,
achieved TFLOP/s, MFU and peak GPU memory per batch size — against a bf16 matrix product measured in
the same run (the baseline: what this GPU's tensor cores give a pure GEMM).

    python3 benchmarks/train_throughput.py --sizes florenz-0.4b,florenz-3.5b --batch-sizes 16,64,128

The step is the training loop's: the paper's freezing, AdamW over the trainable parameters (fused),
bf16 autocast with fp32 weights, gradient clipping. Batches are synthetic at the paper's pre-training
shape (224 px, a 24-token prompt, a 32-token target), so the loader is not measured here (see
loader_throughput.py). FLOPs follow model/optim.py's estimate, which leaves out the vision tower.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.modeling import FlorenzModel  # noqa: E402
from model.optim import flops_per_token, optimizer_for  # noqa: E402
from model.sizes import FLORENCE2_VOCAB, florenz_config  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks (SXM)


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


def synthetic_batch(batch: int, image_size: int, prompt: int, target: int, decoder_vocab: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = lambda n, vocab: torch.randint(4, vocab - 1, (batch, n), device="cuda", generator=g)
    return {"pixel_values": torch.randn(batch, 3, image_size, image_size, device="cuda", generator=g),
            "input_ids": ids(prompt, FLORENCE2_VOCAB), "attention_mask": torch.ones(batch, prompt, dtype=torch.long,
                                                                                     device="cuda"),
            "decoder_input_ids": ids(target, decoder_vocab),
            "decoder_attention_mask": torch.ones(batch, target, dtype=torch.long, device="cuda"),
            "labels": ids(target, decoder_vocab)}


def measure(size: str, batch_size: int, steps: int, image_size: int, prompt: int, target: int) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with torch.device("cuda"):
        model = FlorenzModel(florenz_config(size))
    model.set_trainable()
    optimizer = optimizer_for(model, 1e-4, 0.01, (0.9, 0.999), torch.device("cuda"))
    batch = synthetic_batch(batch_size, image_size, prompt, target, model.config.decoder_vocab_size)
    encoder_flops, decoder_flops = flops_per_token(model)
    encoder_tokens = batch_size * (prompt + model.image_tokens(image_size))
    step_flops = encoder_flops * encoder_tokens + decoder_flops * batch_size * target

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        elapsed = (time.perf_counter() - start) / steps
        result = {"samples_s": batch_size / elapsed, "tokens_s": (encoder_tokens + batch_size * target) / elapsed,
                  "tflops": step_flops / elapsed / 1e12, "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30}
    except torch.OutOfMemoryError:
        result = {"oom": True}
    del model, optimizer, batch
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="florenz-0.4b,florenz-3.5b")
    parser.add_argument("--batch-sizes", default="16,64,128")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--prompt-tokens", type=int, default=24)
    parser.add_argument("--target-tokens", type=int, default=32)
    args = parser.parse_args()
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    gemm = matmul_tflops()
    print(f"device: {name}; torch {torch.__version__}; bf16 8192^3 matmul (baseline): {gemm:.0f} TFLOP/s"
          + (f"; spec peak {peak / 1e12:.0f}" if peak else ""))
    print(f"{'size':<15}{'batch':>6}{'samples/s':>11}{'tokens/s':>11}{'TFLOP/s':>9}{'MFU(spec)':>10}"
          f"{'vs GEMM':>9}{'peak GiB':>10}")
    for size in args.sizes.split(","):
        for batch_size in map(int, args.batch_sizes.split(",")):
            r = measure(size, batch_size, args.steps, args.image_size, args.prompt_tokens, args.target_tokens)
            if r.get("oom"):
                print(f"{size:<15}{batch_size:>6}  out of memory")
                continue
            mfu = f"{r['tflops'] * 1e12 / peak:.1%}" if peak else "n/a"
            print(f"{size:<15}{batch_size:>6}{r['samples_s']:>11.1f}{r['tokens_s']:>11.0f}{r['tflops']:>9.1f}"
                  f"{mfu:>10}{r['tflops'] / gemm:>9.2f}{r['peak_gib']:>10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
