"""Cross-entropy of the LM head on the labelled decoder positions only, in row chunks.

Why: the decoder vocabulary is Gemma-2's 256k; computing the head on every position and upcasting the
whole [batch, length, vocab] logits to fp32 (the reference, `reference_token_losses`) costs GBs per step
and spends the head on padding. Here only the labelled rows go through the head, `CHUNK_ROWS` at a time:
logits in the compute dtype (bf16 under autocast), upcast per chunk, Gemma-2's final soft-capping
(tanh(x/c)·c) when the decoder has it, then logsumexp − target logit. No [rows, vocab] tensor outlives
its chunk: the training loss (`labelled_loss`, a mean) computes its gradients in forward while each
chunk's logits exist, as Liger-Kernel does; per-sample losses (`labelled_token_losses`, evaluation)
recompute each chunk's logits in backward instead. Own implementation: Liger-Kernel's fused linear
cross-entropy is Triton (GPU only) and returns a reduced loss only, while Florenz needs per-sample sums
(model/eval_loss.py) and tests on the CPU. Under run.compile the elementwise part of each chunk (cast,
soft-cap, logsumexp, softmax gradient) is one compiled function (`compiled_chunk_losses`); the three
matmuls stay cuBLAS's.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from model.pixels import normalized

IGNORE_INDEX = -100
CHUNK_ROWS = 1024  # rows × 256k vocab × fp32 = 1 GiB per chunk at most


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype the head's matmul runs in: autocast's for the tensor's device when autocast is on."""
    if torch.is_autocast_enabled(tensor.device.type):
        return torch.get_autocast_dtype(tensor.device.type)
    return tensor.dtype


def _loss_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.promote_types(tensor.dtype, torch.float32)


