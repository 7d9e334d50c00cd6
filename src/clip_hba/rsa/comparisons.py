"""Comparisons of RDMs: every method once, for two RDMs and batched over rows (time, layers).

Methods: Spearman rank correlation (ties averaged), Pearson correlation, Kendall's tau-a,
Spearman's rho-a (no tie correction; Nili et al. 2014) and the cosine similarity of the raw
dissimilarities. `compare` scores two RDMs (aligned by concept id when both are `RDM`s);
`correlate` scores every row of one stack against every row of another (e.g. MEG timepoints
against model layers) as one matrix product of standardised rows; `correlate_rowwise` pairs
rows one to one. Pairs that are NaN in either RDM are left out everywhere. `standardize` ranks
rows with one packed integer sort each, chunks of rows in parallel threads (the batched forms
rank time-resolved RDMs of tens of thousands of pairs, where scipy's rankdata dominated).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
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
    "rank_rows",
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

_RANK_METHODS = ("spearman", "rho_a")
_ROW_CHUNK_VALUES = 1 << 20  # values per chunk of rows standardised by one thread


def correlate(meg: np.ndarray, models: np.ndarray, method: str = "spearman") -> np.ndarray:
    """Correlation of every MEG row with every model row, over the pairs defined in both.

    Parameters
    ----------
    meg : ndarray, shape (T, n_pairs)
        float32 or float64 (ranked as given: no float64 copy for the rank methods). NaN marks
        missing pairs (skipped; rows may differ in which pairs they miss).
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
    meg, models = _float_rows(meg), _float_rows(models)
    model_valid = ~np.isnan(models).any(0)
    meg_valid = ~np.isnan(meg)
    out = np.full((len(meg), len(models)), np.nan)
    if meg_valid.all() or (meg_valid == meg_valid[0]).all():
        groups = [(slice(None), meg_valid[0])]
    else:  # rows missing different pairs: each on its own
        groups = [(slice(t, t + 1), meg_valid[t]) for t in range(len(meg))]
    for rows, valid in groups:
        keep = valid & model_valid
        if keep.sum() < 3:
            continue
        if keep.all():  # no copy of the MEG rows
            out[rows] = _correlate_complete(meg[rows], models, method)
        else:
            out[rows] = _correlate_complete(meg[rows][:, keep], models[:, keep], method)
    return out


def _float_rows(values: Any) -> np.ndarray:
    values = np.atleast_2d(np.asarray(values))
    return values if values.dtype in (np.float32, np.float64) else values.astype(np.float64)


def _correlate_complete(a: np.ndarray, b: np.ndarray, method: str) -> np.ndarray:
    if method == "kendall_tau_a":
        return np.array([[_kendall_tau_a(x, y) for y in b] for x in a])
    return standardize(a, method) @ standardize(b, method).T


def standardize(values: np.ndarray, method: str, out: np.ndarray | None = None) -> np.ndarray:
    """Rows transformed so that the dot product of two rows is the comparison ``method``.

    Spearman: ranks (ties averaged, as `scipy.stats.rankdata`), centred, scaled to unit norm;
    rho-a: ranks centred and scaled by sqrt(12 / (n^3 - n)); Pearson: centred, unit norm;
    cosine: unit norm. Chunks of rows are standardised in parallel threads
    (``torch.get_num_threads()``; numpy's sorts release the GIL).

    Parameters
    ----------
    values : ndarray, shape (R, n)
        float32 or float64; a row holding NaN gives a row of NaN.
    method : {"spearman", "rho_a", "pearson", "cosine"}
    out : ndarray, shape (R, n), float64, optional
        Where to write the result (e.g. a slice of a larger array), instead of a new array.

    Returns
    -------
    ndarray, shape (R, n), float64
        ``out`` if given. A constant row gives NaN for Spearman and Pearson, and NaN for
        cosine where the row is all zeros.
    """
    values = _float_rows(values)
    if out is None:
        out = np.empty(values.shape, dtype=np.float64)
    elif out.shape != values.shape or out.dtype != np.float64:
        raise InputError(
            f"'out' must be float64 of shape {values.shape}, got {out.dtype} of {out.shape}."
        )
    transform = _standardize_ranks if method in _RANK_METHODS else _standardize_values

    def work(rows: slice) -> None:
        # inside the worker: numpy's error state is per thread
        with np.errstate(invalid="ignore", divide="ignore"):
            transform(values[rows], method, out[rows])

    step = max(1, _ROW_CHUNK_VALUES // max(1, values.shape[1]))
    chunks = [slice(s, s + step) for s in range(0, len(values), step)]
    workers = min(torch.get_num_threads(), len(chunks))
    if workers <= 1:
        for rows in chunks:
            work(rows)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, chunks))
    return out


def _standardize_values(values: np.ndarray, method: str, out: np.ndarray) -> None:
    values = values.astype(np.float64)
    if method != "cosine":
        values = _centred(values)
    out[:] = values / np.linalg.norm(values, axis=1, keepdims=True)


