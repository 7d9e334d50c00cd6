"""Comparisons of RDMs: every method once, for two RDMs and batched over rows (time, layers).

Methods: Spearman rank correlation (ties averaged), Pearson correlation, Kendall's tau-a,
Spearman's rho-a (no tie correction; Nili et al. 2014) and the cosine similarity of the raw
dissimilarities. `compare` scores two RDMs (aligned by concept id when both are `RDM`s);
`correlate` scores every row of one stack against every row of another (e.g. MEG timepoints
against model layers) as one matrix product of standardised rows; `correlate_rowwise` pairs
rows one to one. Pairs that are NaN in either RDM are left out everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats

from clip_hba._validation import InputError, check_option
from clip_hba.rsa.methods import METHODS, Method
from clip_hba.rsa.rdms import RDM, align, n_conditions, to_condensed, to_numpy

__all__ = [
    "COMPARISONS",
    "compare",
    "correlate",
    "correlate_rowwise",
    "paired_condensed",
    "standardize",
]


# ---------------------------------------------------------------------------- two RDMs


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


# Each method has two forms that share its ranking and centring: the pairwise form below
# (`compare`, bootstraps, permutation tests) and the standardised rows of `standardize`, whose
# dot products give many correlations in one matrix product (time-resolved RSA). They agree to
# float rounding (tests/test_time_rsa.py); each keeps its own rounding, so results stay
# bit-identical from one version to the next.


def _ranked(values: np.ndarray, method: str) -> np.ndarray:
    """Ranks along the last axis (ties averaged) for the rank methods, else the values."""
    return stats.rankdata(values, axis=-1) if method in ("spearman", "rho_a") else values


def _centred(values: np.ndarray) -> np.ndarray:
    return values - values.mean(-1, keepdims=True)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis of broadcastable arrays (NaN where one is constant)."""
    xc, yc = _centred(x), _centred(y)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * yc).sum(-1) / np.sqrt((xc**2).sum(-1) * (yc**2).sum(-1))


def _spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _pearson(_ranked(x, "spearman"), _ranked(y, "spearman"))


def _rho_a(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    rx, ry = _centred(_ranked(x, "rho_a")), _centred(_ranked(y, "rho_a"))
    n = x.shape[-1]
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


def _as_condensed(values: Any, name: str) -> np.ndarray:
    array = to_numpy(values.condensed if isinstance(values, RDM) else values)
    if array.ndim == 2:
        return to_condensed(array, name=f"RDM {name}")
    if array.ndim != 1:
        raise InputError(
            f"RDM {name} must be square (n, n) or condensed (n_pairs,), got shape {array.shape}."
        )
    n_conditions(array.size)
    return array


# ---------------------------------------------------------------------------- batched over rows


def correlate(meg: np.ndarray, models: np.ndarray, method: str = "spearman") -> np.ndarray:
    """Correlation of every MEG row with every model row, over the pairs defined in both.

    Parameters
    ----------
    meg : ndarray, shape (T, n_pairs)
        NaN marks missing pairs (skipped; rows may differ in which pairs they miss).
    models : ndarray, shape (M, n_pairs)
        Pairs NaN in any model row are skipped for all.
    method : one of `rsa.METHODS`

    Returns
    -------
    ndarray, shape (T, M); NaN where fewer than 3 pairs remain or a row is constant.

    Examples
    --------
    >>> meg = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    >>> correlate(meg, np.array([[10.0, 20.0, 30.0, 45.0]])).round(3).tolist()
    [[1.0], [-1.0]]
    """
    check_option("method", method, METHODS)
    meg = np.atleast_2d(np.asarray(meg, dtype=np.float64))
    models = np.atleast_2d(np.asarray(models, dtype=np.float64))
    model_valid = ~np.isnan(models).any(0)
    meg_valid = ~np.isnan(meg)
    out = np.full((len(meg), len(models)), np.nan)
    if meg_valid.all(1).all() or (meg_valid == meg_valid[0]).all():
        groups = [(np.arange(len(meg)), meg_valid[0])]
    else:  # rows missing different pairs: each on its own
        groups = [(np.array([t]), meg_valid[t]) for t in range(len(meg))]
    for rows, valid in groups:
        keep = valid & model_valid
        if keep.sum() < 3:
            continue
        out[rows] = _correlate_complete(meg[np.ix_(rows, keep)], models[:, keep], method)
    return out


def _correlate_complete(a: np.ndarray, b: np.ndarray, method: str) -> np.ndarray:
    if method == "kendall_tau_a":
        return np.array([[_kendall_tau_a(x, y) for y in b] for x in a])
    return standardize(a, method) @ standardize(b, method).T


def standardize(values: np.ndarray, method: str) -> np.ndarray:
    """Rows transformed so that the dot product of two rows is the comparison ``method``."""
    n = values.shape[1]
    values = _ranked(values, method)
    if method == "rho_a":
        return (values - (n + 1) / 2) * np.sqrt(12.0 / (n**3 - n))
    if method != "cosine":
        values = _centred(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return values / np.linalg.norm(values, axis=1, keepdims=True)


def correlate_rowwise(meg: np.ndarray, models: np.ndarray, method: str) -> np.ndarray:
    """Correlation of ``meg[t]`` with ``models[t]`` for every t: (T, pairs) x 2 -> (T,).

    Rows without NaN are correlated all at once; otherwise row by row with `correlate`.
    """
    check_option("method", method, METHODS)
    meg = np.asarray(meg, dtype=np.float64)
    models = np.asarray(models, dtype=np.float64)
    complete = not (np.isnan(meg).any() or np.isnan(models).any())
    if complete and method != "kendall_tau_a" and meg.shape[1] >= 3:  # all rows at once
        return (standardize(meg, method) * standardize(models, method)).sum(1)
    return np.array([correlate(meg[t], models[t], method)[0, 0] for t in range(len(meg))])