def chunk_losses(logits: torch.Tensor, targets: torch.Tensor, softcap: Optional[float],
                 scale: Optional[torch.Tensor], with_grad: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-row cross-entropy of one chunk's raw head outputs (`logits`, compute dtype; `targets` [rows, 1]),
    in fp32 (fp64 for fp64 inputs), Gemma-2's soft-cap applied; with `with_grad`, also the gradient of the
    rows' sum (each row's weighted by `scale` when given) with respect to `logits`, in their dtype.

    Elementwise only, so `compiled_chunk_losses` can fuse it into a few passes over the chunk; eager, it
    works in place. The target column's gradient (softmax − 1) is computed from the gathered target
    logit and written last, so the [rows, vocab] pass needs no one-hot."""
    x = logits.to(_loss_dtype(logits))
    capped = None
    if softcap is not None:
        capped = torch.tanh(x / softcap)
        x = capped * softcap
    lse = torch.logsumexp(x, dim=1, keepdim=True)
    target_logit = x.gather(1, targets)
    losses = (lse - target_logit).squeeze(1)
    if not with_grad:
        return losses, None
    grad = (x.sub_(lse) if x is not logits else x - lse).exp_()  # softmax; x is ours to overwrite unless cast-free
    target_grad = torch.exp(target_logit - lse) - 1
    if scale is not None:
        grad.mul_(scale[:, None])
        target_grad = target_grad * scale[:, None]
    if capped is not None:
        grad.mul_(1 - capped * capped)
        target_capped = capped.gather(1, targets)
        target_grad = target_grad * (1 - target_capped * target_capped)
    grad = grad.to(logits.dtype)
    return losses, grad.scatter_(1, targets, target_grad.to(grad.dtype))


@functools.lru_cache(maxsize=None)
def compiled_chunk_losses(backend: str = "inductor"):
    """chunk_losses compiled (run.compile): the cast, soft-cap, logsumexp, softmax and scaling fused into a
    few passes over the chunk instead of one eager kernel each (on an H200 the eager loss phase was 28 % of
    a florenz-0.4b step, mostly these passes; benchmarks/train_profile.py). Row counts vary per chunk:
    after the second distinct count, dynamo compiles one dynamic-shape graph for all."""
    return torch.compile(chunk_losses, backend=backend)


def _pass(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: Optional[float], chunk: int,
          backend: Optional[str], grad_hidden: bool = False, grad_weight: bool = False,
          scale: Optional[torch.Tensor] = None):
    """Per-row losses, chunk by chunk; with grad_hidden/grad_weight, also the gradients of their sum
    (each row's weighted by `scale` when given) with respect to `hidden` and `weight`. The matmuls run
    in hidden's dtype (the compute dtype); the weight's gradient comes back in the weight's own dtype
    (fp32 master weights: accumulated in fp32, never rounded to bf16 on the way)."""
    losses = torch.empty(hidden.shape[0], dtype=_loss_dtype(hidden), device=hidden.device)
    d_hidden = torch.empty_like(hidden) if grad_hidden else None
    d_weight = None
    head = weight.to(hidden.dtype)
    elementwise = chunk_losses if backend is None else compiled_chunk_losses(backend)
    for start in range(0, hidden.shape[0], chunk):
        end = start + chunk
        rows = hidden[start:end]
        losses[start:end], grad = elementwise(rows @ head.t(), targets[start:end, None], softcap,
                                              None if scale is None else scale[start:end],
                                              grad_hidden or grad_weight)
        if grad_hidden:
            d_hidden[start:end] = grad @ head
        if grad_weight:
            part = grad.t() @ rows
            d_weight = part.to(_loss_dtype(weight)) if d_weight is None else d_weight.add_(part)
    if d_weight is not None:
        d_weight = d_weight.to(weight.dtype)
    return losses, d_hidden, d_weight


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of softcap(hidden @ weight.T) against `targets`. Backward recomputes the
    chunks' logits (the rows' gradient weights are only known then)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, chunk, backend):
        losses, _, _ = _pass(hidden, weight, targets, softcap, chunk, backend)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.softcap, ctx.chunk, ctx.backend = softcap, chunk, backend
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        hidden, weight, targets = ctx.saved_tensors
        _, d_hidden, d_weight = _pass(hidden, weight, targets, ctx.softcap, ctx.chunk, ctx.backend,
                                      ctx.needs_input_grad[0], ctx.needs_input_grad[1], grad_losses)
        return d_hidden, d_weight, None, None, None, None


class _LinearCrossEntropySum(torch.autograd.Function):
    """The summed cross-entropy (the training loss' numerator). Its gradient is one scalar times the
    gradient of the sum, so that gradient is computed in forward, chunk by chunk, while each chunk's
    logits exist: three head matmuls, no recomputation (Liger-Kernel's approach)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, chunk, backend, grad_hidden, grad_weight):
        losses, d_hidden, d_weight = _pass(hidden, weight, targets, softcap, chunk, backend, grad_hidden,
                                           grad_weight)
        ctx.save_for_backward(d_hidden, d_weight)
        return losses.sum()

    @staticmethod
    def backward(ctx, grad_sum):
        d_hidden, d_weight = ctx.saved_tensors
        scaled = lambda grad: None if grad is None else grad * grad_sum.to(grad.dtype)
        return scaled(d_hidden), scaled(d_weight), None, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         softcap: Optional[float] = None, chunk: int = CHUNK_ROWS, backend: Optional[str] = None
                         ) -> torch.Tensor:
    """Per-row fp32 cross-entropy of the head `weight` ([vocab, dim]) over `hidden` ([rows, dim]);
    `backend`: the elementwise part compiled with this torch.compile backend (compiled_chunk_losses)."""
    return _LinearCrossEntropy.apply(hidden.to(compute_dtype(hidden)), weight, targets, softcap, chunk, backend)


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             softcap: Optional[float] = None, chunk: int = CHUNK_ROWS, backend: Optional[str] = None
                             ) -> torch.Tensor:
    """linear_cross_entropy(...).sum(), with the gradients computed in the forward pass."""
    grads = torch.is_grad_enabled()
    return _LinearCrossEntropySum.apply(hidden.to(compute_dtype(hidden)), weight, targets, softcap, chunk, backend,
                                        grads and hidden.requires_grad, grads and weight.requires_grad)


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices of the labelled positions of `labels` ([batch, length]). On a GPU this syncs with
    the host (its length is data-dependent): the training step computes it on the CPU batch instead."""
    return labels.flatten().ne(IGNORE_INDEX).nonzero().squeeze(1)


def _labelled_rows(hidden: torch.Tensor, labels: torch.Tensor, positions: Optional[torch.Tensor]):
    """(positions, their hidden rows, their targets); `positions`: labelled_positions(labels) if known."""
    positions = labelled_positions(labels) if positions is None else positions.to(labels.device)
    return (positions, hidden.flatten(0, 1).index_select(0, positions),
            labels.flatten().index_select(0, positions))


def labelled_token_losses(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          softcap: Optional[float] = None, positions: Optional[torch.Tensor] = None,
                          chunk: int = CHUNK_ROWS, backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample summed cross-entropy over the labelled tokens, and their count, from the decoder's
    final hidden states ([batch, length, dim]); `positions`: labelled_positions(labels) if known."""
    positions, rows, targets = _labelled_rows(hidden, labels, positions)
    losses = linear_cross_entropy(rows, weight, targets, softcap, chunk, backend)
    samples = torch.div(positions, labels.shape[1], rounding_mode="floor")
    per_sample = torch.zeros(labels.shape[0], dtype=losses.dtype, device=losses.device).index_add(0, samples, losses)
    return per_sample, labels.ne(IGNORE_INDEX).sum(dim=1)


def labelled_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                  softcap: Optional[float] = None, positions: Optional[torch.Tensor] = None,
                  chunk: int = CHUNK_ROWS, backend: Optional[str] = None) -> torch.Tensor:
    """Mean cross-entropy per labelled token (the training loss), gradients computed in forward."""
    _, rows, targets = _labelled_rows(hidden, labels, positions)
    total = linear_cross_entropy_sum(rows, weight, targets, softcap, chunk, backend)
    return total / labels.ne(IGNORE_INDEX).sum().clamp(min=1)


def reference_token_losses(model, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           decoder_input_ids: torch.Tensor, decoder_attention_mask: torch.Tensor,
                           labels: torch.Tensor, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss as it was before this module: the head on every position, fp32 logits over the whole
    vocabulary; the image side run as it was too, with autograd and in whatever mode it is in. Kept as
    the tests' reference and the benchmark's "before" column."""
    image = model.projector(model.vision_tower(normalized(pixel_values)).last_hidden_state)
    encoder_states, encoder_mask = model.encode_features(image, input_ids, attention_mask)
    logits, _ = model.decode(decoder_input_ids, encoder_states, encoder_mask, decoder_attention_mask)
    losses = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return losses.sum(dim=1), labels.ne(IGNORE_INDEX).sum(dim=1)
