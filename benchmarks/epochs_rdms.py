"""Time RDMs from MEG epochs (correlation, crossnobis, LDA decoding) against their peers.

Synthetic epochs: ``--conditions`` x ``--trials`` x ``--channels`` x ``--times`` (200 x 10 x
272 x 141 by default, float32), one trial of each condition per session, and the sessions as
folds (leave one session out, 10 folds), as in THINGS-MEG. Condition patterns plus
channel-correlated noise. Three measurements, in one process:

- correlation: our `condition_rdms` against rsatoolbox's ``calc_rdm_movie(method="correlation")``
  and mne-rsa's ``rdm_array`` over a temporal searchlight of one sample (time only: they define
  the correlation on raw sensors, ours z-scores each sensor first, so values are not compared);
- crossnobis: `crossnobis_rdms` with a fixed noise precision (the inverse of the shrunk residual
  covariance of all epochs, pooled over time) against rsatoolbox's
  ``calc_rdm_movie(method="crossnobis", cv_descriptor=session, noise=that precision)``: seconds,
  ratio and the largest absolute difference; then ours with its own noise, estimated per fold
  and timepoint (``shrinkage="auto"``), against the same rsatoolbox time;
- decoding: `lda_rdms` on every pair against the plain scikit-learn loop
  (``LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")`` fitted per pair, fold and
  timepoint) on ``--sk-conditions`` conditions and ``--sk-times`` timepoints, compared per
  (pair x timepoint); the loop refitted with our shared fold covariance
  (``covariance_estimator``) must give our accuracies exactly; the plain one differs (it pools
  the covariance over the pair only and shrinks each class apart), by ``lda_vs_sklearn_auto_*``.

Cost per 1,000 conditions: ours is timed at ``--conditions`` and at half of it, and fitted as
a*C + b*C^2 (per-condition work and the pairwise products); rsatoolbox likewise; the sklearn
loop is its seconds per (pair x timepoint) times 499,500 pairs x the timepoints. Assumes the
same trials, folds, channels and timepoints, time linear in timepoints.

Every time is the best of ``--repeats`` runs (all methods in turn). Prints one JSON line.
Usage: python benchmarks/epochs_rdms.py [--threads 2] [--conditions 200] [--trials 10]
[--channels 272] [--times 141] [--sk-conditions 4] [--sk-times 6] [--repeats 2]
[--skip rsatoolbox mne_rsa sklearn]
"""

from __future__ import annotations

import os
import sys


def _threads_from_argv(argv: list[str]) -> str | None:
    for k, arg in enumerate(argv):
        if arg == "--threads" and k + 1 < len(argv):
            return argv[k + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return None


# BLAS reads its thread count when numpy is first imported, so this precedes the imports below
_THREADS = _threads_from_argv(sys.argv[1:])
if _THREADS is not None:
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_name] = _THREADS

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from clip_hba.meg import (  # noqa: E402
    EpochsConfig,
    condition_rdms,
    crossnobis_rdms,
    crossval_folds,
    fold_covariances,
    lda_rdms,
)

PEERS = ("rsatoolbox", "mne_rsa", "sklearn")


def timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = function(*args, **kwargs)
    return time.perf_counter() - started, value


def sig(value: float) -> float:
    """Three significant digits."""
    return float(f"{value:.3g}")


def synthetic(args: argparse.Namespace, n_conditions: int) -> tuple:
    """Epochs (n, ch, T) float32, condition ids, sessions (one trial per condition each)."""
    rng = np.random.default_rng(args.seed)
    mixing = rng.normal(size=(args.channels, args.channels)) / np.sqrt(args.channels)
    mixing += np.eye(args.channels)
    patterns = rng.normal(size=(n_conditions, args.channels, args.times)).astype(np.float32)
    index = np.repeat(np.arange(n_conditions), args.trials)
    noise = rng.standard_normal((len(index), args.times, args.channels), dtype=np.float32)
    data = 0.3 * patterns[index] + np.moveaxis(noise @ mixing.astype(np.float32), 2, 1)
    order = [f"c{k:05d}" for k in range(n_conditions)]
    return (
        data.astype(np.float32),
        np.array(order)[index],
        np.tile(np.arange(args.trials), n_conditions),
        order,
    )


