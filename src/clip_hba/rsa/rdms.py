"""Representational dissimilarity matrices (RDMs): from features, condensed, keyed by id.

RDMs travel as condensed upper triangles (``(n_pairs,)``, row-major ``i < j`` order, the order of
`scipy.spatial.distance.squareform`) together with their concept ids (`RDM`). Features become
RDMs in torch, differentiably and batched over any leading axes (e.g. time); `rdm` is the numpy
entry point. Square matrices become condensed ones under one policy (`to_condensed`).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from clip_hba._io import read_ids, read_matrix
from clip_hba._validation import InputError, check_option, check_unique_ids
from clip_hba.rsa.methods import ASYMMETRY_POLICIES, METRICS, Asymmetry, Metric


class Embedding(Protocol):
    """Rows of features with their concept ids (e.g. `clip_hba.data.ConceptEmbedding`)."""

    values: np.ndarray  # (n_concepts, n_features)
    concept_ids: tuple[str, ...]


__all__ = [
    "RDM",
    "RDM_EPS",
    "Embedding",
    "align",
    "mean_rdm",
    "n_conditions",
    "pair_index",
    "rdm",
    "rdm_torch",
    "read_rdm",
    "subset_pairs",
    "to_condensed",
    "to_numpy",
    "to_square",
]


# ---------------------------------------------------------------------------- features -> RDMs

RDM_EPS = 1e-8  # floor of the row norms of RDMs in training: a constant row stays finite


def rdm_torch(
    features: torch.Tensor,
    metric: Metric = "pearson",
    condensed: bool = True,
    eps: float | None = None,
) -> torch.Tensor:
    """Dissimilarities between the rows of ``features``, differentiable, batched.

    Parameters
    ----------
    features : Tensor, shape (..., n_conditions, n_features)
        Any leading axes (time, layers, ...) are batch axes.
    metric : {"pearson", "cosine", "euclidean"}
        ``1 - Pearson r`` between rows, ``1 - cosine similarity``, or Euclidean distance.
        A constant row (pearson) or an all-zero row (cosine) gives NaN dissimilarities.
    condensed : bool
        Return the upper triangle ``(..., n_pairs)`` instead of the square ``(..., n, n)``.
    eps : float, optional
        Floor of the row norms (pearson, cosine): a constant row then is at dissimilarity 1
        from everything instead of NaN, and gradients stay finite (for training losses).

    Returns
    -------
    Tensor, shape (..., n_pairs) or (..., n_conditions, n_conditions)
        Square matrices have an exact zero diagonal.

    Examples
    --------
    >>> feats = torch.randn(281, 48, 66)           # time x concepts x features
    >>> rdm_torch(feats).shape                     # time x pairs
    torch.Size([281, 1128])
    """
    check_option("metric", metric, METRICS)
    if features.ndim < 2:
        raise InputError(
            "features must have shape (..., n_conditions, n_features), got "
            f"{tuple(features.shape)}."
        )
    n = features.shape[-2]
    if metric == "euclidean":
        flat = features.reshape(-1, n, features.shape[-1])
        # cdist's own backward gives zero (not NaN) gradients at zero distance.
        dist = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")
        dist = dist.reshape(*features.shape[:-2], n, n)
    else:
        x = features - features.mean(-1, keepdim=True) if metric == "pearson" else features
        norm = x.norm(dim=-1, keepdim=True)
        x = x / (norm if eps is None else norm.clamp_min(eps))
        dist = 1.0 - x @ x.transpose(-1, -2)
    if condensed:
        i, j = torch.triu_indices(n, n, offset=1, device=features.device)
        return dist[..., i, j]
    diagonal = torch.eye(n, dtype=torch.bool, device=features.device)
    return dist.masked_fill(diagonal, 0.0)


def rdm(features: Any, metric: Metric = "pearson", condensed: bool = True) -> np.ndarray:
    """NumPy entry point of `rdm_torch`, computed in float64.

    Parameters
    ----------
    features : array-like, shape (..., n_conditions, n_features)
    metric, condensed : see `rdm_torch`.

    Returns
    -------
    ndarray, shape (..., n_pairs) or (..., n_conditions, n_conditions)
    """
    tensor = torch.from_numpy(np.array(features, dtype=np.float64))
    with torch.no_grad():
        return rdm_torch(tensor, metric=metric, condensed=condensed).numpy()


# ---------------------------------------------------------------------------- square <-> condensed


def n_conditions(n_pairs: int) -> int:
    """Number of conditions ``n`` such that ``n * (n - 1) / 2 == n_pairs``."""
    n = round((1 + math.sqrt(1 + 8 * n_pairs)) / 2)
    if n_pairs < 1 or n * (n - 1) // 2 != n_pairs:
        raise InputError(
            f"A condensed RDM must hold n*(n-1)/2 values for some n, but got {n_pairs} values."
        )
    return n


def pair_index(rows_a: np.ndarray, rows_b: np.ndarray, n: int) -> np.ndarray:
    """Positions in a condensed RDM of ``n`` conditions of the pairs ``(rows_a[k], rows_b[k])``.

    The order within a pair does not matter; pairs with ``rows_a == rows_b`` are invalid.
    """
    lo = np.minimum(rows_a, rows_b).astype(np.int64)
    hi = np.maximum(rows_a, rows_b).astype(np.int64)
    return lo * n - lo * (lo + 1) // 2 + (hi - lo - 1)


def subset_pairs(rows: np.ndarray, n: int) -> np.ndarray:
    """Positions in a condensed RDM of ``n`` conditions of the pairs among ``rows``.

    ``rows`` (k,) are condition numbers; the result (k * (k - 1) / 2,) lists their pairs in the
    condensed order of an RDM over ``rows`` in the given order, so
    ``full[subset_pairs(rows, n)]`` is the RDM of that subset.
    """
    rows = np.asarray(rows, dtype=np.int64)
    i, j = np.triu_indices(len(rows), k=1)
    return pair_index(rows[i], rows[j], n)


def mean_rdm(values: np.ndarray) -> np.ndarray:
    """Mean over axis 0 (e.g. participants) ignoring NaN; a pair NaN everywhere stays NaN.

    Parameters
    ----------
    values : ndarray, shape (P, ...)

    Returns
    -------
    ndarray, shape (...), float64 (summed in float64, without warnings for all-NaN entries)
    """
    missing = np.isnan(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        if not missing.any():  # the same numbers, without the masked copy and the counts
            return values.sum(0, dtype=np.float64) / len(values)
        total = np.where(missing, 0, values).sum(0, dtype=np.float64)
        return total / (len(values) - missing.sum(0))


def to_condensed(
    rdm_square: Any,
    name: str = "rdm",
    asymmetry: Asymmetry = "raise",
    check_diagonal: bool = True,
) -> np.ndarray:
    """Upper triangle of a square RDM, under one policy for missing and asymmetric pairs.

    Parameters
    ----------
    rdm_square : array-like, shape (n, n)
        Dissimilarities. A pair given in one triangle only (NaN in the other, as in decoding
        RDMs) takes that value; a pair NaN in both stays missing (NaN).
    name : str
        Name used in error messages.
    asymmetry : {"raise", "average", "upper", "lower"}
        A pair defined in both triangles with two values (beyond float round-off):
        ``"raise"`` refuses the matrix, naming its largest asymmetry; ``"average"`` takes the
        mean of the two, ``"upper"`` the value at [i, j] (i < j), ``"lower"`` the one at [j, i].
    check_diagonal : bool
        Refuse a non-zero diagonal (a similarity matrix). The importers turn it off: decoding
        RDMs may hold anything there.

    Returns
    -------
    ndarray, shape (n * (n - 1) / 2,)
        In the input's float type (float32 stays float32: the importers stream float32 RDMs),
        float64 for any other input.
    """
    check_option("asymmetry", asymmetry, ASYMMETRY_POLICIES)
    square = _float_array(rdm_square)
    if square.ndim != 2 or square.shape[0] != square.shape[1]:
        raise InputError(f"{name} given as a square RDM must be n x n, got shape {square.shape}.")
    upper_index, lower_index = _triangles(square.shape[0])
    flat = np.ascontiguousarray(square).reshape(-1)
    upper, lower = flat[upper_index], flat[lower_index]
    missing_upper = np.isnan(upper)
    condensed = np.where(missing_upper, lower, upper)  # fill a pair from its defined half
    both = ~missing_upper & ~np.isnan(lower)
    if asymmetry == "raise" and both.any():
        _check_symmetric(upper, lower, both, square, name)
    elif asymmetry == "average":
        condensed[both] = 0.5 * (upper[both] + lower[both])
    elif asymmetry == "lower":
        condensed[both] = lower[both]
    if check_diagonal:
        _check_diagonal(square, name)
    return condensed


@functools.lru_cache(maxsize=4)
def _triangles(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions of the upper (i, j) and lower (j, i) triangle of an n x n matrix."""
    i, j = np.triu_indices(n, k=1)
    return i * n + j, j * n + i


