"""Training checkpoints that resume exactly: model, optimizer, scheduler, step, counters, every data
stream's position and every process's RNG state. Written to a temporary folder and renamed, then the
`latest` pointer is replaced: a checkpoint is complete or absent.

A checkpoint folder holds `model/` (config JSON + safetensors weights), `training_state.safetensors`
(every tensor of the optimizer state and the RNG states) and `training_state.json` (everything else,
with tensors referenced by name). Nothing is unpickled on the way back in: a checkpoint folder or a
`latest` pointer from someone else can fail to load, but cannot run code.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import safetensors.torch
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from model.modeling import WEIGHTS_NAME, FlorenzModel

LATEST = "latest"
CHECKPOINT_NAME = re.compile(r"step-\d{8,}")  # what save_checkpoint names a folder
STATE_JSON = "training_state.json"
STATE_TENSORS = "training_state.safetensors"
OLD_PICKLE = "training_state.pt"  # the former format: never read, only named in the error
FORMAT = 1
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
# JSON tags: {"__tensor__": name} | {"__tuple__": [...]} | {"__items__": [[key, value], ...]}
TENSOR, TUPLE, ITEMS = "__tensor__", "__tuple__", "__items__"
FIELDS = {"step": int, "counters": dict, "positions": dict, "scheduler": dict, "optimizer": dict, "rng": list}


class CheckpointError(ValueError):
    """A checkpoint or `latest` pointer that cannot be resumed from; the message names the file.
    The CLI prints it as one line."""

    def __init__(self, path: Path, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


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


# -- tensors + JSON, no pickle -------------------------------------------------------------------------
def _to_json(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` as plain JSON: its tensors moved into `tensors` and referenced by name; tuples and dicts
    with non-string keys (positions are keyed by stream number) tagged so they come back as they were.
    Anything else is refused rather than saved as something it was not."""
    if isinstance(value, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = value.detach().cpu().contiguous()
        return {TENSOR: name}
    if isinstance(value, tuple):
        return {TUPLE: [_to_json(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_to_json(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not {TENSOR, TUPLE, ITEMS} & value.keys():
            return {k: _to_json(v, tensors) for k, v in value.items()}
        return {ITEMS: [[_to_json(k, tensors), _to_json(v, tensors)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a checkpoint cannot hold a {type(value).__name__}")


def _from_json(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of _to_json; ValueError or TypeError on a structure _to_json does not write."""
    if isinstance(value, list):
        return [_from_json(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and (tag := next(iter(value))) in (TENSOR, TUPLE, ITEMS):
        body = value[tag]
        if tag == TENSOR:
            if not isinstance(body, str) or body not in tensors:
                raise ValueError(f"refers to tensor {body!r}, which {STATE_TENSORS} does not hold")
            return tensors[body]
        if not isinstance(body, list):
            raise ValueError(f"{tag} holds a {type(body).__name__}, not a list")
        if tag == TUPLE:
            return tuple(_from_json(v, tensors) for v in body)
        return {_from_json(k, tensors): _from_json(v, tensors) for k, v in body}
    return {k: _from_json(v, tensors) for k, v in value.items()}


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (a JSON header and raw bytes: nothing in it can run)."""
    if not file.is_file():
        raise CheckpointError(file, "missing")
    try:
        return safetensors.torch.load_file(str(file))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(file, f"not a readable safetensors file ({error})") from None


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        old = f" (its {OLD_PICKLE}, the former pickle format, is never loaded: it could run code)" \
            if (file.parent / OLD_PICKLE).exists() else ""
        raise CheckpointError(file, f"missing{old}")
    try:
        raw = json.loads(file.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise CheckpointError(file, f"not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(file, f"holds a JSON {type(raw).__name__}, not an object")
    return raw


def write_training_state(folder: Path, state: dict[str, Any]) -> None:
    """`state`'s tensors to STATE_TENSORS, the rest (referring to them by name) to STATE_JSON."""
    tensors: dict[str, torch.Tensor] = {}
    encoded = _to_json(state, tensors)
    safetensors.torch.save_file(tensors, str(folder / STATE_TENSORS))
    (folder / STATE_JSON).write_text(json.dumps({"format": FORMAT, **encoded}), encoding="utf-8")


def read_training_state(folder: Path) -> dict[str, Any]:
    """What write_training_state wrote, checked field by field; CheckpointError naming the file when
    it is missing, unreadable or not of this format."""
    file = folder / STATE_JSON
    raw = _read_json(file)
    tensors = _read_tensors(folder / STATE_TENSORS)
    if raw.get("format") != FORMAT:
        raise CheckpointError(file, f"format {raw.get('format')!r}, expected {FORMAT}")
    try:
        state = _from_json(raw, tensors)
    except (ValueError, TypeError, RecursionError) as error:
        raise CheckpointError(file, f"malformed training state: {error}") from None
    for name, kind in FIELDS.items():
        if type(state.get(name)) is not kind:
            raise CheckpointError(file, f"field {name!r} is missing or not of type {kind.__name__}")
    return state


# -- the checkpoint folder and its pointer ----------------------------------------------------------------
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
    write_training_state(tmp, {"step": step, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                               "counters": counters, "positions": all_positions, "rng": rngs})
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
    """The checkpoint folder `root/latest` names, None before the first checkpoint. The pointer may only
    hold a checkpoint's name, a folder directly inside `root`: a copied or tampered run folder must not
    send the resume to files elsewhere."""
    pointer = root / LATEST
    if not pointer.exists() and not pointer.is_symlink():
        return None
    try:
        with open(pointer, "rb") as f:
            name = f.read(256).decode("utf-8", "replace").strip()
    except OSError as error:
        raise CheckpointError(pointer, f"unreadable ({error})") from None
    if not CHECKPOINT_NAME.fullmatch(name):
        raise CheckpointError(pointer, f"holds {name[:100]!r}, not the name of a checkpoint in this folder "
                                       f"(step-NNNNNNNN)")
    folder = root / name
    if not folder.is_dir():
        raise CheckpointError(pointer, f"names {name}, which is not a checkpoint folder in {root}")
    if folder.resolve().parent != root.resolve():
        raise CheckpointError(pointer, f"names {name}, a link to {folder.resolve()}, outside {root}")
    return folder


def load_checkpoint(path: Path, model: FlorenzModel, optimizer, scheduler,
                    trained_at: Optional[Callable[[int], Any]] = None) -> dict:
    """Restores model, optimizer and scheduler in place; returns the rest (step, counters, positions,
    this process's RNG state, to be set once the data loader is started). `trained_at(step)` first sets
    requires_grad as it was in the checkpoint's last step: torch's loader keeps optimizer state only for
    parameters that require grad, and invents state for any that require grad but have none saved."""
    weights = path / "model" / WEIGHTS_NAME
    state = read_training_state(path)
    if trained_at is not None:
        trained_at(state["step"])
    try:
        set_model_state_dict(model, model.with_tied(_read_tensors(weights)), options=FULL)
    except (RuntimeError, KeyError) as error:  # keys or shapes of another model
        raise CheckpointError(weights, f"does not fit this model ({' '.join(str(error).split())[:300]})") from None
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=FULL)
    scheduler.load_state_dict(state["scheduler"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    if len(state["rng"]) != (dist.get_world_size() if dist.is_initialized() else 1):
        raise CheckpointError(path / STATE_JSON, f"written by {len(state['rng'])} processes; resume with as many")
    return {"step": state["step"], "counters": state["counters"], "positions": state["positions"],
            "rng": state["rng"][rank]}
