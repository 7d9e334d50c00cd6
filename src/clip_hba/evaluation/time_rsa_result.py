"""The result of a time-resolved RSA: curves, noise ceiling, clusters, summaries and files."""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import integrate

from clip_hba._io import write_json_atomic, write_npy_atomic, write_npz_atomic, write_text_atomic
from clip_hba.evaluation.config import TimeRSAConfig
from clip_hba.evaluation.plots import plot_layer_time, plot_rsa_curves
from clip_hba.rsa.stats import Cluster

__all__ = ["TimeRSAResult", "save_time_rsa", "summarize_curve"]


@dataclass
class TimeRSAResult:
    """Curves, noise ceiling, clusters and summaries of a time-resolved RSA.

    Attributes
    ----------
    times_ms : ndarray, shape (T,)
    concept_ids : tuple of str
        The concepts compared (present in the store and every model, and selected).
    participant_ids : tuple of str
    group : dict curve name -> ndarray (T,)
        Correlation with the participants' mean RDM.
    participants : dict curve name -> ndarray (P, T)
    noise_ceiling : dict "lower"/"upper" -> ndarray (T,) (NaN with one participant)
        Bounds for the participants' mean curve (`participant_mean`): each participant against
        the mean of the others (lower) and of everyone (upper), averaged over participants.
    clusters : dict curve name -> dict target ("group" or participant id) -> list of Cluster
    layer_time : dict model name -> ndarray (L, T), group correlation of each layer
    config : TimeRSAConfig
    """

    times_ms: np.ndarray
    concept_ids: tuple[str, ...]
    participant_ids: tuple[str, ...]
    group: dict[str, np.ndarray]
    participants: dict[str, np.ndarray]
    noise_ceiling: dict[str, np.ndarray]
    clusters: dict[str, dict[str, list[Cluster]]]
    layer_time: dict[str, np.ndarray] = field(default_factory=dict)
    layer_labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    config: TimeRSAConfig = field(default_factory=TimeRSAConfig)

    def participant_mean(self, name: str) -> np.ndarray:
        """Mean over participants of their own curves, (T,): the curve the ceiling bounds."""
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN timepoints stay NaN
            return np.nanmean(self.participants[name], axis=0)

    def significant_times(self, names: Sequence[str], target: str = "group") -> np.ndarray | None:
        """(T,) bool: times inside a significant cluster of any of the curves ``names``."""
        if not self.clusters:
            return None
        inside = np.zeros(len(self.times_ms), dtype=bool)
        for name in names:
            for cluster in self.clusters[name].get(target, []):
                if cluster.p_value < self.config.alpha:
                    inside |= (self.times_ms >= cluster.start_ms) & (
                        self.times_ms <= cluster.stop_ms
                    )
        return inside

    def summary(self) -> dict[str, Any]:
        """JSON-able summary numbers of every curve, and of the noise ceiling."""
        alpha = self.config.alpha
        curves = {}
        for name, values in self.group.items():
            found = self.clusters.get(name, {})
            entry = summarize_curve(values, self.times_ms, found.get("group"), alpha)
            average = summarize_curve(self.participant_mean(name), self.times_ms)
            entry["participant_mean"] = {k: average[k] for k in ("peak", "peak_latency_ms", "auc")}
            entry["participants"] = {
                pid: summarize_curve(row, self.times_ms, found.get(pid), alpha)
                for pid, row in zip(self.participant_ids, self.participants[name], strict=True)
            }
            curves[name] = entry
        ceiling = {}
        for bound, values in self.noise_ceiling.items():
            peak = summarize_curve(values, self.times_ms)
            ceiling[f"{bound}_peak"] = peak["peak"]
            ceiling[f"{bound}_peak_latency_ms"] = peak["peak_latency_ms"]
        layers = {
            name: {
                "best_layer_per_time": [
                    self.layer_labels[name][k] if np.isfinite(matrix[:, t]).any() else None
                    for t, k in enumerate(np.nanargmax(np.nan_to_num(matrix, nan=-np.inf), 0))
                ],
                "peak_layer": self.layer_labels[name][
                    int(np.unravel_index(np.nanargmax(matrix), matrix.shape)[0])
                ],
            }
            for name, matrix in self.layer_time.items()
        }
        return {
            "method": self.config.method,
            "n_concepts": len(self.concept_ids),
            "participants": list(self.participant_ids),
            "times_ms": {
                "start": float(self.times_ms[0]),
                "stop": float(self.times_ms[-1]),
                "n": len(self.times_ms),
            },
            "test": {
                "kind": "cluster permutation over time, concepts of the model relabelled",
                "n_permutations": self.config.n_permutations,
                "threshold_p": self.config.threshold_p,
                "alpha": alpha,
                "baseline": self.config.baseline,
                "seed": self.config.seed,
            },
            "curves": curves,
            "noise_ceiling": ceiling,
            "layers": layers,
        }