def pooled_precision(data: np.ndarray, conditions: np.ndarray) -> np.ndarray:
    """One noise precision: the shrunk residual covariance of all epochs, pooled over time."""
    from sklearn.covariance import ledoit_wolf

    residuals = data.astype(np.float64)
    for label in np.unique(conditions):
        rows = conditions == label
        residuals[rows] -= residuals[rows].mean(0)
    flat = np.moveaxis(residuals, 2, 1).reshape(-1, data.shape[1])
    return np.linalg.inv(ledoit_wolf(flat[:: max(1, len(flat) // 20000)])[0])


def scaling(small: float, large: float, c_small: int, c_large: int, target: int) -> float:
    """Seconds at ``target`` conditions from t = a C + b C^2 through both measurements."""
    system = np.array([[c_small, c_small**2], [c_large, c_large**2]], dtype=np.float64)
    a, b = np.linalg.solve(system, [small, large])
    if b < 0:  # timing noise: the linear term alone, through the larger measurement
        return large * target / c_large
    if a < 0:  # the quadratic term alone
        return large * (target / c_large) ** 2
    return float(a * target + b * target**2)


def rsatoolbox_dataset(data: np.ndarray, conditions: np.ndarray, sessions: np.ndarray) -> Any:
    from rsatoolbox.data import TemporalDataset

    return TemporalDataset(
        data.astype(np.float64),
        obs_descriptors={"conds": conditions, "session": sessions},
        time_descriptors={"time": np.arange(data.shape[2])},
    )


def sklearn_loop(
    data: np.ndarray, conditions: np.ndarray, order: list[str], folds: np.ndarray, covariances=None
) -> np.ndarray:
    """Accuracy (%) per (timepoint, pair) of sklearn's LDA refitted per pair, fold and time."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    class Fixed:
        def __init__(self, covariance=None):
            self.covariance = covariance

        def get_params(self, deep=True):
            return {"covariance": self.covariance}

        def fit(self, X, y=None):
            self.covariance_ = self.covariance
            return self

    i, j = np.triu_indices(len(order), k=1)
    out = np.zeros((data.shape[2], len(i)))
    for k, (a, b) in enumerate(zip(i, j, strict=True)):
        rows = np.flatnonzero(np.isin(conditions, [order[a], order[b]]))
        y = (conditions[rows] == order[b]).astype(int)
        for t in range(data.shape[2]):
            right = 0
            for f in np.unique(folds):
                train, test = folds[rows] != f, folds[rows] == f
                if covariances is None:
                    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
                else:
                    estimator = Fixed(covariances[f, t])
                    lda = LinearDiscriminantAnalysis(solver="lsqr", covariance_estimator=estimator)
                lda.fit(data[rows[train], :, t], y[train])
                right += (lda.predict(data[rows[test], :, t]) == y[test]).sum()
            out[t, k] = 100.0 * right / len(rows)
    return out


def measure(
    args: argparse.Namespace, n_conditions: int, peers: list[str], result: dict, full: bool
) -> list[tuple[str, float]]:
    """Seconds of each method (and rsatoolbox's crossnobis) at one number of conditions.

    With ``full``, also the differences from rsatoolbox and the correlation peers' seconds.
    """
    data, conditions, sessions, order = synthetic(args, n_conditions)
    times_ms = np.arange(args.times) * 5.0
    folds = crossval_folds(conditions, sessions)
    precision = pooled_precision(data, conditions)
    out = []
    elapsed, _ = timed(condition_rdms, data, conditions, times_ms, EpochsConfig(), order=order)
    out.append(("correlation", elapsed))
    elapsed, fixed = timed(crossnobis_rdms, data, conditions, order, folds, precision=precision)
    out.append(("crossnobis_fixed_noise", elapsed))
    out.append(("crossnobis", timed(crossnobis_rdms, data, conditions, order, folds)[0]))
    out.append(("lda", timed(lda_rdms, data, conditions, order, folds)[0]))
    if "rsatoolbox" in peers:
        from rsatoolbox.rdm import calc_rdm_movie

        dataset = rsatoolbox_dataset(data, conditions, sessions)
        elapsed, movie = timed(
            calc_rdm_movie,
            dataset,
            method="crossnobis",
            descriptor="conds",
            cv_descriptor="session",
            noise=precision,
        )
        out.append(("rsatoolbox_crossnobis", elapsed))
        if full:
            result["crossnobis_max_abs_diff"] = float(np.abs(movie.get_vectors() - fixed).max())
            result["crossnobis_max_abs_value"] = round(float(np.abs(fixed).max()), 4)
            elapsed, _ = timed(calc_rdm_movie, dataset, method="correlation", descriptor="conds")
            out.append(("rsatoolbox_correlation", elapsed))
    if "mne_rsa" in peers and full:
        import mne_rsa

        with contextlib.redirect_stdout(io.StringIO()):  # it prints what it does
            patches = mne_rsa.searchlight(data.shape, temporal_radius=0)
            generator = mne_rsa.rdm_array(data, patches, labels=conditions.tolist())
            out.append(("mne_rsa_correlation", timed(list, generator)[0]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--conditions", type=int, default=200)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--channels", type=int, default=272)
    parser.add_argument("--times", type=int, default=141)
    parser.add_argument("--sk-conditions", type=int, default=4)
    parser.add_argument("--sk-times", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--skip", nargs="*", default=[], choices=PEERS)
    args = parser.parse_args()
    peers = [p for p in PEERS if p not in args.skip and importlib.util.find_spec(p) is not None]
    big, half = args.conditions, max(3, args.conditions // 2)
    result: dict[str, Any] = {
        "sizes": [big, args.trials, args.channels, args.times],
        "folds": args.trials,
        "threads": args.threads,
        "repeats": args.repeats,
        "skipped": [p for p in PEERS if p not in peers],
    }
    seconds: dict[str, dict[int, float]] = {}

    for _ in range(args.repeats):  # the best of each: the machines are shared
        for n_conditions in (half, big):
            for name, elapsed in measure(args, n_conditions, peers, result, n_conditions == big):
                by_size = seconds.setdefault(name, {})
                by_size[n_conditions] = min(elapsed, by_size.get(n_conditions, np.inf))

    for name, by_size in seconds.items():
        result[f"{name}_s"] = sig(by_size[big])
        if half in by_size:
            result[f"{name}_per_1000_conditions_s"] = sig(
                scaling(by_size[half], by_size[big], half, big, 1000)
            )
    if "rsatoolbox_crossnobis" in seconds:
        reference = seconds["rsatoolbox_crossnobis"][big]
        result["rsatoolbox_over_crossnobis_fixed_noise"] = sig(
            reference / seconds["crossnobis_fixed_noise"][big]
        )
        result["rsatoolbox_over_crossnobis"] = sig(reference / seconds["crossnobis"][big])
    for peer in ("rsatoolbox", "mne_rsa"):
        if f"{peer}_correlation" in seconds:
            ratio = seconds[f"{peer}_correlation"][big] / seconds["correlation"][big]
            result[f"{peer}_over_correlation"] = sig(ratio)

    if "sklearn" in peers:
        data, conditions, sessions, order = synthetic(args, args.sk_conditions)
        data = np.ascontiguousarray(data[:, :, : args.sk_times])
        folds = crossval_folds(conditions, sessions)
        n_pairs = args.sk_conditions * (args.sk_conditions - 1) // 2
        ours = lda_rdms(data, conditions, order, folds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs = [
                timed(sklearn_loop, data, conditions, order, folds) for _ in range(args.repeats)
            ]
            elapsed, plain = min(runs, key=lambda run: run[0])
            covariances = fold_covariances(data, conditions, order, folds, "auto")
            shared = sklearn_loop(data, conditions, order, folds, covariances)
        per_pair_time = elapsed / (n_pairs * args.sk_times)
        ours_per_pair_time = seconds["lda"][big] / (big * (big - 1) // 2 * args.times)
        result["sklearn_loop_s_per_pair_timepoint"] = sig(per_pair_time)
        result["lda_s_per_pair_timepoint"] = sig(ours_per_pair_time)
        result["sklearn_loop_over_lda"] = sig(per_pair_time / ours_per_pair_time)
        result["sklearn_loop_per_1000_conditions_s"] = sig(per_pair_time * 499500 * args.times)
        result["lda_equals_sklearn_shared_covariance"] = bool(
            np.allclose(ours, shared, rtol=1e-12, atol=0)
        )
        result["lda_vs_sklearn_auto_mean_abs_diff_pct"] = round(
            float(np.abs(ours - plain).mean()), 2
        )
        result["sklearn_conditions_times"] = [args.sk_conditions, args.sk_times]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