def _standardize_ranks(values: np.ndarray, method: str, out: np.ndarray) -> None:
    """``out`` = the standardised ranks of ``values`` (R, n), ties averaged, row by row.

    Rather than `scipy.stats.rankdata` (a float64 copy through several full-size passes): one
    sort per row (`_sort_rows`), the ordinal ranks with the runs of tied values set to their
    mean rank, scattered once. The centre (n + 1) / 2 and the sum of squared centred
    ranks, (n^3 - n - sum over runs of (L^3 - L)) / 12, are exact (while n^3 < 2^53), so the
    result equals centring and normalising scipy's ranks, to the last bit for RDMs below about
    200,000 pairs.
    """
    n_rows, n = values.shape
    order, first, last = _sort_rows(values)
    lengths = last - first + 1
    run_rows = first // n
    centre = (n + 1) / 2
    centred = np.arange(1, n + 1, dtype=np.float64) - centre
    # run members' centred mean rank: columns c..c + L - 1 hold ordinal ranks c + 1..c + L
    tied = (2 * (first - run_rows * n) + lengths + 1) / 2.0 - centre
    if method == "rho_a":
        factor = np.sqrt(12.0 / (n**3 - n))
        in_order = np.broadcast_to(centred * factor, (n_rows, n)).copy()
        tied = tied * factor
    else:
        ties = np.bincount(run_rows, weights=lengths**3.0 - lengths, minlength=n_rows)
        norm = np.sqrt(((n**3 - n) - ties) / 12.0)
        in_order = centred / norm[:, None]
        tied = tied / norm[run_rows]
    # the ranks in sorted order, the runs of ties (contiguous there) overwritten with their
    # mean, then one scatter per row (a 1-d scatter: about twice as fast as out[k, order[k]])
    if first.size:
        members, _ = _run_members(first, lengths)
        in_order.reshape(-1)[members] = np.repeat(tied, lengths)
    for k in range(n_rows):
        out[k][order[k]] = in_order[k]
    out[np.isnan(values).any(1)] = np.nan  # as scipy's rankdata: NaN propagates to the row


def rank_rows(values: np.ndarray) -> np.ndarray:
    """Ranks along each row, ties averaged: ``scipy.stats.rankdata(values, axis=1)`` exactly.

    By the sort of `_sort_rows`, 2-3x faster than scipy's stable argsort. A value beyond
    every other ranks last, so it can stand for entries to leave out of a row: the others
    keep their ranks.

    Parameters
    ----------
    values : ndarray, shape (R, n)
        float32 or float64 (1-d: one row).

    Returns
    -------
    ndarray, shape (R, n), float64
        A row holding NaN gives a row of NaN, as scipy's.
    """
    values = _float_rows(values)
    if values.ndim != 2:
        raise InputError(f"rank_rows expects a 2-d array (rows, values), got shape {values.shape}.")
    n_rows, n = values.shape
    if values.size == 0:
        return np.empty(values.shape, dtype=np.float64)
    order, first, last = _sort_rows(values)
    lengths = last - first + 1
    in_order = np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), (n_rows, n)).copy()
    if first.size:
        members, _ = _run_members(first, lengths)
        in_order.reshape(-1)[members] = np.repeat((2 * (first % n) + lengths + 1) / 2.0, lengths)
    ranks = np.empty_like(in_order)
    np.put_along_axis(ranks, order, in_order, axis=1)
    ranks[np.isnan(values).any(1)] = np.nan
    return ranks


_LOW, _HIGH = (0, 1) if sys.byteorder == "little" else (1, 0)  # uint32 halves of a uint64


