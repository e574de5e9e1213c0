"""Optimisation pieces shared by the training loop and the benchmarks: AdamW over the trainable
parameters, the warm-up + cosine schedule, and the FLOPs estimate behind compute and MFU."""
from __future__ import annotations

import math

import torch

from model.modeling import FlorenzModel


def warmup_cosine(warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def optimizer_for(model: FlorenzModel, lr: float, weight_decay: float, betas: tuple, device: torch.device
                  ) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on norms, biases, gates."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas,
                             fused=device.type == "cuda")


def flops_per_token(model: FlorenzModel) -> tuple[float, float]:
    """Approximate training FLOPs per (non-padding) encoder token and per decoder token: for each part,
    2·P forward, 2·P for activation gradients, and 2·P more for the weights that train. The frozen
    vision tower (forward only, convolutional) is left out: this is the training counters' `compute`, kept
    as it was; model/flops.py counts every part (vision tower and LM head on labelled tokens included)
    for MFU."""
    out = []
    for part in (model.encoder, model.decoder):
        params = list(part.parameters())
        out.append(4.0 * sum(p.numel() for p in params) + 2.0 * sum(p.numel() for p in params if p.requires_grad))
    return out[0], out[1]
