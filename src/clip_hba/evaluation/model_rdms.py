"""Model RDMs for time-resolved RSA: static, time-resolved or layer-wise, with concept ids."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from clip_hba._validation import InputError, check_option, check_unique_ids
from clip_hba.data.embeddings import (
    ConceptEmbedding,
    StackedEmbedding,
    read_embedding,
    read_stacked_embedding,
)
from clip_hba.data.things import named_embedding
from clip_hba.rsa.methods import METRICS, Metric
from clip_hba.rsa.rdms import rdm, subset_pairs

__all__ = ["EMBEDDING_SUFFIXES", "Kind", "ModelRDMs", "load_model_rdms"]

Kind = Literal["static", "time", "layers"]
EMBEDDING_SUFFIXES = (".npz", ".npy", ".csv", ".tsv", ".txt")


@dataclass(frozen=True, eq=False)
class ModelRDMs:
    """One model's RDMs over concepts, condensed.

    Attributes
    ----------
    name : str
    values : ndarray, shape (M, n_pairs)
        One row (static), one per timepoint (time) or one per layer (layers).
    concept_ids : tuple of str
    kind : {"static", "time", "layers"}
    labels : tuple of str, length M
        Row names (the model name; ``"t=100ms"``...; layer names).
    times_ms : ndarray, shape (M,), or None
        The time of each row of a time-resolved model.
    """

    name: str
    values: np.ndarray
    concept_ids: tuple[str, ...]
    kind: Kind = "static"
    labels: tuple[str, ...] = ()
    times_ms: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_option("kind", self.kind, ("static", "time", "layers"))
        values = np.atleast_2d(np.asarray(self.values, dtype=np.float64))
        n = len(self.concept_ids)
        if values.ndim != 2 or values.shape[1] != n * (n - 1) // 2:
            raise InputError(
                f"Model {self.name!r}: RDMs of shape {values.shape} do not match "
                f"{n} concepts ({n * (n - 1) // 2} pairs)."
            )
        check_unique_ids(f"Model {self.name!r}", self.concept_ids)
        labels = self.labels or (
            (self.name,) if len(values) == 1 else tuple(map(str, range(len(values))))
        )
        if len(labels) != len(values):
            raise InputError(f"Model {self.name!r}: {len(labels)} labels for {len(values)} RDMs.")
        if self.kind == "time" and (self.times_ms is None or len(self.times_ms) != len(values)):
            raise InputError(f"Model {self.name!r} is time-resolved but has no time per RDM.")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "concept_ids", tuple(self.concept_ids))
        object.__setattr__(self, "labels", tuple(labels))

    @classmethod
    def from_features(
        cls,
        name: str,
        features: Any,
        concept_ids: Sequence[str],
        kind: Kind = "static",
        labels: Sequence[str] = (),
        times_ms: Any = None,
        metric: Metric = "pearson",
    ) -> ModelRDMs:
        """RDMs (1 - Pearson by default) of features (N, D) or (M, N, D)."""
        check_option("metric", metric, METRICS)
        features = np.asarray(features, dtype=np.float64)
        if features.ndim == 2:
            features = features[None]
        values = rdm(features, metric)
        times = None if times_ms is None else np.asarray(times_ms, dtype=np.float64)
        return cls(name, values, tuple(concept_ids), kind, tuple(labels), times)

    @classmethod
    def from_embedding(
        cls,
        name: str,
        embedding: ConceptEmbedding | StackedEmbedding,
        metric: Metric = "pearson",
    ) -> ModelRDMs:
        """RDMs of an embedding: static (N, D), or layer-wise / time-resolved (M, N, D)."""
        if isinstance(embedding, ConceptEmbedding):
            return cls.from_features(name, embedding.values, embedding.concept_ids, metric=metric)
        kind = "time" if embedding.axis == "time" else "layers"
        return cls.from_features(
            name,
            embedding.values,
            embedding.concept_ids,
            kind=kind,
            labels=embedding.labels,
            times_ms=embedding.times_ms,
            metric=metric,
        )

    def curve_names(self) -> list[str]:
        """Names of the curves this model gives: one, or one per layer."""
        if self.kind == "layers":
            return [f"{self.name}/{label}" for label in self.labels]
        return [self.name]

    def select(self, concept_ids: Sequence[str]) -> ModelRDMs:
        """The RDMs restricted to (and ordered as) ``concept_ids``."""
        row = {c: k for k, c in enumerate(self.concept_ids)}
        rows = np.array([row[c] for c in concept_ids], dtype=np.int64)
        values = self.values[:, subset_pairs(rows, len(self.concept_ids))]
        return ModelRDMs(
            self.name, values, tuple(concept_ids), self.kind, self.labels, self.times_ms
        )


def load_model_rdms(
    path: str | os.PathLike,
    metric: Metric = "pearson",
    ids: str | os.PathLike | None = None,
    default_ids: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
) -> list[ModelRDMs]:
    """Model RDMs from an embedding file, or from every embedding file in a folder.

    A file holds one static embedding (any format `read_embedding` reads), or is an ``.npz``
    whose ``embedding`` array is (M, N, D) with ``times_ms`` (M,) (time-resolved, e.g. written by
    a MEG model) or ``layers`` (M,) (layer-wise, e.g. ``clip-hba embed --layers``), with
    ``concept_ids`` (N,). The model is named after the file; ``"spose"`` names the bundled
    SPoSE embedding (`clip_hba.data.named_embedding`).
    """
    bundled = named_embedding(path, data_dir)
    if bundled is not None:
        return [ModelRDMs(str(path), rdm(bundled.values, metric), bundled.concept_ids)]
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in EMBEDDING_SUFFIXES)
        if not files:
            raise InputError(f"{path} holds no embedding files ({', '.join(EMBEDDING_SUFFIXES)}).")
        return [m for f in files for m in load_model_rdms(f, metric, ids, default_ids)]
    if not path.is_file():
        raise InputError(f"No embedding file or folder at {path}.")
    stacked = read_stacked_embedding(path) if path.suffix.lower() == ".npz" else None
    if stacked is not None:
        return [ModelRDMs.from_embedding(path.stem, stacked, metric)]
    embedding = read_embedding(path, ids=ids, default_ids=default_ids)
    return [ModelRDMs(path.stem, rdm(embedding.values, metric), embedding.concept_ids)]
