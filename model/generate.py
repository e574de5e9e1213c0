"""Greedy and beam-search generation for Florenz, with an optional decoder start (bos + language prefix).

One loop serves both (greedy is one beam). The encoder runs once; the decoder continues from
transformers' KV cache, reordered as beams are chosen (EncoderDecoderCache for BART, DynamicCache for
Gemma-2). All rows of a batch share one decoder start, so no left padding is needed.
"""
from __future__ import annotations

import torch

from model.modeling import FlorenzModel


@torch.no_grad()
def generate(model: FlorenzModel, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             start: list[int], eos_token_id: int, num_beams: int = 1, max_new_tokens: int = 40,
             length_penalty: float = 1.0) -> list[list[int]]:
    """The best continuation of `start` for every row (without `start`, without eos)."""
    batch, beams = pixel_values.shape[0], num_beams
    encoder_states, encoder_mask = model.encode(pixel_values, input_ids, attention_mask)
    encoder_states = encoder_states.repeat_interleave(beams, dim=0)
    encoder_mask = encoder_mask.repeat_interleave(beams, dim=0)
    tokens = torch.tensor(start, device=input_ids.device).repeat(batch * beams, 1)
    scores = torch.full((batch, beams), float("-inf"), device=input_ids.device)
    scores[:, 0] = 0.0  # one live beam per row at first, so the first step does not pick duplicates
    scores = scores.view(-1)
    lengths = torch.zeros(batch * beams, device=input_ids.device)
    finished = torch.zeros(batch * beams, dtype=torch.bool, device=input_ids.device)
    cache, step_input = None, tokens
    for _ in range(max_new_tokens):
        logits, cache = model.decode(step_input, encoder_states, encoder_mask, cache=cache, use_cache=True)
        log_probs = torch.log_softmax(logits[:, -1].float(), dim=-1)
        log_probs[finished] = float("-inf")
        log_probs[finished, eos_token_id] = 0.0  # a finished beam only carries on with eos, at no cost
        vocab = log_probs.shape[-1]
        total = (scores[:, None] + log_probs).view(batch, beams * vocab)
        scores, index = total.topk(beams, dim=-1)
        chosen = (index // vocab + torch.arange(batch, device=index.device)[:, None] * beams).view(-1)
        next_tokens = (index % vocab).view(-1, 1)
        scores = scores.view(-1)
        finished, lengths = finished[chosen], lengths[chosen]
        lengths = lengths + (~finished).float()
        finished = finished | (next_tokens.squeeze(1) == eos_token_id)
        tokens = torch.cat([tokens[chosen], next_tokens], dim=1)
        cache.reorder_cache(chosen)
        step_input = next_tokens
        if finished.all():
            break
    normalized = (scores / lengths.clamp(min=1) ** length_penalty).view(batch, beams)
    best = normalized.argmax(dim=-1) + torch.arange(batch, device=normalized.device) * beams
    results = []
    for row in tokens[best, len(start):].tolist():
        results.append(row[: row.index(eos_token_id)] if eos_token_id in row else row)
    return results
