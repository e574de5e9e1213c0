"""FlorenzModel: Florence-2's vision tower, projection and encoder, with a Gemma-2-tokenizer decoder.

Built from transformers' own modules (Florence2ForConditionalGeneration, BartDecoder, Gemma2ForCausalLM);
this file only wires them: image features go before the prompt's token embeddings into the encoder, and
the decoder attends to the encoder output (BART's own cross-attention, or the gated blocks of
model/cross_attention.py for Gemma-2).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Florence2ForConditionalGeneration, Gemma2ForCausalLM
from transformers.models.bart.modeling_bart import BartScaledWordEmbedding

from model.configuration import DECODER_BART, PAPER_PARTS, PARTS, FlorenzConfig
from model.pixels import normalized
from model.cross_attention import ENCODER_MASK, ENCODER_STATES, add_cross_attention
from model.toy_vision import DAVIT, VISION_TOWERS, PatchStem

WEIGHTS_NAME = "model.safetensors"
IGNORE_INDEX = -100


def load_weights(directory: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(Path(directory, WEIGHTS_NAME)), device=str(device))


class FlorenzModel(nn.Module):
    def __init__(self, config: FlorenzConfig, florence: Optional[Florence2ForConditionalGeneration] = None,
                 gemma: Optional[Gemma2ForCausalLM] = None):
        """Random weights from `config`, or the given pretrained Florence-2 (and Gemma-2) modules."""
        super().__init__()
        self.config = config
        florence = florence if florence is not None else Florence2ForConditionalGeneration(config.florence)
        base = florence.model
        if config.vision_tower not in VISION_TOWERS:
            raise ValueError(f"unknown vision tower {config.vision_tower!r}; known: {', '.join(VISION_TOWERS)}")
        self.vision_tower = (base.vision_tower if config.vision_tower == DAVIT
                             else PatchStem(config.florence.vision_config))
        self.projector = base.multi_modal_projector
        self.encoder = base.language_model.encoder
        if config.decoder_kind == DECODER_BART:
            text = config.florence.text_config
            self.decoder = base.language_model.decoder
            scale = self.decoder.embed_tokens.embed_scale
            self.decoder.embed_tokens = BartScaledWordEmbedding(config.decoder_vocab_size, text.d_model,
                                                                config.decoder_pad_token_id, embed_scale=scale)
            nn.init.normal_(self.decoder.embed_tokens.weight, std=text.init_std)
            self.lm_head = nn.Linear(text.d_model, config.decoder_vocab_size, bias=False)
            self.lm_head.weight = self.decoder.embed_tokens.weight  # tied, as in Florence-2
        else:
            gemma = gemma if gemma is not None else Gemma2ForCausalLM(config.gemma)
            add_cross_attention(gemma, config.encoder_dim)
            self.decoder = gemma

    @staticmethod
    def image_tokens(image_size: int) -> int:
        """Encoder positions an image takes: DaViT's 32x-downsampled grid, plus one temporal token."""
        return (image_size // 32) ** 2 + 1

    # -- forward -------------------------------------------------------------------------------------
    def encode(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states over [image features; prompt tokens], and their mask. `pixel_values` uint8
        (normalized here, on the model's device) or already-normalized floats."""
        image = self.projector(self.vision_tower(normalized(pixel_values)).last_hidden_state)
        text = self.encoder.embed_tokens(input_ids)
        embeds = torch.cat([image.to(text.dtype), text], dim=1)
        mask = torch.cat([attention_mask.new_ones(image.shape[:2]), attention_mask], dim=1)
        return self.encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state, mask

    def decode(self, decoder_input_ids: torch.Tensor, encoder_states: torch.Tensor, encoder_mask: torch.Tensor,
               decoder_attention_mask: Optional[torch.Tensor] = None, cache=None, use_cache: bool = False
               ) -> tuple[torch.Tensor, object]:
        """Next-token logits for every decoder position; with `use_cache`, also the transformers Cache
        (created on the first call) that the next call continues from."""
        if self.config.decoder_kind == DECODER_BART:
            out = self.decoder(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
                               encoder_hidden_states=encoder_states, encoder_attention_mask=encoder_mask,
                               past_key_values=cache, use_cache=use_cache)
            return self.lm_head(out.last_hidden_state), out.past_key_values
        out = self.decoder(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
                           past_key_values=cache, use_cache=use_cache,
                           **{ENCODER_STATES: encoder_states, ENCODER_MASK: encoder_mask})
        return out.logits, out.past_key_values

    def token_losses(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     decoder_input_ids: torch.Tensor, decoder_attention_mask: torch.Tensor, labels: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample summed cross-entropy over the labelled tokens, and the number of those tokens."""
        encoder_states, encoder_mask = self.encode(pixel_values, input_ids, attention_mask)
        logits, _ = self.decode(decoder_input_ids, encoder_states, encoder_mask, decoder_attention_mask)
        losses = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
        return losses.sum(dim=1), (labels != IGNORE_INDEX).sum(dim=1)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                decoder_input_ids: torch.Tensor, decoder_attention_mask: torch.Tensor, labels: torch.Tensor
                ) -> torch.Tensor:
        """Mean cross-entropy per labelled token: the training loss."""
        losses, tokens = self.token_losses(pixel_values, input_ids, attention_mask, decoder_input_ids,
                                           decoder_attention_mask, labels)
        return losses.sum() / tokens.sum().clamp(min=1)

    # -- training policy -----------------------------------------------------------------------------
    @staticmethod
    def part_of(name: str) -> str:
        """The freezing-policy part (configuration.PARTS) a parameter, by its name here, belongs to."""
        top = name.split(".", 1)[0]
        if top in ("vision_tower", "projector", "encoder"):
            return top
        if top == "lm_head" or name.startswith("decoder.lm_head.") or name.endswith("embed_tokens.weight"):
            return "decoder_embeddings"  # the tied token embeddings / LM head
        if ".cross_attn." in name or ".encoder_attn" in name:  # Gemma-2's gated blocks, BART's own
            return "decoder_cross_attention"
        return "decoder_layers"

    def set_trainable(self, parts: Optional[Iterable[str]] = None) -> None:
        """Trains exactly the parameters of `parts` (configuration.PARTS). Default, the paper's freezing:
        the vision tower and image projection frozen, the encoder trained; Florence-2's decoder trained;
        a Gemma-2 decoder frozen except its cross-attention blocks (with gate and norm), token embeddings
        and LM head."""
        chosen = set(PAPER_PARTS[self.config.decoder_kind] if parts is None else parts)
        if unknown := chosen - set(PARTS):
            raise ValueError(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
        for name, param in self.named_parameters():  # a tied tensor once, under its embedding name
            param.requires_grad_(self.part_of(name) in chosen)

    def parameter_counts(self) -> dict[str, int]:
        """Unique parameters (tied ones once), in total and trainable."""
        params = list(self.parameters())  # nn.Module.parameters() yields a shared tensor once
        return {"total": sum(p.numel() for p in params),
                "trainable": sum(p.numel() for p in params if p.requires_grad)}

    # -- persistence ---------------------------------------------------------------------------------
    def tied_keys(self) -> dict[str, str]:
        """State-dict keys that are the token embeddings under another name (not saved) -> that name."""
        if self.config.decoder_kind == DECODER_BART:
            return {"lm_head.weight": "decoder.embed_tokens.weight"}
        return {"decoder.lm_head.weight": "decoder.model.embed_tokens.weight"}

    def with_tied(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A saved state dict completed with the tied keys it leaves out."""
        return {**state, **{tied: state[source] for tied, source in self.tied_keys().items()}}

    def save_pretrained(self, directory: str | Path, state_dict: Optional[dict[str, torch.Tensor]] = None) -> None:
        """config + safetensors weights; `state_dict` when the caller gathered it (FSDP)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.config.save(directory)
        state = state_dict if state_dict is not None else self.state_dict()
        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items() if k not in self.tied_keys()}
        safetensors.torch.save_file(tensors, str(Path(directory, WEIGHTS_NAME)))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "FlorenzModel":
        """A Florenz model saved by save_pretrained (a training checkpoint's model folder)."""
        config = FlorenzConfig.load(directory)
        with torch.device(device):  # real init, not meta: non-persistent buffers (rotary, scales) need values
            model = cls(config)
        model.load_state_dict(model.with_tied(load_weights(directory, device)))
        model.tie_weights()
        return model

    def tie_weights(self) -> None:
        if self.config.decoder_kind == DECODER_BART:
            self.lm_head.weight = self.decoder.embed_tokens.weight
        else:
            self.decoder.lm_head.weight = self.decoder.model.embed_tokens.weight
