"""Statistics for RDM correlations and accuracies: permutation tests (also cluster-based,
over time), Wilson CIs, and the comparison of two RDM files with both (bootstrap CIs:
`clip_hba.rsa.bootstrap`)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage, stats

from clip_hba._validation import (
    InputError,
    check_count,
    check_level,
    check_option,
    check_seed,
)
from clip_hba.rsa.bootstrap import bootstrap_rdm_correlation
from clip_hba.rsa.comparisons import COMPARISONS, compare, paired_condensed
from clip_hba.rsa.methods import Asymmetry, Method
from clip_hba.rsa.rdms import n_conditions, pair_index, read_rdm

__all__ = [
    "Cluster",
    "PermutationResult",
    "RDMComparison",
    "cluster_permutation_test",
    "compare_rdm_files",
    "permutation_test_rdm",
    "proportion_ci",
    "rdm_comparison",
]


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
    check_count("n_permutations", n_permutations)
    check_seed(seed)
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
    check_level(ci_level)
    if n_total < 1:
        raise InputError("A proportion needs at least one trial, got 0.")
    interval = stats.binomtest(int(n_success), int(n_total)).proportion_ci(ci_level, "wilson")
    return float(interval.low), float(interval.high)


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
