"""Bootstrap confidence intervals of RDM comparisons, resampling conditions (BCa)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from clip_hba._validation import InputError, check_count, check_level, check_seed
from clip_hba.rsa.comparisons import COMPARISONS, compare, paired_condensed, rank_rows
from clip_hba.rsa.methods import Method
from clip_hba.rsa.rdms import n_conditions, pair_index

__all__ = ["BootstrapResult", "bootstrap_rdm_correlation"]


@dataclass(frozen=True)
class BootstrapResult:
    """Bootstrap of an RDM comparison over conditions.

    Attributes
    ----------
    value : float
        The comparison on the full RDMs.
    ci : tuple of float
        Confidence interval ``(low, high)``: BCa, or the percentile interval where BCa is
        undefined (see `bootstrap_rdm_correlation`).
    samples : ndarray, shape (n_valid,)
        The statistic in each bootstrap sample where it was defined.
    """

    value: float
    ci: tuple[float, float]
    samples: np.ndarray


def bootstrap_rdm_correlation(
    a: Any,
    b: Any,
    method: Method = "spearman",
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    seed: int | None = 0,
) -> BootstrapResult:
    """Confidence interval of ``compare(a, b, method)`` by resampling conditions.

    Each resample draws the n conditions with replacement and compares the RDMs over the pairs
    of drawn positions that hold two different conditions (the pairs of a condition with its
    own copy are left out, as in rsatoolbox). Pairs that are NaN in either RDM are ignored.

    A pair whose conditions were drawn more than once appears several times, tied with its own
    copies in both RDMs. Tau-a and rho-a count every tie against the fit, so in a resample they
    are divided by the largest value these forced ties leave (the untied maximum less the
    copies' share): ties in the data still count, the resampling's own do not. Without this,
    identical RDMs score below 1 in nearly every resample and the interval excludes their 1.0.

    The interval is the bias-corrected and accelerated (BCa) bootstrap interval (Efron &
    Tibshirani 1993, ch. 14), with the acceleration from the jackknife over conditions (each
    condition left out with all its pairs; above 200 conditions, 200 groups of them). Unlike
    the percentile interval it allows for a skewed bootstrap distribution whose median is off
    the estimate: near a correlation of 1, Spearman and rho-a fall in most resamples (the
    copies of a pair move through the ranks together), and the percentile interval then lies
    below the estimate. Where BCa is undefined or unreliable (nearly every resample on one side
    of the estimate: a bias term beyond 2 standard units) or misses the estimate, the interval
    is the percentile interval moved so that its median is the estimate (clipped to [-1, 1]);
    it always holds the estimate. Where every resample gives the estimate (to rounding) the
    interval is that point. The resamples are drawn by `scipy.stats.bootstrap`.

    Parameters
    ----------
    a, b : RDM or condensed / square array
        `RDM` objects are aligned by concept id first.
    method : str
        Any method of `clip_hba.rsa.comparisons.compare`.
    n_bootstrap : int
    ci_level : float
        Coverage of the interval, in (0, 1).
    seed : int or None

    Returns
    -------
    BootstrapResult
    """
    x, y = paired_condensed(a, b)
    check_count("n_bootstrap", n_bootstrap)
    check_level(ci_level)
    check_seed(seed)
    value = compare(x, y, method)
    conditions = np.arange(n_conditions(x.size))
    batched = method in _BATCHED
    statistic = (_batched_statistic if batched else _resampled_statistic)(x, y, method)
    pairs = conditions.size * (conditions.size - 1) // 2
    with _quiet_degenerate():  # undefined resamples are dropped below
        drawn = stats.bootstrap(
            (conditions,),
            statistic,
            n_resamples=n_bootstrap,
            vectorized=batched,
            batch=max(1, _BATCH_VALUES // pairs) if n_bootstrap * pairs > _BATCH_VALUES else None,
            confidence_level=ci_level,
            method="percentile",
            rng=seed,
        )
    samples = drawn.bootstrap_distribution
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        raise InputError("The statistic was undefined in every bootstrap sample.")
    if np.all(np.abs(samples - value) <= _ROUNDING):
        return BootstrapResult(value, (value, value), samples)
    ci = _bca_or_centred(samples, value, conditions, statistic, ci_level, batched)
    return BootstrapResult(value, ci, samples)


_ROUNDING = 1e-12  # every method lies in [-1, 1]: an absolute tolerance suffices


def _resampled_statistic(x: np.ndarray, y: np.ndarray, method: str) -> Callable:
    """``statistic(drawn)``: the comparison over a resample of conditions.

    ``drawn`` (k,) holds condition numbers, repeated where a condition was drawn more than
    once; the result is NaN where fewer than 3 pairs hold numbers in both RDMs.
    """
    n = n_conditions(x.size)
    compare_pairs = COMPARISONS[method]
    upper: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # resamples and jackknife sizes

    def statistic(drawn: np.ndarray) -> float:
        u, v = upper.setdefault(drawn.size, np.triu_indices(drawn.size, k=1))
        p, q = drawn[u], drawn[v]
        distinct = p != q
        pairs = pair_index(p[distinct], q[distinct], n)
        pairs = pairs[~(np.isnan(x[pairs]) | np.isnan(y[pairs]))]
        if pairs.size < 3:
            return np.nan
        return float(compare_pairs(x[pairs], y[pairs])) * _forced_tie_factor(pairs, method)

    return statistic


# The methods whose resamples are compared all at once (a masked form of each); tau-a and
# rho-a (with their forced-tie factor) go one resample at a time.
_BATCHED = ("spearman", "pearson", "cosine")
_BATCH_VALUES = 1 << 21  # pairs x resamples per batch: about 200 MiB at most (Spearman)


def _batched_statistic(x: np.ndarray, y: np.ndarray, method: str) -> Callable:
    """`_resampled_statistic` over many resamples at once (``scipy.stats.bootstrap``'s
    vectorised form): ``statistic(drawn, axis=-1)`` with ``drawn`` (..., k) gives (...).

    The pairs a resample leaves out (a condition with its own copy, NaN in either RDM) are
    masked rather than dropped, so every resample keeps the shape of the batch; the result
    equals the one-resample form to float rounding (tests/test_stats.py). Written out because
    scipy has no masked Spearman along an axis; a loop over resamples was 1 ms each.
    """
    n = n_conditions(x.size)
    upper: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def statistic(drawn: np.ndarray, axis: int = -1) -> np.ndarray | float:
        drawn = np.moveaxis(np.asarray(drawn), axis, -1)
        u, v = upper.setdefault(drawn.shape[-1], np.triu_indices(drawn.shape[-1], k=1))
        rows = drawn.reshape(-1, drawn.shape[-1])
        p, q = rows[:, u], rows[:, v]
        keep = p != q
        pairs = pair_index(p, np.where(keep, q, (p + 1) % n), n)  # any valid pair where masked
        xs, ys = x[pairs], y[pairs]
        keep &= ~(np.isnan(xs) | np.isnan(ys))
        value = _masked_comparison(xs, ys, keep, method)
        value[keep.sum(-1) < 3] = np.nan
        value = value.reshape(drawn.shape[:-1])
        return float(value) if value.ndim == 0 else value

    return statistic


def _masked_comparison(xs: np.ndarray, ys: np.ndarray, keep: np.ndarray, method: str) -> np.ndarray:
    """The comparison of each row of ``xs`` and ``ys`` (b, m) over its entries where ``keep``
    (NaN where none is kept; a constant row as in `compare`'s pairwise form)."""
    if method == "spearman":  # ranks among the kept entries only
        # a value beyond every entry ranks the masked ones last; the others keep their ranks
        # (a finite one: rank_rows is faster on finite rows)
        xs = rank_rows(np.where(keep, xs, 2.0 * np.nanmax(np.abs(xs), initial=0.0) + 1.0))
        ys = rank_rows(np.where(keep, ys, 2.0 * np.nanmax(np.abs(ys), initial=0.0) + 1.0))
    xs, ys = np.where(keep, xs, 0.0), np.where(keep, ys, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method != "cosine":
            count = keep.sum(-1, keepdims=True)
            xs = np.where(keep, xs - xs.sum(-1, keepdims=True) / count, 0.0)
            ys = np.where(keep, ys - ys.sum(-1, keepdims=True) / count, 0.0)
        return (xs * ys).sum(-1) / np.sqrt((xs**2).sum(-1) * (ys**2).sum(-1))


def _forced_tie_factor(pairs: np.ndarray, method: str) -> float:
    """Untied maximum over the maximum left by the ties between copies of a pair (tau-a and
    rho-a; 1 for the methods that correct for ties or ignore them, NaN for one pair only)."""
    if method not in ("kendall_tau_a", "rho_a"):
        return 1.0
    copies = np.bincount(pairs).astype(np.float64)
    n = float(pairs.size)
    if method == "kendall_tau_a":  # pairs of pairs
        untied, forced = n * (n - 1), float((copies * (copies - 1)).sum())
    else:  # sum of squared centred ranks, times 12
        untied, forced = n**3 - n, float((copies**3 - copies).sum())
    return untied / (untied - forced) if untied > forced else np.nan


def _bca_or_centred(
    samples: np.ndarray,
    value: float,
    conditions: np.ndarray,
    statistic: Callable,
    ci_level: float,
    batched: bool,
) -> tuple[float, float]:
    """The BCa interval (Efron & Tibshirani 1993, eqs. 14.10-14.15), or where it is undefined
    or unreliable (a bias term beyond 2 standard normal units, i.e. nearly every resample on
    one side of the estimate, or an interval that misses the estimate) the percentile interval
    moved so that its median sits on the estimate.

    Written out rather than taken from `scipy.stats.bootstrap` so that the acceleration can
    come from a grouped jackknife: with more than `_JACKKNIFE_GROUPS` conditions, leaving out
    one condition at a time would cost one comparison per condition (1,854 for THINGS).
    A ``batched`` statistic (`_batched_statistic`) gets the leave-one-out resamples in batches.
    """
    z0 = stats.norm.ppf(np.mean(samples < value))
    groups = _groups(conditions)
    n = conditions.size
    if batched and len(groups) == n:  # leave-one-out: n resamples of n - 1, in batches
        left_out = np.broadcast_to(conditions, (n, n))[~np.eye(n, dtype=bool)].reshape(n, n - 1)
        step = max(1, _BATCH_VALUES // max(1, (n - 1) * (n - 2) // 2))
        jackknife = np.concatenate([statistic(left_out[k : k + step]) for k in range(0, n, step)])
    else:
        jackknife = np.array([statistic(np.delete(conditions, g)) for g in groups])
    spread = jackknife[np.isfinite(jackknife)].mean() - jackknife[np.isfinite(jackknife)]
    denominator = 6.0 * (spread**2).sum() ** 1.5
    accel = (spread**3).sum() / denominator if denominator > 0 else np.nan
    z = stats.norm.ppf([(1 - ci_level) / 2, (1 + ci_level) / 2])
    with np.errstate(invalid="ignore", divide="ignore"):  # z0 = +-inf: the fallback below
        quantiles = stats.norm.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z)))
    if np.isfinite(quantiles).all() and abs(z0) <= 2.0:
        low, high = np.quantile(samples, quantiles)
        if low <= value <= high:
            return float(low), float(high)
    tail = (1 - ci_level) / 2
    low, high = np.quantile(samples, [tail, 1 - tail]) + (value - np.median(samples))
    return float(max(low, -1.0)), float(min(high, 1.0))


_JACKKNIFE_GROUPS = 200


def _groups(conditions: np.ndarray) -> list[np.ndarray]:
    """Leave-one-out positions, or `_JACKKNIFE_GROUPS` contiguous groups of them."""
    if conditions.size <= _JACKKNIFE_GROUPS:
        return [np.array([k]) for k in range(conditions.size)]
    return np.array_split(np.arange(conditions.size), _JACKKNIFE_GROUPS)


@contextmanager
def _quiet_degenerate() -> Iterator[None]:
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        yield