def _check_symmetric(
    upper: np.ndarray, lower: np.ndarray, both: np.ndarray, square: np.ndarray, name: str
) -> None:
    """Refuse pairs whose two halves differ beyond round-off, naming the largest difference."""
    pairs = np.flatnonzero(both)
    a, b = upper[pairs], lower[pairs]
    with np.errstate(invalid="ignore"):  # inf - inf: equal infinities pass through a == b
        # np.isclose both ways (rtol 1e-5, atol 1e-8) in one pass: float round-off passes
        close = (a == b) | (np.abs(a - b) <= 1e-8 + 1e-5 * np.minimum(np.abs(a), np.abs(b)))
    if close.all():
        return
    differ = pairs[~close]
    gaps = np.abs(upper[differ].astype(np.float64) - lower[differ])
    k = int(differ[int(np.argmax(gaps))])
    i, j = (int(v[k]) for v in np.triu_indices(square.shape[0], k=1))
    gap = float(gaps.max())
    scale = float(np.nanmax(np.abs(square[np.isfinite(square)]), initial=0.0)) or 1.0
    raise InputError(
        f"{name} is not symmetric: [{i}, {j}] = {float(upper[k]):.6g} but [{j}, {i}] = "
        f"{float(lower[k]):.6g}, the largest of {differ.size} asymmetric pair(s) (a difference "
        f"of {gap:.3g}, {100 * gap / scale:.3g} % of the largest |value| {scale:.6g}). Choose "
        "how to condense it: --asymmetric average|upper|lower (API: asymmetry=...)."
    )


