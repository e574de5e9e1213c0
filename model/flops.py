"""Training FLOPs per sample of each part of Florenz: vision tower, projector, encoder, decoder, LM head.

Why: an MFU over the encoder and decoder alone (model/optim.py's flops_per_token, which the training
counters keep using) leaves out the vision tower, about half the forward FLOPs of florenz-0.4b at 224 px.
Forward FLOPs are counted by torch's FlopCounterMode on one sample at the given shapes (matmuls,
convolutions, attention; not elementwise ops), except the LM head's: 2·vocab·dim per labelled target
token, the only positions the loss (model/losses.py) runs it on. Backward, per part:
- activation gradients, about one forward, wherever the part or one before it trains (the encoder's
  trained token embeddings need them through every encoder layer; a frozen vision tower and projector
  in front of everything have none: the tower runs forward only), the LM head's only when a part before
  it trains (it is the last matmul);
- weight gradients, about one forward times the share of the part's parameters that train.
"""
from __future__ import annotations

import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode

from model.modeling import FlorenzModel

ORDER = ("vision_tower", "projector", "encoder", "decoder", "lm_head")  # the forward pass's order


@dataclasses.dataclass(frozen=True)
class PartFlops:
    forward: float
    backward: float

    @property
    def total(self) -> float:
        return self.forward + self.backward


def _counted(run) -> tuple[float, object]:
    counter = FlopCounterMode(display=False)
    with counter:
        out = run()
    return float(counter.get_total_flops()), out


@torch.no_grad()
def forward_flops(model: FlorenzModel, image_size: int, prompt_tokens: int, target_tokens: int,
                  labelled_tokens: int) -> dict[str, float]:
    """Forward FLOPs of one sample per part (ORDER), at these shapes, on the model's device."""
    device = next(model.parameters()).device
    pixels = torch.zeros(1, 3, image_size, image_size, device=device)
    prompt = torch.ones(1, prompt_tokens, dtype=torch.long, device=device)
    target = torch.ones(1, target_tokens, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    flops = {}
    flops["vision_tower"], features = _counted(lambda: model.vision_tower(pixels).last_hidden_state)
    flops["projector"], image = _counted(lambda: model.projector(features))
    flops["encoder"], (states, mask) = _counted(lambda: model.encode_features(image, prompt, torch.ones_like(prompt)))
    flops["decoder"], _ = _counted(lambda: model.decoder_states(target, states, mask, torch.ones_like(target)))
    flops["lm_head"] = 2.0 * model.lm_head_weight.numel() * labelled_tokens
    model.train(was_training)
    return flops


def _parts(model: FlorenzModel) -> dict[str, list[torch.nn.Parameter]]:
    head = model.lm_head_weight
    decoder = [p for p in model.decoder.parameters() if p is not head]  # the tied embedding counts as the head's
    return {"vision_tower": list(model.vision_tower.parameters()), "projector": list(model.projector.parameters()),
            "encoder": [p for p in model.encoder.parameters() if p is not head], "decoder": decoder,
            "lm_head": [head]}


def training_flops(model: FlorenzModel, image_size: int, prompt_tokens: int, target_tokens: int,
                   labelled_tokens: int) -> dict[str, PartFlops]:
    """Forward and backward FLOPs of one training sample per part (ORDER), under the model's current
    requires_grad flags; see the module docstring."""
    forward = forward_flops(model, image_size, prompt_tokens, target_tokens, labelled_tokens)
    result, upstream_trains = {}, False
    for name, params in _parts(model).items():
        count = sum(p.numel() for p in params)
        share = sum(p.numel() for p in params if p.requires_grad) / count if count else 0.0
        input_gradients = upstream_trains or (share > 0 and name != "lm_head")
        result[name] = PartFlops(forward[name], forward[name] * (float(input_gradients) + share))
        upstream_trains = upstream_trains or share > 0
    return result
