"""Which parameters train at each step: the freezing policy's parts (train_config.TrainableConfig), less
the layers scheduled unfreezing (SUF) has not reached yet.

SUF orders the scheduled parts' layers from the top of the network down: the decoder's layers from its
last to its first, then the encoder's from its last to its first. Parameters of a scheduled part that
sit outside its layers go with the layer next to them in the forward pass: final norms with the top
layer, embeddings (token and position embeddings, their norm) with the bottom one, so the encoder's
language-specific token embeddings unfreeze last. Stage k (steps k·steps_per_stage onwards) trains the
top (k+1)·layers_per_stage layers; parts the schedule does not name train from the first step.

The trainable set is a pure function of (config, step): a resumed run recomputes it from the step its
checkpoint holds.
"""
from __future__ import annotations

import re
from typing import Optional

from torch import nn

from model.modeling import FlorenzModel
from model.train_config import TrainableConfig

LAYER = re.compile(r"\.layers\.(\d+)\.")
FINAL_NORMS = (".norm.", ".layer_norm.")  # outside the layers, after them: Gemma-2's and BART's final norms


class TrainableSchedule:
    """The trainable parameters of a run, step by step. Construction applies the whole policy (every
    part that ever trains), which is what the optimizer is built over."""

    def __init__(self, model: FlorenzModel, config: TrainableConfig):
        model.set_trainable(config.parts_for(model.config.decoder_kind))
        self.policy: dict[str, nn.Parameter] = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.schedule = config.unfreeze
        self.units = self._units(model) if self.schedule else []  # parameter names per layer, top first
        self.applied: Optional[int] = None  # how many units the current requires_grad flags unfreeze

    def _units(self, model: FlorenzModel) -> list[list[str]]:
        scheduled = set(self.schedule.parts)
        units = []
        for block in ("decoder", "encoder"):  # top of the network first
            layers: dict[int, list[str]] = {}
            before, after = [], []  # outside the layers: embeddings before them, final norms after them
            for name in self.policy:
                if model.part_of(name) not in scheduled or not name.startswith(block + "."):
                    continue
                if match := LAYER.search(name):
                    layers.setdefault(int(match.group(1)), []).append(name)
                else:
                    (after if any(norm in name for norm in FINAL_NORMS) else before).append(name)
            if not layers:
                continue
            ordered = [layers[i] for i in sorted(layers, reverse=True)]
            ordered[0] = after + ordered[0]
            ordered[-1] = ordered[-1] + before
            units.extend(ordered)
        if not units:
            raise ValueError(f"scheduled unfreezing of {list(self.schedule.parts)}: this model has no such layers")
        return units

    def unfrozen(self, step: int) -> int:
        """How many layers (units) of the schedule train at `step` (0-based: the step about to run)."""
        if not self.schedule:
            return 0
        stage = step // self.schedule.steps_per_stage
        return min(len(self.units), (stage + 1) * self.schedule.layers_per_stage)

    def trainable(self, step: int) -> set[str]:
        """Names of the parameters that train at `step`."""
        frozen = {name for unit in self.units[self.unfrozen(step):] for name in unit}
        return self.policy.keys() - frozen

    def apply(self, step: int) -> bool:
        """Sets requires_grad for `step`; True when that changed the trainable set (or on the first call).
        A parameter not yet unfrozen gets no gradient (None, not zero), so AdamW neither updates it nor
        decays it nor creates its state."""
        count = self.unfrozen(step)
        if count == self.applied:
            return False
        trainable = self.trainable(step)
        for name, param in self.policy.items():
            param.requires_grad_(name in trainable)
        self.applied = count
        return True
