"""FlorenzModel: Florence-2's vision tower, projection and encoder, with a Gemma-2-tokenizer decoder.

Built from transformers' own modules (Florence2ForConditionalGeneration, BartDecoder, Gemma2ForCausalLM);
this file only wires them: image features go before the prompt's token embeddings into the encoder, and
the decoder attends to the encoder output (BART's own cross-attention, or the gated blocks of
model/cross_attention.py for Gemma-2).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Optional

import safetensors.torch
import torch
from torch import nn
from transformers import Florence2ForConditionalGeneration, Gemma2ForCausalLM
from transformers.models.bart.modeling_bart import BartScaledWordEmbedding

from model.configuration import DECODER_BART, PAPER_PARTS, PARTS, FlorenzConfig
from model.cross_attention import ENCODER_MASK, ENCODER_STATES, add_cross_attention
from model.losses import IGNORE_INDEX, labelled_loss, labelled_token_losses
from model.pixels import normalized
from model.toy_vision import DAVIT, VISION_TOWERS, PatchStem

WEIGHTS_NAME = "model.safetensors"
__all__ = ["FlorenzModel", "IGNORE_INDEX", "WEIGHTS_NAME", "load_weights"]


def load_weights(directory: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(Path(directory, WEIGHTS_NAME)), device=str(device))


class FlorenzModel(nn.Module):
    def __init__(self, config: FlorenzConfig, florence: Optional[Florence2ForConditionalGeneration] = None,
                 gemma: Optional[Gemma2ForCausalLM] = None):
        """Random weights from `config`, or the given pretrained Florence-2 (and Gemma-2) modules."""
        super().__init__()
        self.config = config
        self.loss_backend: Optional[str] = None  # torch.compile backend of the loss' elementwise part (run.compile)
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

    # -- frozen parts --------------------------------------------------------------------------------
    def frozen_parts(self) -> list[nn.Module]:
        """The image side's modules none of whose parameters require grad now: they run in eval mode
        (no drop_path/dropout: a frozen tower gives the same features every step) and without autograd."""
        return [part for part in (self.vision_tower, self.projector)
                if not any(p.requires_grad for p in part.parameters())]

    def _frozen_modes(self) -> list[nn.Module]:
        """Trainable parts follow the model's mode, frozen ones stay in eval; changes only what differs,
        so calling it every forward (requires_grad may have changed since train()) costs next to nothing.
        Returns the frozen parts."""
        frozen = self.frozen_parts()
        for part in (self.vision_tower, self.projector):
            mode = self.training and part not in frozen
            if part.training != mode:
                part.train(mode)
        return frozen

    def train(self, mode: bool = True) -> "FlorenzModel":
        super().train(mode)
        self._frozen_modes()
        return self

    # -- forward -------------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected image features; the frozen parts in eval mode and under no_grad (model.frozen_parts).
        `pixel_values` uint8 (normalized here, on the model's device) or already-normalized floats."""
        frozen = self._frozen_modes()
        with torch.no_grad() if self.vision_tower in frozen else contextlib.nullcontext():
            features = self.vision_tower(normalized(pixel_values)).last_hidden_state
        with torch.no_grad() if self.projector in frozen else contextlib.nullcontext():
            return self.projector(features)

    def encode(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states over [image features; prompt tokens], and their mask."""
        return self.encode_features(self.image_features(pixel_values), input_ids, attention_mask)

    def encode_features(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states over [projected image features; prompt tokens], and their mask."""
        text = self.encoder.embed_tokens(input_ids)
        embeds = torch.cat([image.to(text.dtype), text], dim=1)
        mask = torch.cat([attention_mask.new_ones(image.shape[:2]), attention_mask], dim=1)
        return self.encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state, mask

    @property
    def head(self) -> nn.Linear:
        """The LM head (its weight tied to the decoder's token embeddings)."""
        return self.lm_head if self.config.decoder_kind == DECODER_BART else self.decoder.lm_head

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """The LM head's [vocab, dim] weight."""
        return self.head.weight

    @property
    def logit_softcap(self) -> Optional[float]:
        """Gemma-2's final logit soft-capping (logits = tanh(x/c)·c), None for BART."""
        return None if self.config.gemma is None else self.config.gemma.final_logit_softcapping

    def decoder_states(self, decoder_input_ids: torch.Tensor, encoder_states: torch.Tensor,
                       encoder_mask: torch.Tensor, decoder_attention_mask: Optional[torch.Tensor] = None,
                       cache=None, use_cache: bool = False) -> tuple[torch.Tensor, object]:
        """The decoder's final hidden states (before the LM head) for every position; with `use_cache`,
        also the transformers Cache (created on the first call) that the next call continues from."""
        if self.config.decoder_kind == DECODER_BART:
            out = self.decoder(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
                               encoder_hidden_states=encoder_states, encoder_attention_mask=encoder_mask,
                               past_key_values=cache, use_cache=use_cache)
        else:
            out = self.decoder.model(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
                                     past_key_values=cache, use_cache=use_cache,
                                     **{ENCODER_STATES: encoder_states, ENCODER_MASK: encoder_mask})
        return out.last_hidden_state, out.past_key_values

    def decode(self, decoder_input_ids: torch.Tensor, encoder_states: torch.Tensor, encoder_mask: torch.Tensor,
               decoder_attention_mask: Optional[torch.Tensor] = None, cache=None, use_cache: bool = False
               ) -> tuple[torch.Tensor, object]:
        """Next-token logits for every decoder position (soft-capped for Gemma-2); with `use_cache`, also
        the Cache (see decoder_states)."""
        hidden, cache = self.decoder_states(decoder_input_ids, encoder_states, encoder_mask,
                                            decoder_attention_mask, cache, use_cache)
        logits = self.head(hidden)
        if (cap := self.logit_softcap) is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits, cache

    def token_losses(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     decoder_input_ids: torch.Tensor, decoder_attention_mask: torch.Tensor, labels: torch.Tensor,
                     label_positions: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample summed cross-entropy over the labelled tokens, and the number of those tokens; the
        LM head runs on the labelled positions only (model/losses.py). `label_positions`: their flat
        indices, when the caller computed them on the CPU (else found here, a host sync on a GPU)."""
        hidden = self.final_states(pixel_values, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)
        return labelled_token_losses(hidden, self.lm_head_weight, labels, self.logit_softcap, label_positions,
                                     backend=self.loss_backend)

    def final_states(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     decoder_input_ids: torch.Tensor, decoder_attention_mask: torch.Tensor) -> torch.Tensor:
        """The decoder's final hidden states of a teacher-forced batch: what the LM head reads."""
        encoder_states, encoder_mask = self.encode(pixel_values, input_ids, attention_mask)
        return self.decoder_states(decoder_input_ids, encoder_states, encoder_mask, decoder_attention_mask)[0]

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                decoder_input_ids: torch.Tensor, decoder_attention_mask: torch.Tensor, labels: torch.Tensor,
                label_positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean cross-entropy per labelled token: the training loss (model/losses.py labelled_loss)."""
        hidden = self.final_states(pixel_values, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)
        return labelled_loss(hidden, self.lm_head_weight, labels, self.logit_softcap, label_positions,
                             backend=self.loss_backend)

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
        self.train(self.training)  # frozen parts to eval, trainable ones back to the model's mode

    def blocks(self) -> list[nn.Module]:
        """The repeated layers of the encoder and the decoder: FSDP's shards and torch.compile's regions."""
        decoder_layers = self.decoder.layers if self.config.decoder_kind == DECODER_BART else self.decoder.model.layers
        return [*self.encoder.layers, *decoder_layers]

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
