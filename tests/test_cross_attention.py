"""The gated cross-attention block has the official code's form and initialisation (model/cross_attention.py):
h + tanh(g) * Norm(CrossAttn(h)) with an unnormalised input, the norm copied from the post-attention norm,
the projections N(0, initializer_range)."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from transformers import Gemma2Config, Gemma2ForCausalLM  # noqa: E402

from model.cross_attention import ENCODER_MASK, ENCODER_STATES, add_cross_attention  # noqa: E402


def decoder_with_cross_attention(encoder_dim: int, **config: object) -> tuple[Gemma2ForCausalLM, list[torch.Tensor]]:
    """A tiny Gemma-2 with random (not Gemma's all-zero) norms, turned into a Florenz decoder; also the
    post-attention norm weights it had before."""
    torch.manual_seed(0)
    decoder = Gemma2ForCausalLM(Gemma2Config(vocab_size=50, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                                             **config)).eval()
    with torch.no_grad():
        for name, param in decoder.named_parameters():
            if "norm" in name:
                param.normal_(std=0.5)
    before = [layer.post_attention_layernorm.weight.detach().clone() for layer in decoder.model.layers]
    add_cross_attention(decoder, encoder_dim)
    return decoder, before


def test_block_is_the_output_normalised_gated_cross_attention():
    heads, kv_heads, head_dim, scalar, cap = 4, 2, 16, 8, 2.0  # scalar != head_dim, a cap the logits exceed
    decoder, before = decoder_with_cross_attention(24, hidden_size=64, num_hidden_layers=1, intermediate_size=128,
                                                   num_attention_heads=heads, num_key_value_heads=kv_heads,
                                                   head_dim=head_dim, query_pre_attn_scalar=scalar,
                                                   attn_logit_softcapping=cap)
    layer = decoder.model.layers[0]
    block = layer.cross_attn
    assert torch.equal(block.post_layernorm.weight, before[0]) and block.post_layernorm.weight.abs().sum() > 0
    with torch.no_grad():
        block.gate.fill_(0.7)
        block.q_proj.weight.mul_(20)
    x, encoder = torch.randn(2, 5, 64), torch.randn(2, 7, 24)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]])
    encoder[1, 4:] = 1e4  # padded positions that would dominate if they were attended
    positions = torch.arange(5)[None].expand(2, -1)
    rotary = decoder.model.rotary_emb(x, positions)
    with torch.no_grad():
        out = layer(x, position_embeddings=rotary, attention_mask=None, position_ids=positions,
                    **{ENCODER_STATES: encoder, ENCODER_MASK: mask})
        # by hand, from the layer's own submodules
        attn, _ = layer.self_attn(hidden_states=layer.input_layernorm(x), position_embeddings=rotary,
                                  attention_mask=None)
        h = x + layer.post_attention_layernorm(attn)
        q = (h @ block.q_proj.weight.T).view(2, 5, heads, head_dim).transpose(1, 2)
        k, v = ((encoder @ proj.weight.T).view(2, 7, kv_heads, head_dim).transpose(1, 2)
                .repeat_interleave(heads // kv_heads, dim=1) for proj in (block.k_proj, block.v_proj))
        scores = q @ k.transpose(-1, -2) / math.sqrt(scalar)
        assert scores.abs().max() > 2 * cap  # the soft cap is exercised
        scores = (cap * torch.tanh(scores / cap)).masked_fill(~mask[:, None, None, :].bool(), -math.inf)
        o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, -1) @ block.o_proj.weight.T
        norm = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + decoder.config.rms_norm_eps)
        h = h + math.tanh(0.7) * norm * (1 + block.post_layernorm.weight)
        expected = h + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
    assert torch.allclose(out, expected, atol=1e-5), (out - expected).abs().max()


def test_projections_norm_and_gate_are_initialised_as_the_official_code():
    std = 0.05  # not the default 0.02 and not what nn.Linear's own init gives: the config's value is used
    decoder, before = decoder_with_cross_attention(128, hidden_size=256, num_hidden_layers=2, intermediate_size=64,
                                                   num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                                   attention_bias=True, initializer_range=std)
    for layer, norm in zip(decoder.model.layers, before):
        block = layer.cross_attn
        assert block.gate.item() == 0.0
        assert torch.equal(block.post_layernorm.weight, norm)
        for proj in (block.q_proj, block.k_proj, block.v_proj, block.o_proj):
            weight = proj.weight.detach()
            assert abs(weight.mean().item()) < 1e-3
            assert abs(weight.std().item() / std - 1) < 0.02
            assert weight.abs().max() > 3 * std  # normal, not nn.Linear's bounded uniform
            assert torch.equal(proj.bias, torch.zeros_like(proj.bias))
