"""Representational dissimilarity matrices (RDMs): from features, compared, exchanged.

RDMs travel as condensed upper triangles (``(n_pairs,)``, row-major ``i < j`` order, the order of
`scipy.spatial.distance.squareform`) together with their concept ids (`RDM`). Features become
RDMs in torch, differentiably and batched over any leading axes (e.g. time); `rdm` is the numpy
entry point. `compare` correlates two RDMs, ignoring pairs that are NaN in either.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from scipy import stats

from clip_hba._io import read_ids, read_matrix
from clip_hba._validation import InputError, check_option, check_unique_ids

if TYPE_CHECKING:
    from clip_hba.embeddings import ConceptEmbedding

__all__ = [
    "METHODS",
    "METRICS",
    "RDM",
    "align",
    "compare",
    "from_rsatoolbox",
    "n_conditions",
    "pair_index",
    "paired_condensed",
    "rdm",
    "rdm_torch",
    "read_rdm",
    "to_condensed",
    "to_rsatoolbox",
    "to_square",
]

Metric = Literal["pearson", "cosine", "euclidean"]
Method = Literal["spearman", "pearson", "kendall_tau_a", "rho_a", "cosine"]
METRICS: tuple[str, ...] = ("pearson", "cosine", "euclidean")
METHODS: tuple[str, ...] = ("spearman", "pearson", "kendall_tau_a", "rho_a", "cosine")


# ---------------------------------------------------------------------------- features -> RDMs


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


def to_condensed(rdm_square: Any, name: str = "rdm") -> np.ndarray:
    """Upper triangle of a square, symmetric RDM.

    Parameters
    ----------
    rdm_square : array-like, shape (n, n)
        Symmetric, with a zero (or NaN) diagonal. A pair given in one triangle only (NaN in the
        other, as in decoding RDMs) takes that value; a pair NaN in both stays missing.
    name : str
        Name used in error messages.

    Returns
    -------
    ndarray, shape (n * (n - 1) / 2,)
    """
    square = _to_numpy(rdm_square)
    if square.ndim != 2 or square.shape[0] != square.shape[1]:
        raise InputError(f"{name} given as a square RDM must be n x n, got shape {square.shape}.")
    square = np.where(np.isnan(square), square.T, square)  # fill a pair from its defined half
    if not np.allclose(square, square.T, rtol=1e-5, atol=1e-8, equal_nan=True):
        i, j = np.unravel_index(np.nanargmax(np.abs(square - square.T)), square.shape)
        raise InputError(
            f"{name} is not symmetric: [{i}, {j}] = {float(square[i, j]):.6g} but [{j}, {i}] = "
            f"{float(square[j, i]):.6g}."
        )
    diagonal = np.nan_to_num(np.diag(square))
    scale = max(1.0, float(np.nanmax(np.abs(square), initial=0.0)))
    if np.any(np.abs(diagonal) > 1e-6 * scale):
        k = int(np.argmax(np.abs(diagonal) > 1e-6 * scale))
        raise InputError(
            f"{name} has a non-zero diagonal ([{k}, {k}] = {float(diagonal[k]):.6g}); an RDM holds "
            "dissimilarities, 0 (or NaN) on the diagonal. Is it a similarity matrix?"
        )
    return square[np.triu_indices(square.shape[0], k=1)].copy()


def to_square(rdm_condensed: Any) -> np.ndarray:
    """Square symmetric RDM with a zero diagonal from its condensed upper triangle.

    Parameters
    ----------
    rdm_condensed : array-like, shape (n_pairs,)

    Returns
    -------
    ndarray, shape (n, n)
    """
    values = _to_numpy(rdm_condensed)
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
        values = np.array(_to_numpy(self.condensed), dtype=np.float64)
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
    def from_embedding(cls, embedding: ConceptEmbedding, metric: Metric = "pearson") -> RDM:
        """RDM between the rows of a `ConceptEmbedding` (see `rdm_torch` for ``metric``)."""
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
        a, b = np.triu_indices(len(rows), k=1)
        values = self.condensed[pair_index(rows[a], rows[b], self.n_concepts)]
        return RDM(values, tuple(concept_ids), self.metric)


def align(a: RDM, b: RDM) -> tuple[RDM, RDM]:
    """Restrict two RDMs to the concepts they share, in the order of ``a``."""
    shared = [c for c in a.concept_ids if c in b._row]
    if len(shared) < 3:
        raise InputError(f"The two RDMs share {len(shared)} concept(s); at least 3 are needed.")
    return a.select(shared), b.select(shared)


def read_rdm(
    path: str | os.PathLike, ids: str | os.PathLike | Sequence[str] | None = None
) -> RDM | np.ndarray:
    """Read an RDM from ``.npy``/``.txt``/``.csv``/``.tsv``.

    Parameters
    ----------
    path : path
        A square symmetric matrix ``(n, n)``, or a condensed upper triangle stored as a 1-D
        ``.npy``, a single row or a single column.
    ids : path or sequence of str, optional
        Concept id of each condition (a file with one id per line).

    Returns
    -------
    RDM if ``ids`` is given, else the condensed ndarray, shape (n_pairs,).
    """
    values = read_matrix(Path(path), "RDM")
    if values.ndim == 2 and values.shape[0] == values.shape[1] > 1:
        condensed = to_condensed(values, name=f"RDM {path}")
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


# ---------------------------------------------------------------------------- comparisons


def compare(a: Any, b: Any, method: Method = "spearman") -> float:
    """Similarity of two RDMs.

    Parameters
    ----------
    a, b : RDM, or array-like / Tensor of shape (n, n) (square) or (n_pairs,) (condensed)
        Two `RDM` objects are aligned by concept id first; arrays must describe the same
        conditions in the same order. Pairs that are NaN in either RDM are left out.
    method : {"spearman", "pearson", "kendall_tau_a", "rho_a", "cosine"}
        Spearman rank correlation (ties averaged), Pearson correlation, Kendall's tau-a,
        Spearman's rho-a (no tie correction; Nili et al. 2014), or cosine similarity of the raw
        dissimilarities.

    Returns
    -------
    float

    Examples
    --------
    >>> compare(np.array([0.1, 0.5, 0.9]), np.array([1.0, 2.0, 3.5]))
    1.0
    """
    check_option("method", method, METHODS)
    x, y = paired_condensed(a, b)
    keep = ~(np.isnan(x) | np.isnan(y))
    if keep.sum() < 3:
        raise InputError(
            f"Only {int(keep.sum())} pair(s) hold numbers in both RDMs; at least 3 are needed."
        )
    value = float(COMPARISONS[method](x[keep], y[keep]))
    if not np.isfinite(value):
        raise InputError(
            f"The {method} comparison is undefined: an RDM is constant over the compared pairs."
        )
    return value


def paired_condensed(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Condensed vectors of two RDMs over the same conditions, checked.

    Two `RDM` objects are aligned by concept id (`align`); two arrays (square or condensed,
    numpy or torch) must have the same size. Mixing an `RDM` with an array is refused, since
    the array's rows could not be matched by id.

    Returns
    -------
    x, y : ndarray, shape (n_pairs,)
    """
    if isinstance(a, RDM) != isinstance(b, RDM):
        raise TypeError(
            "Cannot align an RDM with a plain array: pass two RDM objects (aligned by concept id) "
            "or two arrays over the same conditions in the same order."
        )
    if isinstance(a, RDM):
        a, b = align(a, b)
    x, y = _as_condensed(a, "a"), _as_condensed(b, "b")
    if x.size != y.size:
        raise InputError(f"The RDMs differ in size: {x.size} pairs against {y.size} pairs.")
    for name, values in (("a", x), ("b", y)):
        if np.isinf(values).any():
            raise InputError(f"RDM {name} holds infinite dissimilarities.")
    return x, y


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis of broadcastable arrays (NaN where one is constant)."""
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * yc).sum(-1) / np.sqrt((xc**2).sum(-1) * (yc**2).sum(-1))


def _spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _pearson(stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1))


def _rho_a(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    rx = stats.rankdata(x, axis=-1)
    ry = stats.rankdata(y, axis=-1)
    n = x.shape[-1]
    rx = rx - rx.mean(-1, keepdims=True)
    ry = ry - ry.mean(-1, keepdims=True)
    return 12.0 * (rx * ry).sum(-1) / (n**3 - n)


def _cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(-1) / np.sqrt((x**2).sum(-1) * (y**2).sum(-1))


def _kendall_tau_a(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-a of two 1-D vectors in O(n log n), via scipy's tau-b and the tie counts."""
    n0 = x.size * (x.size - 1) / 2
    untied_x = n0 - _tied_pairs(x)
    untied_y = n0 - _tied_pairs(y)
    if untied_x == 0 or untied_y == 0:
        return 0.0  # every pair tied in one vector: no concordant or discordant pairs
    tau_b = stats.kendalltau(x, y, variant="b").statistic
    return float(tau_b * math.sqrt(untied_x * untied_y) / n0)


