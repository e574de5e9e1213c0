"""Gated cross-attention for the Gemma-2 decoders of Florenz-3.5B/11.2B, as the paper's official code has it.

Every Gemma-2 decoder layer gets, between its self-attention block and its MLP block, the block

    h <- h + tanh(gate) * Norm(o_proj(Attn(q_proj(h), k_proj(enc), v_proj(enc))))

Followed line by line: spravil/caption-via-translation (commit a77d467),
src/caption_via_translation/models/gemma2.py:
- lines 1149-1240 (FlorenceGemma2CrossAttention): q from the *unnormalised* residual stream, k/v from the
  encoder output (encoder_hidden_size wide), Gemma-2's head layout (num_attention_heads query heads,
  num_key_value_heads key/value heads, head_dim), no rotary embedding, scaling query_pre_attn_scalar**-0.5,
  logits soft-capped at attn_logit_softcapping, bias iff attention_bias, then o_proj;
- lines 1255-1258, 1314-1332 (FlorenceGemma2DecoderLayer): after `h = h + post_attention_layernorm(attn)`,
  `h = h + post_encoder_attention_layernorm(cross_attn(h)) * tanh(encoder_attn_gate)`, the gate a
  parameter initialised to 0.0, then Gemma-2's MLP block unchanged;
- lines 1362-1367 (_init_weights): the new projections N(0, initializer_range), biases 0;
- src/prepare.py lines 196-197: the output norm starts as a copy of the layer's post_attention_layernorm;
- the paper's configs (data/pretrained/FlorenceGemma2-{large,xlarge}/config.json) set
  `_attn_implementation: eager`, so the attention here is always transformers' Gemma-2 eager attention
  (the same function as the official lines 308-340), with the encoder's padding mask made additive
  (dtype-min on padded positions) as the official line 1487 does with `_prepare_4d_attention_mask`.
At gate 0 the layer computes exactly what the pretrained Gemma-2 layer computes.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import Gemma2Config
from transformers.models.gemma2.modeling_gemma2 import (Gemma2DecoderLayer, Gemma2RMSNorm,
                                                        eager_attention_forward)

ENCODER_STATES = "encoder_hidden_states"
ENCODER_MASK = "encoder_attention_mask"


class GatedCrossAttention(nn.Module):
    """The whole gated block (attention, output norm, gate), so that `.cross_attn` names every trained part."""

    def __init__(self, config: Gemma2Config, encoder_dim: int):
        super().__init__()
        self.config = config
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads  # read by the eager fn
        self.scaling = config.query_pre_attn_scalar ** -0.5
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(encoder_dim, config.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(encoder_dim, config.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=bias)
        self.post_layernorm = Gemma2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gate = nn.Parameter(torch.zeros(1))

    @torch.no_grad()
    def init_from(self, post_attention_layernorm: Gemma2RMSNorm) -> None:
        """The official initialisation: projections N(0, initializer_range), biases 0, the output norm a copy
        of the layer's post-attention norm, gate 0 (the layer starts as the pretrained one)."""
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            proj.weight.normal_(mean=0.0, std=self.config.initializer_range)
            if proj.bias is not None:
                proj.bias.zero_()
        self.post_layernorm.weight.copy_(post_attention_layernorm.weight)
        self.gate.zero_()

    def forward(self, hidden: torch.Tensor, encoder: torch.Tensor, encoder_mask: torch.Tensor | None) -> torch.Tensor:
        """tanh(gate) * Norm(CrossAttn(hidden)): the residual update, added by the caller."""
        batch, length, _ = hidden.shape
        q = self.q_proj(hidden).view(batch, length, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(encoder).view(batch, encoder.shape[1], -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(encoder).view(batch, encoder.shape[1], -1, self.head_dim).transpose(1, 2)
        mask = None
        if encoder_mask is not None:
            mask = torch.zeros(encoder_mask.shape, dtype=hidden.dtype, device=hidden.device)
            mask = mask.masked_fill(~encoder_mask.bool(), torch.finfo(hidden.dtype).min)[:, None, None, :]
        out, _ = eager_attention_forward(self, q, k, v, mask,
                                         dropout=self.config.attention_dropout if self.training else 0.0,
                                         scaling=self.scaling, softcap=self.config.attn_logit_softcapping)
        out = self.o_proj(out.reshape(batch, length, -1))
        return self.post_layernorm(out) * self.gate.tanh()


class Gemma2CrossAttentionDecoderLayer(Gemma2DecoderLayer):
    """A Gemma-2 decoder layer with the gated cross-attention block after its self-attention block.

    The encoder states arrive through the keyword arguments Gemma2Model passes to every layer."""

    def __init__(self, config: Gemma2Config, layer_idx: int, encoder_dim: int):
        super().__init__(config, layer_idx)
        self.cross_attn = GatedCrossAttention(config, encoder_dim)

    def init_cross_attention(self) -> None:
        self.cross_attn.init_from(self.post_attention_layernorm)

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None,
                position_ids=None, cache=None, **kwargs) -> torch.Tensor:
        encoder = kwargs.pop(ENCODER_STATES)
        encoder_mask = kwargs.pop(ENCODER_MASK, None)
        residual = hidden_states
        hidden_states, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states),
                                          position_embeddings=position_embeddings, attention_mask=attention_mask,
                                          position_ids=position_ids, cache=cache, **kwargs)
        hidden_states = residual + self.post_attention_layernorm(hidden_states)
        hidden_states = hidden_states + self.cross_attn(hidden_states, encoder, encoder_mask)
        residual = hidden_states
        hidden_states = self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(hidden_states)))
        return residual + hidden_states


def add_cross_attention(decoder: nn.Module, encoder_dim: int) -> None:
    """Replace every layer of a Gemma2ForCausalLM with its cross-attention twin, keeping its weights."""
    config = decoder.config
    layers = decoder.model.layers
    for index, layer in enumerate(layers):
        device = layer.input_layernorm.weight.device
        with torch.device(device):
            new = Gemma2CrossAttentionDecoderLayer(config, index, encoder_dim)
        new.to(layer.input_layernorm.weight.dtype)
        if device.type != "meta":
            missing, unexpected = new.load_state_dict(layer.state_dict(), strict=False)
            if unexpected or not all(k.startswith("cross_attn.") for k in missing):
                raise RuntimeError(f"layer {index} does not match its twin: {missing=} {unexpected=}")
            new.init_cross_attention()
        layers[index] = new
