"""Inference: a trained run (or a base model) -> 66-d embeddings with concept and image ids."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clip_hba._io import write_atomic
from clip_hba._validation import InputError
from clip_hba.backbones import load_backbone
from clip_hba.checkpoints import CONFIG_FILE
from clip_hba.embeddings import ConceptEmbedding
from clip_hba.inputs import ConceptInputs, InputConfig
from clip_hba.models import BehaviorModel, HeadConfig, select_inputs, to_device
from clip_hba.rsa import rdm
from clip_hba.things import load_spose_labels

__all__ = [
    "embed",
    "embed_layers",
    "load_model",
    "meg_embeddings",
    "save_embedding",
    "save_layer_embedding",
    "save_time_embedding",
]

OUTPUT_SUFFIXES = (".npz", ".csv", ".tsv")


def load_model(
    model: str | os.PathLike, data_dir: str | os.PathLike | None = None, device: str = "auto"
) -> tuple[BehaviorModel, InputConfig]:
    """A trained run directory, or a base model (hub id or folder) with the prompt-cosine head.

    Returns the model and the input settings it expects (a run's own; defaults for a base).
    """
    from clip_hba.train import load_run, resolve_device, run_config

    path = Path(model)
    if (path / CONFIG_FILE).is_file() and (path / "adapter.safetensors").is_file():
        return load_run(path, device), run_config(path).inputs
    backbone = load_backbone(model)
    base = BehaviorModel(backbone, load_spose_labels(data_dir), HeadConfig())
    return base.to(resolve_device(device)).eval(), InputConfig()


def embed(model: BehaviorModel, inputs: ConceptInputs, batch_size: int = 64) -> ConceptEmbedding:
    """Predicted behavioural dimensions of every input, deterministic and batch-independent.

    Returns
    -------
    ConceptEmbedding, shape (n_inputs, n_labels), labelled with the model's labels.
    """
    if batch_size < 1:
        raise InputError(f"Invalid value for 'batch_size': expected >= 1, got {batch_size}.")
    values = model.predict(inputs.tensors, batch_size)
    return ConceptEmbedding(values, inputs.concept_ids, model.labels)


def embed_layers(model: BehaviorModel, inputs: ConceptInputs, batch_size: int = 64) -> np.ndarray:
    """Every block's pooled feature of every input (see `Tower.layer_features`).

    Returns
    -------
    ndarray, shape (n_blocks, n_inputs, feature_dim), float64; batch-independent (eval mode).
    """
    if batch_size < 1:
        raise InputError(f"Invalid value for 'batch_size': expected >= 1, got {batch_size}.")
    tower = model.concept_tower
    modes = {module: module.training for module in model.modules()}
    model.eval()
    n = len(inputs)
    parts = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            rows = range(start, min(start + batch_size, n))
            batch = to_device(select_inputs(inputs.tensors, rows), model.device)
            parts.append(tower.layer_features(batch).cpu().double().numpy())
    for module, training in modes.items():
        module.training = training
    return np.concatenate(parts, axis=1)


def meg_embeddings(model: Any, inputs: ConceptInputs, batch_size: int = 50) -> np.ndarray:
    """A MEG model's per-timepoint embeddings, noise off, (T, N, 66); batch-independent."""
    if batch_size < 1:
        raise InputError(f"Invalid value for 'batch_size': expected >= 1, got {batch_size}.")
    parts = []
    n = len(inputs)
    model.eval()
    with torch.no_grad():
        for start in range(0, n, batch_size):
            rows = range(start, min(start + batch_size, n))
            batch = to_device(select_inputs(inputs.tensors, rows), model.device)
            parts.append(model(batch).cpu().double().numpy())
    return np.concatenate(parts, axis=1)


def save_time_embedding(
    path: str | os.PathLike,
    embeddings: np.ndarray,
    times_ms: np.ndarray,
    concept_ids: tuple[str, ...],
    item_ids: tuple[str, ...],
    labels: tuple[str, ...],
    with_rdm: bool = False,
) -> Path:
    """Write time-resolved embeddings (T, N, D) as ``.npz`` with ``embedding``, ``times_ms``,
    ``concept_ids``, ``image_ids``, ``labels`` and, with ``with_rdm``, ``rdm`` (T, pairs)."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise InputError(f"Time-resolved embeddings go into an .npz file, got {path}.")
    arrays = {
        "embedding": embeddings,
        "times_ms": np.asarray(times_ms, dtype=np.float64),
        "concept_ids": np.array(concept_ids),
        "image_ids": np.array(item_ids),
        "labels": np.array(labels),
    }
    if with_rdm:
        arrays["rdm"] = rdm(embeddings, "pearson")

    def write_npz(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(handle, **arrays)

    return write_atomic(path, write_npz)


def save_layer_embedding(
    path: str | os.PathLike,
    features: np.ndarray,
    concept_ids: tuple[str, ...],
    item_ids: tuple[str, ...],
) -> Path:
    """Write layer-wise features (L, N, D) as ``.npz`` with ``embedding``, ``concept_ids``,
    ``image_ids`` and ``layers`` (``block_1`` ... ``block_L``), atomically."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise InputError(f"Layer-wise features go into an .npz file, got {path}.")
    arrays = {
        "embedding": features,
        "concept_ids": np.array(concept_ids),
        "image_ids": np.array(item_ids),
        "layers": np.array([f"block_{k + 1}" for k in range(features.shape[0])]),
    }

    def write_npz(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(handle, **arrays)

    return write_atomic(path, write_npz)


def save_embedding(
    path: str | os.PathLike,
    embedding: ConceptEmbedding,
    item_ids: tuple[str, ...],
    with_rdm: bool = False,
) -> Path:
    """Write an embedding with its ids, atomically.

    ``.npz``: arrays ``embedding`` (N, D), ``concept_ids``, ``image_ids``, ``labels`` and, with
    ``with_rdm``, ``rdm`` (condensed 1 - Pearson, N*(N-1)/2). ``.csv``/``.tsv``: one row per
    item, columns ``concept_id``, ``image_id`` and one per label (no RDM).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"Cannot write embeddings to {path}: use a .npz, .csv or .tsv file.")
    if suffix == ".npz":
        arrays = {
            "embedding": embedding.values,
            "concept_ids": np.array(embedding.concept_ids),
            "image_ids": np.array(item_ids),
            "labels": np.array(embedding.dim_labels or ()),
        }
        if with_rdm:
            arrays["rdm"] = rdm(embedding.values, "pearson")

        def write_npz(tmp: Path) -> None:
            with tmp.open("wb") as handle:  # a file object: np.savez would append ".npz" to a path
                np.savez(handle, **arrays)

        return write_atomic(path, write_npz)
    if with_rdm:
        raise InputError("An RDM can only be written into a .npz file (--rdm).")
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="," if suffix == ".csv" else "\t")
    labels = embedding.dim_labels or tuple(f"dim{k}" for k in range(embedding.n_dims))
    writer.writerow(["concept_id", "image_id", *labels])
    for concept, item, row in zip(embedding.concept_ids, item_ids, embedding.values, strict=True):
        writer.writerow([concept, item, *(repr(float(v)) for v in row)])
    text = buffer.getvalue()
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
