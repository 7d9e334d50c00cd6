"""Statistics for RDM correlations and accuracies: bootstrap CIs, permutation tests (also
cluster-based, over time), Wilson CIs."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage, stats

from clip_hba._validation import InputError, check_option, check_type
from clip_hba.rsa.comparisons import COMPARISONS, compare, paired_condensed
from clip_hba.rsa.methods import Asymmetry, Method
from clip_hba.rsa.rdms import n_conditions, pair_index, read_rdm

__all__ = [
    "BootstrapResult",
    "Cluster",
    "PermutationResult",
    "RDMComparison",
    "bootstrap_rdm_correlation",
    "cluster_permutation_test",
    "compare_rdm_files",
    "permutation_test_rdm",
    "proportion_ci",
    "rdm_comparison",
]


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


@dataclass(frozen=True)
class PermutationResult:
    """Permutation test of an RDM comparison (conditions relabelled, rows and columns together).

    Attributes
    ----------
    value : float
        The observed comparison.
    p_value : float
        ``(1 + #{null >= value}) / (1 + n_permutations)`` for ``alternative="greater"``.
    null : ndarray, shape (n_permutations,)
    """

    value: float
    p_value: float
    null: np.ndarray


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
    _check_count("n_bootstrap", n_bootstrap)
    _check_level(ci_level)
    _check_seed(seed)
    value = compare(x, y, method)
    conditions = np.arange(n_conditions(x.size))
    statistic = _resampled_statistic(x, y, method)
    with _quiet_degenerate():  # undefined resamples are dropped below
        drawn = stats.bootstrap(
            (conditions,),
            statistic,
            n_resamples=n_bootstrap,
            vectorized=False,
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
    ci = _bca_or_centred(samples, value, conditions, statistic, ci_level)
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
) -> tuple[float, float]:
    """The BCa interval (Efron & Tibshirani 1993, eqs. 14.10-14.15), or where it is undefined
    or unreliable (a bias term beyond 2 standard normal units, i.e. nearly every resample on
    one side of the estimate, or an interval that misses the estimate) the percentile interval
    moved so that its median sits on the estimate.

    Written out rather than taken from `scipy.stats.bootstrap` so that the acceleration can
    come from a grouped jackknife: with more than `_JACKKNIFE_GROUPS` conditions, leaving out
    one condition at a time would cost one comparison per condition (1,854 for THINGS).
    """
    z0 = stats.norm.ppf(np.mean(samples < value))
    jackknife = np.array([statistic(np.delete(conditions, g)) for g in _groups(conditions)])
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


def permutation_test_rdm(
    a: Any,
    b: Any,
    method: Method = "spearman",
    n_permutations: int = 1000,
    alternative: Literal["greater", "less", "two-sided"] = "greater",
    seed: int | None = 0,
) -> PermutationResult:
    """Test ``compare(a, b, method)`` against relabelled conditions.

    The conditions of ``b`` are permuted (its rows and columns together), which keeps the
    dependence between the pairs that share a condition (Mantel test).

    Parameters
    ----------
    a, b : RDM or condensed / square array
    method : str
    n_permutations : int
    alternative : {"greater", "less", "two-sided"}
        Two-sided compares absolute values.
    seed : int or None

    Returns
    -------
    PermutationResult
    """
    check_option("alternative", alternative, ("greater", "less", "two-sided"))
    _check_count("n_permutations", n_permutations)
    _check_seed(seed)
    x, y = paired_condensed(a, b)
    value = compare(x, y, method)
    n = n_conditions(x.size)
    rng = np.random.default_rng(seed)
    u, v = np.triu_indices(n, k=1)
    statistic = COMPARISONS[method]
    null = np.empty(n_permutations)
    for k in range(n_permutations):
        order = rng.permutation(n)
        y_perm = y[pair_index(order[u], order[v], n)]
        keep = ~(np.isnan(x) | np.isnan(y_perm))
        null[k] = statistic(x[keep], y_perm[keep]) if keep.sum() >= 3 else np.nan
    null = null[np.isfinite(null)]
    if alternative == "greater":
        extreme = null >= value
    elif alternative == "less":
        extreme = null <= value
    else:
        extreme = np.abs(null) >= abs(value)
    p_value = (1 + int(extreme.sum())) / (1 + null.size)
    return PermutationResult(value, p_value, null)


@dataclass(frozen=True)
class Cluster:
    """A run of consecutive supra-threshold timepoints and its permutation p-value.

    ``start_ms`` and ``stop_ms`` are the first and last timepoint (inclusive); ``mass`` is the
    sum of the tested values over the cluster.
    """

    start_ms: float
    stop_ms: float
    mass: float
    p_value: float

    def to_dict(self) -> dict:
        return asdict(self)


def cluster_permutation_test(
    observed: Any,
    null: Any,
    times_ms: Any,
    threshold_p: float = 0.05,
) -> list[Cluster]:
    """Cluster-based permutation test over time (Maris & Oostenveld 2007), one-sided (> null).

    Each timepoint is compared with its own permutation distribution: it is supra-threshold when
    it exceeds the ``1 - threshold_p`` quantile of the null at that time. Consecutive
    supra-threshold timepoints form a cluster whose mass is the sum of the observed values. A
    cluster's p-value is the share of permutations whose largest cluster mass (found the same
    way) reaches it, which controls the family-wise error over the whole time axis.

    Parameters
    ----------
    observed : array-like, shape (T,)
        The statistic per timepoint (e.g. an RSA correlation, baseline-corrected or not).
    null : array-like, shape (n_permutations, T)
        The statistic under the null, each row one permutation of the whole time course (so
        temporal autocorrelation is kept).
    times_ms : array-like, shape (T,)
    threshold_p : float
        Cluster-forming threshold, in (0, 1).

    Returns
    -------
    list of Cluster, in time order

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> null = rng.normal(size=(500, 50))
    >>> observed = np.zeros(50)
    >>> observed[20:30] = 3.0
    >>> [(c.start_ms, c.stop_ms) for c in cluster_permutation_test(observed, null, range(50))
    ...  if c.p_value < 0.05]
    [(20.0, 29.0)]
    """
    observed = np.asarray(observed, dtype=np.float64)
    null = np.asarray(null, dtype=np.float64)
    times_ms = np.asarray(times_ms, dtype=np.float64)
    if not 0 < threshold_p < 1:
        raise InputError(f"Invalid value for 'threshold_p': expected in (0, 1), got {threshold_p}.")
    if observed.ndim != 1 or null.ndim != 2 or null.shape[1] != observed.size:
        raise InputError(
            f"Expected observed (T,) and null (n_permutations, T), got {observed.shape} and "
            f"{null.shape}."
        )
    if times_ms.shape != observed.shape:
        raise InputError(f"times_ms has {times_ms.size} values for {observed.size} timepoints.")
    null = np.nan_to_num(null, nan=-np.inf)
    with np.errstate(invalid="ignore"):  # a timepoint undefined in every permutation: no threshold
        threshold = np.quantile(null, 1.0 - threshold_p, axis=0)
    null_max = np.array([_max_cluster_mass(row, threshold) for row in null])
    labels, n_clusters = ndimage.label(np.nan_to_num(observed, nan=-np.inf) > threshold)
    clusters = []
    for k in range(1, n_clusters + 1):
        where = np.flatnonzero(labels == k)
        mass = float(observed[where].sum())
        p_value = (1 + int((null_max >= mass).sum())) / (1 + len(null_max))
        clusters.append(
            Cluster(float(times_ms[where[0]]), float(times_ms[where[-1]]), mass, p_value)
        )
    return clusters


def _max_cluster_mass(values: np.ndarray, threshold: np.ndarray) -> float:
    labels, n_clusters = ndimage.label(values > threshold)
    if n_clusters == 0:
        return -np.inf
    return float(ndimage.sum_labels(values, labels, np.arange(1, n_clusters + 1)).max())


@dataclass(frozen=True)
class RDMComparison:
    """An RDM comparison with its bootstrap CI and permutation p-value (None when not run)."""

    method: str
    value: float
    ci: tuple[float, float] | None
    p_value: float | None
    n_conditions: int
    n_pairs: int
    ci_level: float
    n_bootstrap: int
    n_permutations: int
    seed: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def rdm_comparison(
    a: Any,
    b: Any,
    method: Method = "spearman",
    n_bootstrap: int = 1000,
    n_permutations: int = 1000,
    ci_level: float = 0.95,
    seed: int | None = 0,
) -> RDMComparison:
    """`compare` plus a bootstrap CI over conditions and a permutation test (one-sided, greater).

    ``n_bootstrap=0`` or ``n_permutations=0`` skips that statistic. `RDM` inputs are aligned by
    concept id first; ``n_pairs`` counts the pairs that hold numbers in both RDMs.
    """
    x, y = paired_condensed(a, b)
    value = compare(x, y, method)
    ci = None
    if n_bootstrap:
        ci = bootstrap_rdm_correlation(x, y, method, n_bootstrap, ci_level, seed).ci
    p_value = None
    if n_permutations:
        p_value = permutation_test_rdm(x, y, method, n_permutations, seed=seed).p_value
    return RDMComparison(
        method=method,
        value=value,
        ci=ci,
        p_value=p_value,
        n_conditions=n_conditions(x.size),
        n_pairs=int((~(np.isnan(x) | np.isnan(y))).sum()),
        ci_level=ci_level,
        n_bootstrap=n_bootstrap,
        n_permutations=n_permutations,
        seed=seed,
    )


def proportion_ci(n_success: int, n_total: int, ci_level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (e.g. an odd-one-out accuracy)."""
    _check_level(ci_level)
    if n_total < 1:
        raise InputError("A proportion needs at least one trial, got 0.")
    interval = stats.binomtest(int(n_success), int(n_total)).proportion_ci(ci_level, "wilson")
    return float(interval.low), float(interval.high)