def _tied_pairs(values: np.ndarray) -> float:
    counts = np.unique(values, return_counts=True)[1].astype(np.float64)
    return float((counts * (counts - 1) / 2).sum())


COMPARISONS: dict[str, Callable[[np.ndarray, np.ndarray], Any]] = {
    "spearman": _spearman,
    "pearson": _pearson,
    "kendall_tau_a": _kendall_tau_a,
    "rho_a": _rho_a,
    "cosine": _cosine,
}


def _to_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"Cannot read an RDM from a {type(values).__name__}: {err}") from None


def _as_condensed(values: Any, name: str) -> np.ndarray:
    array = _to_numpy(values.condensed if isinstance(values, RDM) else values)
    if array.ndim == 2:
        return to_condensed(array, name=f"RDM {name}")
    if array.ndim != 1:
        raise InputError(
            f"RDM {name} must be square (n, n) or condensed (n_pairs,), got shape {array.shape}."
        )
    n_conditions(array.size)
    return array


# ---------------------------------------------------------------------------- rsatoolbox interop


def to_rsatoolbox(rdm_: RDM, descriptor: str = "concept_id") -> Any:
    """Convert to an ``rsatoolbox.rdm.RDMs`` holding one RDM, concept ids as pattern descriptor."""
    rdms_cls = _rsatoolbox_rdms()
    return rdms_cls(
        dissimilarities=rdm_.condensed[None, :].copy(),
        dissimilarity_measure=rdm_.metric or "unknown",
        pattern_descriptors={descriptor: list(rdm_.concept_ids)},
    )


def from_rsatoolbox(rdms: Any, index: int = 0, descriptor: str = "concept_id") -> RDM:
    """Take RDM number ``index`` of an ``rsatoolbox.rdm.RDMs``, with ids from ``descriptor``."""
    _rsatoolbox_rdms()
    if descriptor not in rdms.pattern_descriptors:
        raise InputError(
            f"The RDMs have no pattern descriptor {descriptor!r}; they have "
            f"{sorted(rdms.pattern_descriptors)}."
        )
    if not 0 <= index < rdms.n_rdm:
        raise InputError(f"Invalid RDM index {index}: the RDMs hold {rdms.n_rdm}.")
    ids = [str(c) for c in rdms.pattern_descriptors[descriptor]]
    return RDM(rdms.get_vectors()[index], ids, rdms.dissimilarity_measure)


def _rsatoolbox_rdms() -> Any:
    try:
        from rsatoolbox.rdm import RDMs
    except ImportError:
        raise InputError(
            "rsatoolbox is not installed; install it with: pip install 'clip-hba[rsa]'"
        ) from None
    return RDMs