def _sort_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's argsort and the runs of equal values, as flat positions in the sorted rows.

    numpy sorts plain 64-bit integers about twice as fast as it argsorts, so each value's
    32-bit key is packed above its column into one uint64 and the keys are sorted; the low
    halves are the argsort and equal high halves the ties. A float32 value's key is its bits,
    made order-preserving (exact). A float64 row's keys are its values spread over the 2^32
    steps between its minimum and maximum (float32 bits would tie about a tenth of the values
    of a million-pair mean RDM); both maps are monotone, so only within runs of equal keys can
    the order be wrong: those few runs are re-sorted by their float64 values, and the ties
    taken from those. Rows with NaN come out in some order (the caller makes them NaN).

    Returns
    -------
    order : ndarray of intp, shape (R, n)
    first, last : ndarray of int, shape (n_runs,)
        Flat positions in the (R, n) sorted rows of each run of equal values, in order.
    """
    n_rows, n = values.shape
    packed = np.empty((n_rows, n), dtype=np.uint64)
    spread = _spread_keys(values) if values.dtype == np.float64 else None
    if spread is not None:
        packed[:] = spread
    else:
        with np.errstate(over="ignore"):  # float64 beyond float32's range: +-inf, re-sorted
            keys = values.astype(np.float32, copy=False) + np.float32(0)  # -0.0 ties with 0.0
        bits = keys.view(np.uint32)
        # negative floats: every bit flipped (larger magnitude first); others: sign bit set
        flip = (bits >> np.uint32(31)) * np.uint32(0x7FFFFFFF) | np.uint32(0x80000000)
        np.bitwise_xor(bits, flip, out=packed, casting="unsafe")
    packed <<= np.uint64(32)
    packed |= np.arange(n, dtype=np.uint64)
    packed.sort(axis=1)
    halves = packed.view(np.uint32).reshape(n_rows, n, 2)
    order = halves[..., _LOW].astype(np.intp)
    high = halves[..., _HIGH]
    first, last = _runs_of_equal(high)
    if values.dtype == np.float32 or first.size == 0:
        return order, first, last
    lengths = last - first + 1
    members, run = _run_members(first, lengths)
    exact = values.reshape(-1)[members - members % n + order.reshape(-1)[members]]
    leaders = exact[np.cumsum(lengths) - lengths]
    # most runs are true ties (equal float64 values): only runs whose key hides different
    # values are re-sorted
    mixed = np.zeros(first.size, dtype=bool)
    mixed[run[exact != np.repeat(leaders, lengths)]] = True
    if not mixed.any():
        return order, first, last
    sub_first, sub_last = _resort_runs(order, values, first[mixed], lengths[mixed])
    first = np.concatenate([first[~mixed], sub_first])
    last = np.concatenate([last[~mixed], sub_last])
    by_position = np.argsort(first)
    return order, first[by_position], last[by_position]


def _resort_runs(
    order: np.ndarray, values: np.ndarray, first: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Re-sort ``order`` within the given runs (flat positions) by the exact values; returns
    the runs of equal exact values found in them (flat first and last positions)."""
    n = values.shape[1]
    members, run = _run_members(first, lengths)
    flat_order = order.reshape(-1)
    columns = flat_order[members]
    exact = values.reshape(-1)[members - members % n + columns]
    resort = np.lexsort((exact, run))  # by run, then by float64 value within a run
    flat_order[members] = columns[resort]
    exact = exact[resort]
    same = np.zeros(members.size, dtype=bool)
    same[:-1] = (exact[1:] == exact[:-1]) & (run[1:] == run[:-1])
    at = np.flatnonzero(same)
    if at.size == 0:
        return at, at
    starts, stops = _run_bounds(at)
    return members[at[starts]], members[at[stops] + 1]


def _spread_keys(values: np.ndarray) -> np.ndarray | None:
    """Order-preserving uint32 keys of float64 rows, (x - min) scaled to 0..2^32 - 1; None
    (for all rows) where a row is not finite or its spread is beyond float64's range."""
    low = values.min(1, keepdims=True)
    top = float(2**32 - 1)
    with np.errstate(invalid="ignore", over="ignore"):
        spread = values.max(1, keepdims=True) - low
        scale = np.divide(top, spread, out=np.zeros_like(spread), where=spread > 0)
    if not (np.isfinite(spread).all() and np.isfinite(scale).all()):  # NaN, inf, tiny spreads
        return None
    keys = values - low
    keys *= scale
    np.minimum(keys, top, out=keys)  # (rounding never passes it; a guard for the cast)
    return keys.astype(np.uint32)


def _runs_of_equal(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of equal values in sorted rows (R, n): flat positions of each run's first and last."""
    tied = np.zeros(ordered.shape, dtype=bool)  # [k, c]: ordered[k, c] == ordered[k, c + 1]
    np.equal(ordered[:, 1:], ordered[:, :-1], out=tied[:, :-1])
    at = np.flatnonzero(tied)  # the last column stays False: no run crosses a row
    if at.size == 0:
        return at, at
    starts, stops = _run_bounds(at)
    return at[starts], at[stops] + 1


def _run_bounds(at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each stretch of consecutive integers in sorted ``at`` starts and stops (indices)."""
    breaks = np.flatnonzero(np.diff(at) != 1)
    return np.concatenate([[0], breaks + 1]), np.concatenate([breaks, [at.size - 1]])


def _run_members(first: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every position of every run (first, first + 1, ...), and the run each belongs to."""
    run = np.repeat(np.arange(first.size), lengths)
    members = np.repeat(first - np.cumsum(lengths) + lengths, lengths) + np.arange(run.size)
    return members, run


def correlate_rowwise(meg: np.ndarray, models: np.ndarray, method: str) -> np.ndarray:
    """Correlation of ``meg[t]`` with ``models[t]`` for every t: (T, pairs) x 2 -> (T,).

    Rows without NaN are correlated all at once; otherwise row by row with `correlate`.
    """
    check_option("method", method, METHODS)
    meg, models = _float_rows(meg), _float_rows(models)
    complete = not (np.isnan(meg).any() or np.isnan(models).any())
    if complete and method != "kendall_tau_a" and meg.shape[1] >= 3:  # all rows at once
        return (standardize(meg, method) * standardize(models, method)).sum(1)
    return np.array([correlate(meg[t], models[t], method)[0, 0] for t in range(len(meg))])