def _check_diagonal(square: np.ndarray, name: str) -> None:
    diagonal = np.nan_to_num(np.diag(square))
    scale = max(1.0, float(np.nanmax(np.abs(square), initial=0.0)))
    if np.any(np.abs(diagonal) > 1e-6 * scale):
        k = int(np.argmax(np.abs(diagonal) > 1e-6 * scale))
        raise InputError(
            f"{name} has a non-zero diagonal ([{k}, {k}] = {float(diagonal[k]):.6g}); an RDM holds "
            "dissimilarities, 0 (or NaN) on the diagonal. Is it a similarity matrix?"
        )


def to_square(rdm_condensed: Any) -> np.ndarray:
    """Square symmetric RDM with a zero diagonal from its condensed upper triangle.

    Parameters
    ----------
    rdm_condensed : array-like, shape (n_pairs,)

    Returns
    -------
    ndarray, shape (n, n)
    """
    values = to_numpy(rdm_condensed)
    n = n_conditions(values.shape[-1])
    square = np.zeros((n, n), dtype=values.dtype)
    i, j = np.triu_indices(n, k=1)
    square[i, j] = values
    square[j, i] = values
    return square


# ---------------------------------------------------------------------------- id-keyed RDM


@dataclass(frozen=True, eq=False)  # arrays: compare contents explicitly
class RDM:
    """A condensed RDM with the concept id of each condition.

    Parameters
    ----------
    condensed : ndarray, shape (n_pairs,)
        Upper triangle, row-major. NaN marks a missing pair. Stored as a read-only float64 copy.
    concept_ids : sequence of str, length n
    metric : str or None
        How the dissimilarities were computed (for provenance).
    """

    condensed: np.ndarray
    concept_ids: tuple[str, ...]
    metric: str | None = None
    _row: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = np.array(to_numpy(self.condensed), dtype=np.float64)
        ids = tuple(str(c) for c in self.concept_ids)
        if values.ndim != 1:
            raise InputError(f"RDM.condensed must be 1-D, got shape {values.shape}.")
        if n_conditions(values.size) != len(ids):
            raise InputError(
                f"RDM has {values.size} pairs, which needs {n_conditions(values.size)} concept "
                f"ids, but got {len(ids)}."
            )
        check_unique_ids("RDM.concept_ids", ids)
        if np.isinf(values).any():
            raise InputError("RDM holds infinite dissimilarities.")
        values.flags.writeable = False
        object.__setattr__(self, "condensed", values)
        object.__setattr__(self, "concept_ids", ids)
        object.__setattr__(self, "_row", {c: k for k, c in enumerate(ids)})

    @property
    def n_concepts(self) -> int:
        return len(self.concept_ids)

    @classmethod
    def from_square(cls, square: Any, concept_ids: Sequence[str], metric: str | None = None) -> RDM:
        """Build from a square symmetric matrix, shape (n, n)."""
        return cls(to_condensed(square), tuple(concept_ids), metric)

    @classmethod
    def from_embedding(cls, embedding: Embedding, metric: Metric = "pearson") -> RDM:
        """RDM between the rows of an embedding (see `rdm_torch` for ``metric``)."""
        return cls(rdm(embedding.values, metric=metric), embedding.concept_ids, metric)

    def square(self) -> np.ndarray:
        """Square form, shape (n, n), zero diagonal."""
        return to_square(self.condensed)

    def select(self, concept_ids: Sequence[str]) -> RDM:
        """The RDM of ``concept_ids`` (in that order); every id must be present."""
        check_unique_ids("concept_ids", concept_ids)
        missing = [c for c in concept_ids if c not in self._row]
        if missing:
            raise InputError(f"RDM has no concept(s) {missing[:5]} ({len(missing)} missing).")
        rows = np.array([self._row[c] for c in concept_ids], dtype=np.int64)
        values = self.condensed[subset_pairs(rows, self.n_concepts)]
        return RDM(values, tuple(concept_ids), self.metric)

    def __contains__(self, concept_id: object) -> bool:
        return concept_id in self._row


