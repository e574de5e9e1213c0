"""Training checkpoints that resume exactly: model, optimizer, scheduler, step, counters, every data
stream's position and every process's RNG state. Written to a temporary folder and renamed, then the
`latest` pointer is replaced: a checkpoint is complete or absent."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from model.modeling import FlorenzModel, load_weights

LATEST = "latest"
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _gather(obj: Any) -> list[Any]:
    if not dist.is_initialized():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, model: FlorenzModel, optimizer, scheduler, counters: dict,
                    positions: dict, keep: int) -> None:
    """Collective: every process calls it; rank 0 writes."""
    model_state = get_model_state_dict(model, options=FULL)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=FULL)
    all_positions = {k: v for part in _gather(positions) for k, v in part.items()}
    rngs = _gather(rng_state())
    if dist.is_initialized() and dist.get_rank() != 0:
        dist.barrier()
        return
    name = f"step-{step:08d}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "model", state_dict=model_state)
    torch.save({"step": step, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                "counters": counters, "positions": all_positions, "rng": rngs}, tmp / "training_state.pt")
    shutil.rmtree(root / name, ignore_errors=True)
    os.replace(tmp, root / name)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(name)
    os.replace(pointer, root / LATEST)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old)
    if dist.is_initialized():
        dist.barrier()


def latest_checkpoint(root: Path) -> Optional[Path]:
    pointer = root / LATEST
    return root / pointer.read_text().strip() if pointer.exists() else None


def load_checkpoint(path: Path, model: FlorenzModel, optimizer, scheduler) -> dict:
    """Restores model, optimizer and scheduler in place; returns the rest (step, counters, positions,
    this process's RNG state, to be set once the data loader is started)."""
    set_model_state_dict(model, model.with_tied(load_weights(path / "model")), options=FULL)
    state = torch.load(path / "training_state.pt", weights_only=False)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=FULL)
    scheduler.load_state_dict(state["scheduler"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    if len(state["rng"]) != (dist.get_world_size() if dist.is_initialized() else 1):
        raise ValueError(f"{path} was written by {len(state['rng'])} processes; resume with as many")
    return {"step": state["step"], "counters": state["counters"], "positions": state["positions"],
            "rng": state["rng"][rank]}
