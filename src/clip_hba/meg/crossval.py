"""Cross-validated RDMs from epochs: crossnobis distances and closed-form pairwise LDA.

Both take epochs (n_epochs, n_channels, n_times), a condition and a fold per epoch
(`clip_hba.meg.epochs.crossval_folds`) and compute every pair at every timepoint with matrix
products per fold and chunk of timepoints: nothing loops over pairs or timepoints. For fold f
the training set is every other fold; its condition means and its residual scatter pooled over
all conditions come from per-fold condition sums and Gram matrices, so no training set is ever
gathered. The covariance (`fold_covariances`) is that scatter over n training epochs, shrunk:

- a number s in [0, 1]: ``(1 - s) S + s tr(S) / p I`` (scikit-learn's ``shrunk_covariance``);
- ``"auto"``: Ledoit-Wolf on the residuals standardised per channel, rescaled, i.e. shrinkage
  toward the diagonal (what ``LinearDiscriminantAnalysis(shrinkage="auto")`` does per class).

`crossnobis_rdms` (its noise: that covariance over n - conditions) and `lda_rdms` (over n, as
scikit-learn) say what they equal.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from clip_hba._validation import InputError, check_range

__all__ = ["crossnobis_rdms", "fold_covariances", "lda_rdms"]

CHUNK_BYTES = 512 << 20  # float64 working set per chunk of timepoints
BLOCK_BYTES = 4 << 20  # residuals formed at once for the Ledoit-Wolf fourth moment

Shrinkage = float | str


@dataclass(frozen=True)
class _Layout:
    """Epochs sorted by (fold, condition), with the offsets of each fold and group."""

    perm: np.ndarray  # (N,) sorted order of the kept epochs
    cond: np.ndarray  # (N,) condition number of each sorted epoch
    bounds: np.ndarray  # (F + 1,) first sorted row of each fold
    starts: np.ndarray  # (G,) first sorted row of each (fold, condition) group
    groups: np.ndarray  # (G,) fold * C + condition of each group
    counts: np.ndarray  # (F, C) epochs per fold and condition
    fold_names: np.ndarray  # (F,) fold numbers as given

    @property
    def n_folds(self) -> int:
        return len(self.bounds) - 1


def _layout(
    data: np.ndarray, conditions: Sequence[str], order: Sequence[str], folds: Any
) -> _Layout:
    data_shape = np.shape(data)
    conditions = np.asarray(conditions, dtype=str)
    folds = np.asarray(folds)
    if len(data_shape) != 3 or data_shape[0] != len(conditions) or len(folds) != len(conditions):
        raise InputError(
            f"Epochs of shape {data_shape} do not match {len(conditions)} condition labels and "
            f"{len(folds)} fold labels."
        )
    if not np.issubdtype(folds.dtype, np.integer):
        raise InputError(
            f"Fold labels must be integers (`clip_hba.meg.epochs.crossval_folds`), got "
            f"{folds.dtype}."
        )
    position = {c: k for k, c in enumerate(order)}
    if len(position) < 2:
        raise InputError(f"Cross-validated RDMs need at least 2 conditions, got {len(position)}.")
    cond = np.array([position.get(c, -1) for c in conditions.tolist()], dtype=np.int64)
    kept = np.flatnonzero(cond >= 0)
    fold_names, fold = np.unique(folds[kept], return_inverse=True)
    if len(fold_names) < 2:
        raise InputError(f"Cross-validation needs at least 2 folds, got {len(fold_names)}.")
    by_fold = np.lexsort((cond[kept], fold))
    perm, sorted_fold = kept[by_fold], fold[by_fold]
    sorted_cond = cond[perm]
    key = sorted_fold * len(order) + sorted_cond
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    counts = np.zeros((len(fold_names), len(order)), dtype=np.int64)
    np.add.at(counts, (sorted_fold, sorted_cond), 1)
    bounds = np.searchsorted(sorted_fold, np.arange(len(fold_names) + 1))
    return _Layout(perm, sorted_cond, bounds, starts, key[starts], counts, fold_names)


def _check_shrinkage(shrinkage: Shrinkage) -> Shrinkage:
    if shrinkage == "auto":
        return shrinkage
    if isinstance(shrinkage, str):
        raise InputError(
            f"Invalid value for 'shrinkage': expected 'auto' or a number in [0, 1], got "
            f"{shrinkage!r}."
        )
    return float(check_range("shrinkage", shrinkage, 0, 1))


def _chunks(n_times: int, per_time_bytes: int, verbose: bool, desc: str) -> Iterator[slice]:
    step = max(1, CHUNK_BYTES // max(1, per_time_bytes))
    starts = range(0, n_times, step)
    for t0 in tqdm(starts, desc=desc, disable=not verbose or len(starts) == 1, leave=False):
        yield slice(t0, min(n_times, t0 + step))


def _chunk(data: np.ndarray, layout: _Layout, times: slice, centre: bool = True) -> np.ndarray:
    """Sorted epochs of some timepoints, (tc, N, p) float64, centred on the grand mean.

    Centring leaves every mean difference, covariance and LDA decision unchanged; it only keeps
    the Gram matrices (raw second moments) well away from cancellation, so a fixed-precision
    crossnobis, which forms none, skips it.
    """
    block = np.ascontiguousarray(data[layout.perm, :, times])  # (N, p, tc)
    n, p, n_t = block.shape
    # one 2-D transpose of (N p, tc) is the cheapest way numpy has to move time first
    x = block.reshape(n * p, n_t).T.astype(np.float64).reshape(n_t, n, p)
    if centre:
        x -= x.mean(1, keepdims=True)
    return x


class _FoldStats:
    """Per-fold condition sums and Gram matrices of one chunk, and each fold's training set."""

    def __init__(self, x: np.ndarray, layout: _Layout, grams: bool) -> None:
        n_t, _, p = x.shape
        self.x, self.layout = x, layout
        n_folds, n_cond = layout.counts.shape
        # groups are few epochs each (often one): adding their k-th epochs beats reduceat, and
        # one epoch of every condition in every fold (as THINGS-MEG's sessions) needs no copy
        sizes = np.diff(np.r_[layout.starts, x.shape[1]])
        sums = x if len(sizes) == x.shape[1] else x[:, layout.starts]
        for k in range(1, int(sizes.max())):
            longer = np.flatnonzero(sizes > k)
            sums[:, longer] += x[:, layout.starts[longer] + k]
        if len(layout.groups) < n_folds * n_cond:  # else they are every (fold, condition)
            full = np.zeros((n_t, n_folds * n_cond, p))
            full[:, layout.groups] = sums
            sums = full
        self.sums = sums.reshape(n_t, n_folds, n_cond, p)
        self.total = self.sums.sum(1)
        self.grams = None
        if grams:
            self.grams = np.empty((layout.n_folds, n_t, p, p))
            for f in range(layout.n_folds):
                block = x[:, layout.bounds[f] : layout.bounds[f + 1]]
                np.matmul(block.transpose(0, 2, 1), block, out=self.grams[f])
            self.gram_total = self.grams.sum(0)

    def train_means(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        """Training counts (C,) and means (tc, C, p) of fold f (zero rows for absent ones)."""
        n_train = self.layout.counts.sum(0) - self.layout.counts[f]
        inverse = 1.0 / np.where(n_train > 0, n_train, np.inf)
        means = self.total - self.sums[:, f]
        means *= inverse[:, None]
        return n_train, means

    def covariance(
        self, f: int, n_train: np.ndarray, means: np.ndarray, shrinkage: Shrinkage, unbiased: bool
    ) -> np.ndarray:
        """Shrunk pooled residual covariance of fold f's training set, (tc, p, p)."""
        assert self.grams is not None
        present = n_train > 0
        n, dof = int(n_train.sum()), int(n_train.sum() - present.sum())
        if dof < 1:
            raise InputError(
                f"No residuals to estimate a covariance from when fold "
                f"{self.layout.fold_names[f]} is left out: every condition has a single training "
                "epoch; use more sessions/runs or fewer folds."
            )
        if shrinkage == 0 and dof < self.x.shape[2]:
            raise InputError(
                f"Without shrinkage the covariance of the training set without fold "
                f"{self.layout.fold_names[f]} is singular: {dof} residual degrees of freedom "
                f"(epochs - conditions) for {self.x.shape[2]} channels; use shrinkage 'auto' "
                "or a number > 0."
            )
        weighted = means[:, present] * np.sqrt(n_train[present])[:, None]
        cov = np.subtract(self.gram_total, self.grams[f])
        cov -= np.matmul(weighted.transpose(0, 2, 1), weighted)
        cov /= n
        p = cov.shape[-1]
        diagonal = np.arange(p)
        var = cov[:, diagonal, diagonal]
        scale = n / dof if unbiased else 1.0
        if shrinkage == "auto":
            # sklearn's _cov(X, "auto"): standardise, Ledoit-Wolf, rescale; the result is
            # (1 - a) S + a mu diag(var), so the standardised S is never formed
            safe = np.where(var > 0, var, 1.0)
            weights = 1.0 / safe
            mu = (var * weights).sum(1) / p
            delta_ = np.einsum("tj,tj->t", (np.square(cov) @ weights[:, :, None])[..., 0], weights)
            beta_ = self._fourth_moment(f, means, weights)
            beta = (beta_ / n - delta_) / (p * n)
            delta = (delta_ - p * mu**2) / p
            beta = np.minimum(beta, delta)
            with np.errstate(invalid="ignore", divide="ignore"):
                amount = np.where(beta > 0, beta / delta, 0.0)
            cov *= ((1 - amount) * scale)[:, None, None]
            cov[:, diagonal, diagonal] += (amount * mu * scale)[:, None] * safe
        else:
            cov *= (1 - shrinkage) * scale
            cov[:, diagonal, diagonal] += (shrinkage * scale * var.sum(1) / p)[:, None]
        return cov

    def _fourth_moment(self, f: int, means: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Sum over training epochs of the squared weighted norm of the residual, (tc,)."""
        lo, hi = self.layout.bounds[f], self.layout.bounds[f + 1]
        n_t, n, p = self.x.shape
        total = np.zeros(n_t)
        step = max(1, BLOCK_BYTES // (8 * n_t * p))  # rows whose residuals stay in cache
        for start, stop in ((0, lo), (hi, n)):
            for r0 in range(start, stop, step):
                rows = slice(r0, min(stop, r0 + step))
                residual = self.x[:, rows] - means[:, self.layout.cond[rows]]
                np.square(residual, out=residual)
                norms = residual @ weights[:, :, None]
                total += np.einsum("tni,tni->t", norms, norms)
        return total


@functools.cache
def _one_thread() -> Any:
    """A context running BLAS/LAPACK on one thread (threadpoolctl comes with scikit-learn)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return contextlib.nullcontext
    return functools.partial(ThreadpoolController().limit, limits=1, user_api="blas")


def _solve(cov: np.ndarray, rhs: np.ndarray, fold: Any) -> np.ndarray:
    # LAPACK on many small systems waits on its own threads, badly so on a shared machine; one
    # thread per solve is steadier (the matrix products around it keep every thread)
    try:
        with _one_thread()():
            return np.linalg.solve(cov, rhs)
    except np.linalg.LinAlgError:
        raise InputError(
            f"The covariance of the training set without fold {fold} is singular (fewer "
            "residuals than channels?); use shrinkage 'auto' or a number > 0."
        ) from None


def fold_covariances(
    data: np.ndarray,
    conditions: Sequence[str],
    order: Sequence[str],
    folds: Any,
    shrinkage: Shrinkage = "auto",
    unbiased: bool = False,
) -> np.ndarray:
    """The shrunk pooled residual covariance of each fold's training set at every timepoint.

    Parameters
    ----------
    data : ndarray, shape (n_epochs, n_channels, n_times)
    conditions : sequence of str, length n_epochs
    order : sequence of str
        The conditions used (epochs of others are ignored).
    folds : array of int, shape (n_epochs,)
        `clip_hba.meg.epochs.crossval_folds`.
    shrinkage : 'auto' or float in [0, 1]
    unbiased : bool
        Divide the scatter by n - conditions (the crossnobis noise) instead of n (LDA).

    Returns
    -------
    ndarray, shape (n_folds, n_times, n_channels, n_channels)
    """
    shrinkage = _check_shrinkage(shrinkage)
    layout = _layout(data, conditions, order, folds)
    n_times = data.shape[2]
    out = np.empty((layout.n_folds, n_times, data.shape[1], data.shape[1]))
    for times in _chunks(n_times, _per_time(layout, data.shape[1], 0), False, ""):
        stats = _FoldStats(_chunk(data, layout, times), layout, grams=True)
        for f in range(layout.n_folds):
            n_train, means = stats.train_means(f)
            out[f, times] = stats.covariance(f, n_train, means, shrinkage, unbiased)
    return out


def _per_time(layout: _Layout, p: int, extra: int) -> int:
    n, (f, c) = len(layout.perm), layout.counts.shape
    return 8 * (3 * n * p + 2 * f * c * p + (f + 2) * p * p + 4 * c * c + extra)


def _condensed(square: np.ndarray, count: np.ndarray) -> np.ndarray:
    """(tc, C, C) sums over folds and (C, C) counts -> (tc, pairs), NaN where count is 0."""
    i, j = np.triu_indices(square.shape[1], k=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count[i, j] > 0, (square[:, i, j] + square[:, j, i]) / count[i, j], np.nan)


def crossnobis_rdms(
    data: np.ndarray,
    conditions: Sequence[str],
    order: Sequence[str],
    folds: Any,
    shrinkage: Shrinkage = "auto",
    precision: np.ndarray | None = None,
    verbose: bool = False,
    dtype: Any = np.float64,
) -> np.ndarray:
    """Cross-validated Mahalanobis (crossnobis) distances between conditions at every time.

    For each fold f left out, ``d_ab = (m_a - m_b)_train P (m_a - m_b)_f / n_channels`` with the
    means over the training folds and over fold f, averaged over the folds in which both
    conditions have training and test epochs (NaN if none). P is the inverse of the training
    set's residual covariance at that timepoint (`fold_covariances`, ``unbiased=True``), or the
    ``precision`` given.

    With the same precision, balanced or not, this is rsatoolbox's
    ``calc_rdm_movie(dataset, method="crossnobis", descriptor=..., cv_descriptor=<fold>,
    noise=precision)`` (leave one fold out, train = mean of all other epochs) to round-off; a
    (T, p, p) precision is its ``calc_rdm`` at each timepoint.

    Parameters
    ----------
    data : ndarray, shape (n_epochs, n_channels, n_times)
    conditions : sequence of str, length n_epochs
    order : sequence of str
        Order of the conditions in the RDMs.
    folds : array of int, shape (n_epochs,)
        `clip_hba.meg.epochs.crossval_folds`.
    shrinkage : 'auto' or float in [0, 1]
        Of the estimated noise covariance (ignored with ``precision``).
    precision : ndarray, shape (p, p) or (n_times, p, p), optional
        A fixed noise precision instead of the per-fold estimate.
    verbose : bool
    dtype : numpy dtype
        Of the result (computed in float64).

    Returns
    -------
    ndarray, shape (n_times, n_pairs)
    """
    shrinkage = _check_shrinkage(shrinkage)
    layout = _layout(data, conditions, order, folds)
    n_times, p = data.shape[2], data.shape[1]
    if precision is not None:
        precision = np.asarray(precision, dtype=np.float64)
        if precision.shape not in ((p, p), (n_times, p, p)):
            raise InputError(
                f"A precision of shape {precision.shape} does not fit {p} channels and "
                f"{n_times} times: expected ({p}, {p}) or ({n_times}, {p}, {p})."
            )
    counts = layout.counts
    valid = ((counts.sum(0) - counts) > 0) & (counts > 0)  # (F, C): trained and tested
    count = valid.T.astype(np.int64) @ valid
    out = np.empty((n_times, count.shape[0] * (count.shape[0] - 1) // 2), dtype=dtype)
    for times in _chunks(n_times, _per_time(layout, p, 0), verbose, "Crossnobis"):
        x = _chunk(data, layout, times, centre=precision is None)
        stats = _FoldStats(x, layout, grams=precision is None)
        # rsatoolbox copies a dataset per timepoint and fold; one kernel K = train P test^T per
        # fold covers every pair and the chunk's times: E = sum of diag(K)_a - K_ab, d = E + E^T
        excess = np.zeros((stats.x.shape[0], count.shape[0], count.shape[0]))
        for f in range(layout.n_folds):
            n_train, means = stats.train_means(f)
            if precision is None:
                cov = stats.covariance(f, n_train, means, shrinkage, unbiased=True)
                weighted = _solve(cov, means.transpose(0, 2, 1), layout.fold_names[f])
                weighted = weighted.transpose(0, 2, 1)
            elif precision.ndim == 2:  # one product for the chunk, not one per timepoint
                weighted = (means.reshape(-1, p) @ precision).reshape(means.shape)
            else:
                weighted = means @ precision[times]
            tested = np.where(counts[f] > 0, counts[f], 1)[:, None]
            kernel = weighted @ (stats.sums[:, f] / tested).transpose(0, 2, 1)
            if not valid[f].all():
                kernel *= valid[f][:, None] & valid[f][None, :]
            excess -= kernel
            excess += np.diagonal(kernel, axis1=1, axis2=2)[:, :, None] * valid[f]
        out[times] = _condensed(excess, count) / p
    return out


def lda_rdms(
    data: np.ndarray,
    conditions: Sequence[str],
    order: Sequence[str],
    folds: Any,
    shrinkage: Shrinkage = "auto",
    verbose: bool = False,
    dtype: Any = np.float64,
) -> np.ndarray:
    """Cross-validated pairwise accuracy (%) of two-class shrinkage LDA, every pair and time.

    For fold f left out, the pair (a, b) is decided by ``x^T P (m_b - m_a)`` against
    ``(m_b^T P m_b - m_a^T P m_a) / 2 - log(n_b / n_a)``: training means and counts of the two
    conditions, and P the inverse of ONE covariance per fold and timepoint, the residual
    covariance pooled over all training conditions, shrunk (`fold_covariances`). Sharing it is
    what makes all pairs one matrix product (test epochs x precision-weighted means); scikit-learn
    would pool over the pair only. So ``LinearDiscriminantAnalysis(solver="lsqr",
    covariance_estimator=<that covariance>)`` fitted per pair and fold gives the same
    predictions, and with two conditions ``LinearDiscriminantAnalysis(solver="lsqr",
    shrinkage=s)`` does for a number s (its ``"auto"`` shrinks each class on its own).

    A pair counts in a fold when both conditions have training epochs; the accuracy is over all
    its test epochs in those folds, NaN if there are none.

    Parameters
    ----------
    data : ndarray, shape (n_epochs, n_channels, n_times)
    conditions : sequence of str, length n_epochs
    order : sequence of str
        Order of the conditions in the RDMs.
    folds : array of int, shape (n_epochs,)
        `clip_hba.meg.epochs.crossval_folds`.
    shrinkage : 'auto' or float in [0, 1]
    verbose : bool
    dtype : numpy dtype
        Of the result.

    Returns
    -------
    ndarray, shape (n_times, n_pairs)
    """
    shrinkage = _check_shrinkage(shrinkage)
    layout = _layout(data, conditions, order, folds)
    n_times, p = data.shape[2], data.shape[1]
    counts = layout.counts
    n_cond = counts.shape[1]
    trained = (counts.sum(0) - counts) > 0  # (F, C)
    tested = trained.T.astype(np.int64) @ (trained * counts)  # [a, b]: b's, a and b trained
    largest = int(np.diff(layout.bounds).max())
    out = np.empty((n_times, n_cond * (n_cond - 1) // 2), dtype=dtype)
    later = np.arange(n_cond)
    for times in _chunks(n_times, _per_time(layout, p, 3 * largest * n_cond), verbose, "LDA"):
        stats = _FoldStats(_chunk(data, layout, times), layout, grams=True)
        right = np.zeros((stats.x.shape[0], n_cond, n_cond), dtype=np.int64)
        for f in range(layout.n_folds):
            n_train, means = stats.train_means(f)
            cov = stats.covariance(f, n_train, means, shrinkage, unbiased=False)
            weighted = _solve(cov, means.transpose(0, 2, 1), layout.fold_names[f])  # (tc, p, C)
            offset = 0.5 * np.einsum("tcp,tpc->tc", means, weighted)
            log_n = np.log(np.where(trained[f], n_train, 1))
            lo, hi = layout.bounds[f], layout.bounds[f + 1]
            rows = lo + np.flatnonzero(trained[f][layout.cond[lo:hi]])
            if not len(rows):
                continue
            own = layout.cond[rows]
            # every pair at once: a test epoch's score for each trained condition; the pair's
            # decision is the difference of two scores (sklearn fits one model per pair)
            scores = stats.x[:, rows] @ weighted - offset[:, None, :] + log_n  # (tc, n_test, C)
            margin = np.take_along_axis(scores, own[None, :, None], 2) - scores
            # sklearn picks the later class only when its score is strictly larger
            correct = (margin > 0) | ((margin == 0) & (own[:, None] < later))
            correct &= trained[f]
            first = np.flatnonzero(np.r_[True, own[1:] != own[:-1]])
            right[:, own[first]] += np.add.reduceat(correct, first, axis=1, dtype=np.int64)
        out[times] = 100.0 * _condensed(right, tested + tested.T)
    return out