def summarize_curve(
    values: np.ndarray,
    times_ms: np.ndarray,
    clusters: Sequence[Cluster] | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Peak (value, latency) and area after 0 ms, onset, and the significant clusters.

    ``auc`` is the trapezoidal area under the curve from 0 ms on, in correlation x seconds;
    ``onset_ms`` is the start of the earliest cluster with p < ``alpha`` (None if none).
    """
    after = (times_ms >= 0) & np.isfinite(values)
    if not after.any():
        peak = latency = auc = None
    else:
        k = np.flatnonzero(after)[int(np.argmax(values[after]))]
        peak, latency = float(values[k]), float(times_ms[k])
        auc = (
            float(integrate.trapezoid(values[after], times_ms[after] / 1000.0))
            if after.sum() > 1
            else 0.0
        )
    significant = [c for c in clusters or () if c.p_value < alpha]
    return {
        "peak": peak,
        "peak_latency_ms": latency,
        "onset_ms": significant[0].start_ms if significant else None,
        "auc": auc,
        "clusters": [c.to_dict() for c in clusters or ()],
    }


# ---------------------------------------------------------------------------- outputs


def save_time_rsa(result: TimeRSAResult, out: str | os.PathLike, plots: bool = True) -> dict:
    """Write ``rsa.json``, ``curves.csv``, ``curves.npz``, layer x time ``.npy`` and plots.

    Returns the summary written to ``rsa.json`` (with the paths of the files).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    columns = {"time_ms": result.times_ms}
    columns.update({f"{name}": v for name, v in result.group.items()})
    columns.update({f"noise_ceiling_{b}": v for b, v in result.noise_ceiling.items()})
    for name, matrix in result.participants.items():
        columns.update(
            {f"{name}@{pid}": row for pid, row in zip(result.participant_ids, matrix, strict=True)}
        )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(list(columns))
    for t in range(len(result.times_ms)):
        writer.writerow([_csv_number(v[t]) for v in columns.values()])
    text = buffer.getvalue()
    files = {"curves_csv": str(write_text_atomic(out / "curves.csv", text))}

    arrays = {
        "times_ms": result.times_ms,
        "concept_ids": np.array(result.concept_ids),
        "participant_ids": np.array(result.participant_ids),
        "curve_names": np.array(list(result.group)),
        "group": np.stack(list(result.group.values())),
        "participants": np.stack(list(result.participants.values())),
        "noise_ceiling_lower": result.noise_ceiling["lower"],
        "noise_ceiling_upper": result.noise_ceiling["upper"],
    }
    files["curves_npz"] = str(write_npz_atomic(out / "curves.npz", arrays))
    for name, matrix in result.layer_time.items():
        stem = f"layer_time_{_safe(name)}"
        files[stem] = str(write_npy_atomic(out / f"{stem}.npy", matrix))
        if plots:
            files[f"{stem}_png"] = str(
                plot_layer_time(
                    matrix,
                    result.times_ms,
                    result.layer_labels[name],
                    out / f"{stem}.png",
                    title=f"{name}: layer x time RSA ({result.config.method})",
                    significant=result.significant_times(
                        [f"{name}/{label}" for label in result.layer_labels[name]]
                    ),
                )
            )
    if plots:
        files["curves_png"] = str(plot_rsa_curves(result, out / "rsa_curves.png"))
    summary["files"] = files
    summary["config"] = asdict(result.config)
    write_json_atomic(out / "rsa.json", summary)
    return summary


def _csv_number(value: float) -> str:
    return "" if not np.isfinite(value) else repr(float(value))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