def _check_count(name: str, value: int) -> None:
    check_type(name, value, (int, np.integer), "an integer")
    if value < 1:
        raise InputError(f"Invalid value for {name!r}: expected a positive integer, got {value!r}.")


def _check_seed(seed: int | None) -> None:
    if seed is None:
        return
    check_type("seed", seed, (int, np.integer), "None or an integer")
    if seed < 0:
        raise InputError(
            f"Invalid value for 'seed': expected None or an integer >= 0, got {seed!r}."
        )


def _check_level(ci_level: float) -> None:
    if not 0 < ci_level < 1:
        raise InputError(
            f"Invalid value for 'ci_level': expected a number in (0, 1), got {ci_level!r}."
        )


def compare_rdm_files(
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
    ids_a: str | os.PathLike | None = None,
    ids_b: str | os.PathLike | None = None,
    asymmetry: Asymmetry = "raise",
    **settings: Any,
) -> RDMComparison:
    """`rdm_comparison` of two RDM files (see `clip_hba.rsa.rdms.read_rdm` for their formats).

    With ids for both, the RDMs are aligned by concept id over the concepts they share;
    without, they must describe the same conditions in the same order. ``asymmetry`` is how
    an asymmetric square matrix is condensed (`clip_hba.rsa.rdms.to_condensed`). ``settings``
    are the keyword arguments of `rdm_comparison`.
    """
    if (ids_a is None) != (ids_b is None):
        raise InputError("Give concept ids for both RDMs (--ids-a and --ids-b) or for neither.")
    a, b = (read_rdm(path, ids, asymmetry) for path, ids in ((path_a, ids_a), (path_b, ids_b)))
    return rdm_comparison(a, b, **settings)
