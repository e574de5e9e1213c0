"""A patch-stem vision tower for models trained from scratch on the toy world (issue 18).

Why: a DaViT trained from scratch at a toy budget never lets the image in (its eval loss with shuffled
images equals the loss with the right ones), while two strided convolutions ground captions within a
few hundred steps. The stem keeps DaViT's output layout, (batch, embed_dim[-1], H/32, W/32), so
Florence-2's projector, the encoder and everything after it are unchanged.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import Florence2VisionConfig
from transformers.modeling_outputs import BaseModelOutput

DAVIT = "davit"
PATCH_STEM = "patch_stem"
VISION_TOWERS = (DAVIT, PATCH_STEM)


class PatchStem(nn.Module):
    """4x4 patches to embed_dim[0] channels, then 8x8 of those to embed_dim[-1]: one vector per 32x32 pixels."""

    def __init__(self, config: Florence2VisionConfig):
        super().__init__()
        hidden, out = config.embed_dim[0], config.embed_dim[-1]
        self.patches = nn.Conv2d(config.in_channels, hidden, kernel_size=4, stride=4)
        self.act = nn.GELU()
        self.merge = nn.Conv2d(hidden, out, kernel_size=8, stride=8)
        self.norm = nn.GroupNorm(1, out)

    def forward(self, pixel_values: torch.Tensor) -> BaseModelOutput:
        return BaseModelOutput(last_hidden_state=self.norm(self.merge(self.act(self.patches(pixel_values)))))
