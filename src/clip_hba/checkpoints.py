"""Run directories: trained weights, optimizer state and progress, as safetensors + JSON.

A run directory holds ``config.json`` (the resolved configuration), ``adapter.safetensors`` (the
best epoch's trained weights: adapters and head only, never the base model), ``last.safetensors``
(the last finished epoch with optimizer and random-generator state, and the progress that
``--resume`` trusts, in one file so they can never disagree; ``state.json`` is a readable copy),
``log.jsonl`` and ``metrics.json``. Nothing is pickled and every file is written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from clip_hba._io import write_atomic
from clip_hba._validation import InputError

__all__ = [
    "CONFIG_FILE",
    "LAST_FILE",
    "LOG_FILE",
    "METRICS_FILE",
    "STATE_FILE",
    "WEIGHTS_FILE",
    "load_metadata",
    "load_tensors",
    "optimizer_from_tensors",
    "optimizer_tensors",
    "read_json",
    "save_tensors",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "adapter.safetensors"
LAST_FILE = "last.safetensors"
STATE_FILE = "state.json"
LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None
) -> Path:
    """Write tensors (and JSON-able ``metadata``) to a safetensors file atomically."""
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = None if metadata is None else {"clip_hba": json.dumps(metadata)}
    return write_atomic(path, lambda tmp: save_file(flat, str(tmp), metadata=header))


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file; `InputError` if it is missing or damaged."""
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise InputError(f"Cannot read weights {path}: {err}") from None


def load_metadata(path: str | os.PathLike) -> dict:
    """The ``metadata`` saved with `save_tensors` (empty if none)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (OSError, SafetensorError) as err:
        raise InputError(f"Cannot read weights {path}: {err}") from None
    return json.loads(header.get("clip_hba", "{}"))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; `InputError` if it is missing or damaged."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"Cannot read {path}: {err}") from None


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """An optimizer's state as flat tensors plus its (JSON-able) parameter groups."""
    state = optimizer.state_dict()
    tensors = {
        f"optimizer.{index}.{name}": torch.as_tensor(value)
        for index, entries in state["state"].items()
        for name, value in entries.items()
    }
    return tensors, state["param_groups"]


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list
) -> None:
    """Restore what `optimizer_tensors` saved."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
