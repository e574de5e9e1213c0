"""Gated cross-attention for the Gemma-2 decoders of Florenz-3.5B/11.2B (Flamingo-style).

Every Gemma-2 decoder layer gets, between its self-attention and its MLP, an attention block whose
keys/values come from the Florence-2 encoder output, scaled by tanh(gate) with the gate starting at 0:
at initialisation the decoder computes exactly what the pretrained Gemma-2 computes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Gemma2Config
from transformers.models.gemma2.modeling_gemma2 import Gemma2DecoderLayer, Gemma2RMSNorm

ENCODER_STATES = "encoder_hidden_states"
ENCODER_MASK = "encoder_attention_mask"


class GatedCrossAttention(nn.Module):
    """Multi-head (grouped-query) attention from decoder states to encoder states."""

    def __init__(self, config: Gemma2Config, encoder_dim: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                    config.head_dim)
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(encoder_dim, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(encoder_dim, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, hidden: torch.Tensor, encoder: torch.Tensor, encoder_mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, _ = hidden.shape
        q = self.q_proj(hidden).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(encoder).view(batch, -1, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(encoder).view(batch, -1, self.kv_heads, self.head_dim).transpose(1, 2)
        mask = None if encoder_mask is None else encoder_mask[:, None, None, :].bool()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.heads != self.kv_heads)
        return torch.tanh(self.gate) * self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class Gemma2CrossAttentionDecoderLayer(Gemma2DecoderLayer):
    """A Gemma-2 decoder layer with a gated cross-attention block after its self-attention.

    The encoder states arrive through the keyword arguments Gemma2Model passes to every layer."""

    def __init__(self, config: Gemma2Config, layer_idx: int, encoder_dim: int):
        super().__init__(config, layer_idx)
        self.cross_attn_layernorm = Gemma2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.cross_attn = GatedCrossAttention(config, encoder_dim)

    @torch.no_grad()
    def init_cross_attention(self) -> None:
        """The paper's initialisation: gate 0, layernorm copied from the post-attention norm."""
        self.cross_attn.gate.zero_()
        self.cross_attn_layernorm.weight.copy_(self.post_attention_layernorm.weight)

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None,
                position_ids=None, past_key_values=None, **kwargs) -> torch.Tensor:
        encoder = kwargs.pop(ENCODER_STATES)
        encoder_mask = kwargs.pop(ENCODER_MASK, None)
        residual = hidden_states
        hidden_states, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states),
                                          position_embeddings=position_embeddings, attention_mask=attention_mask,
                                          position_ids=position_ids, past_key_values=past_key_values, **kwargs)
        hidden_states = residual + self.post_attention_layernorm(hidden_states)
        hidden_states = hidden_states + self.cross_attn(self.cross_attn_layernorm(hidden_states), encoder,
                                                        encoder_mask)
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
            if unexpected or not all(k.startswith("cross_attn") for k in missing):
                raise RuntimeError(f"layer {index} does not match its twin: {missing=} {unexpected=}")
            new.init_cross_attention()
        layers[index] = new