def align(a: RDM, b: RDM) -> tuple[RDM, RDM]:
    """Restrict two RDMs to the concepts they share, in the order of ``a``."""
    shared = [c for c in a.concept_ids if c in b]
    if len(shared) < 3:
        raise InputError(f"The two RDMs share {len(shared)} concept(s); at least 3 are needed.")
    return a.select(shared), b.select(shared)


def read_rdm(
    path: str | os.PathLike,
    ids: str | os.PathLike | Sequence[str] | None = None,
    asymmetry: Asymmetry = "raise",
) -> RDM | np.ndarray:
    """Read an RDM from ``.npy``/``.txt``/``.csv``/``.tsv``.

    Parameters
    ----------
    path : path
        A square symmetric matrix ``(n, n)``, or a condensed upper triangle stored as a 1-D
        ``.npy``, a single row or a single column.
    ids : path or sequence of str, optional
        Concept id of each condition (a file with one id per line).
    asymmetry : {"raise", "average", "upper", "lower"}
        How a square matrix whose triangles differ is condensed (see `to_condensed`).

    Returns
    -------
    RDM if ``ids`` is given, else the condensed ndarray, shape (n_pairs,).
    """
    values = read_matrix(Path(path), "RDM")
    if values.ndim == 2 and values.shape[0] == values.shape[1] > 1:
        condensed = to_condensed(values, name=f"RDM {path}", asymmetry=asymmetry)
    elif values.ndim == 1 or (values.ndim == 2 and 1 in values.shape):
        condensed = values.ravel()
        n_conditions(condensed.size)
    else:
        raise InputError(
            f"RDM file {path} must hold a square (n, n) matrix or one row/column of n*(n-1)/2 "
            f"values, got shape {values.shape}."
        )
    if ids is None:
        return condensed
    return RDM(condensed, read_ids(ids) if isinstance(ids, str | os.PathLike) else tuple(ids))


def to_numpy(values: Any) -> np.ndarray:
    """``values`` (array-like or Tensor) as a float64 ndarray; `TypeError` if not numeric."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"Cannot read an RDM from a {type(values).__name__}: {err}") from None


def _float_array(values: Any) -> np.ndarray:
    """A float ndarray, keeping float32 data float32 (the importers stream float32 RDMs)."""
    if isinstance(values, np.ndarray) and np.issubdtype(values.dtype, np.floating):
        return values
    return to_numpy(values)
