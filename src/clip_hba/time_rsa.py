"""Time-resolved RSA: how well model RDMs match MEG RDMs at every timepoint.

Model RDMs come as `ModelRDMs`: static (one RDM), time-resolved (one per MEG timepoint) or
layer-wise (one per network block: the layer x time matrix). `time_resolved_rsa` streams the
store once, in batches of timepoints, and computes for every model RDM the correlation with each
participant's MEG RDM and with the participants' mean at every timepoint -- vectorised over
timepoints and pairs -- plus the noise ceiling and, for every curve, a cluster-based permutation
test over time in which the model's concepts are relabelled (the same relabelling at every
timepoint, so the temporal structure of the null is kept).
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import integrate, stats
from tqdm.auto import tqdm

from clip_hba._io import write_atomic, write_json_atomic
from clip_hba._validation import InputError, check_option, check_unique_ids
from clip_hba.embeddings import read_embedding
from clip_hba.meg import RDMStore
from clip_hba.rsa import METHODS, METRICS, Metric, _kendall_tau_a, pair_index, rdm
from clip_hba.stats import Cluster, cluster_permutation_test

__all__ = [
    "ModelRDMs",
    "TimeRSAConfig",
    "TimeRSAResult",
    "correlate",
    "correlate_rowwise",
    "load_model_rdms",
    "save_time_rsa",
    "summarize_curve",
    "time_resolved_rsa",
]

Kind = Literal["static", "time", "layers"]
EMBEDDING_SUFFIXES = (".npz", ".npy", ".csv", ".tsv", ".txt")
NULL_BYTES = 256 << 20  # permuted model RDMs held at once
RSA_READ_BYTES = 256 << 20  # MEG read per block of timepoints
FAST_PATH = True  # standardise complete models once (tests switch it off to compare)


# ---------------------------------------------------------------------------- model RDMs


@dataclass(frozen=True, eq=False)
class ModelRDMs:
    """One model's RDMs over concepts, condensed.

    Attributes
    ----------
    name : str
    values : ndarray, shape (M, n_pairs)
        One row (static), one per timepoint (time) or one per layer (layers).
    concept_ids : tuple of str
    kind : {"static", "time", "layers"}
    labels : tuple of str, length M
        Row names (the model name; ``"t=100ms"``...; layer names).
    times_ms : ndarray, shape (M,), or None
        The time of each row of a time-resolved model.
    """

    name: str
    values: np.ndarray
    concept_ids: tuple[str, ...]
    kind: Kind = "static"
    labels: tuple[str, ...] = ()
    times_ms: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_option("kind", self.kind, ("static", "time", "layers"))
        values = np.atleast_2d(np.asarray(self.values, dtype=np.float64))
        n = len(self.concept_ids)
        if values.ndim != 2 or values.shape[1] != n * (n - 1) // 2:
            raise InputError(
                f"Model {self.name!r}: RDMs of shape {values.shape} do not match "
                f"{n} concepts ({n * (n - 1) // 2} pairs)."
            )
        check_unique_ids(f"Model {self.name!r}", self.concept_ids)
        labels = self.labels or (
            (self.name,) if len(values) == 1 else tuple(map(str, range(len(values))))
        )
        if len(labels) != len(values):
            raise InputError(f"Model {self.name!r}: {len(labels)} labels for {len(values)} RDMs.")
        if self.kind == "time" and (self.times_ms is None or len(self.times_ms) != len(values)):
            raise InputError(f"Model {self.name!r} is time-resolved but has no time per RDM.")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "concept_ids", tuple(self.concept_ids))
        object.__setattr__(self, "labels", tuple(labels))

    @classmethod
    def from_features(
        cls,
        name: str,
        features: Any,
        concept_ids: Sequence[str],
        kind: Kind = "static",
        labels: Sequence[str] = (),
        times_ms: Any = None,
        metric: Metric = "pearson",
    ) -> ModelRDMs:
        """RDMs (1 - Pearson by default) of features (N, D) or (M, N, D)."""
        check_option("metric", metric, METRICS)
        features = np.asarray(features, dtype=np.float64)
        if features.ndim == 2:
            features = features[None]
        values = rdm(features, metric)
        times = None if times_ms is None else np.asarray(times_ms, dtype=np.float64)
        return cls(name, values, tuple(concept_ids), kind, tuple(labels), times)

    def curve_names(self) -> list[str]:
        """Names of the curves this model gives: one, or one per layer."""
        if self.kind == "layers":
            return [f"{self.name}/{label}" for label in self.labels]
        return [self.name]

    def select(self, concept_ids: Sequence[str]) -> ModelRDMs:
        """The RDMs restricted to (and ordered as) ``concept_ids``."""
        row = {c: k for k, c in enumerate(self.concept_ids)}
        rows = np.array([row[c] for c in concept_ids], dtype=np.int64)
        i, j = np.triu_indices(len(rows), k=1)
        values = self.values[:, pair_index(rows[i], rows[j], len(self.concept_ids))]
        return ModelRDMs(
            self.name, values, tuple(concept_ids), self.kind, self.labels, self.times_ms
        )


def load_model_rdms(
    path: str | os.PathLike,
    metric: Metric = "pearson",
    ids: str | os.PathLike | None = None,
    default_ids: Sequence[str] | None = None,
) -> list[ModelRDMs]:
    """Model RDMs from an embedding file, or from every embedding file in a folder.

    A file holds one static embedding (any format `read_embedding` reads), or is an ``.npz``
    whose ``embedding`` array is (M, N, D) with ``times_ms`` (M,) (time-resolved, e.g. written by
    a MEG model) or ``layers`` (M,) (layer-wise, e.g. ``clip-hba embed --layers``), with
    ``concept_ids`` (N,). The model is named after the file.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in EMBEDDING_SUFFIXES)
        if not files:
            raise InputError(f"{path} holds no embedding files ({', '.join(EMBEDDING_SUFFIXES)}).")
        return [m for f in files for m in load_model_rdms(f, metric, ids, default_ids)]
    if not path.is_file():
        raise InputError(f"No embedding file or folder at {path}.")
    stacked = _read_stacked(path) if path.suffix.lower() == ".npz" else None
    if stacked is not None:
        return [ModelRDMs.from_features(path.stem, *stacked, metric=metric)]
    embedding = read_embedding(path, ids=ids, default_ids=default_ids)
    return [ModelRDMs(path.stem, rdm(embedding.values, metric), embedding.concept_ids)]


def _read_stacked(path: Path) -> tuple | None:
    """(features (M, N, D), concept_ids, kind, labels, times) of a 3-D ``.npz``, else None."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "embedding" not in archive or archive["embedding"].ndim != 3:
                return None
            features = np.asarray(archive["embedding"], dtype=np.float64)
            ids = tuple(str(c) for c in archive["concept_ids"])
            if "times_ms" in archive:
                times = np.asarray(archive["times_ms"], dtype=np.float64)
                labels = tuple(f"t={t:g}ms" for t in times)
                return features, ids, "time", labels, times
            if "layers" in archive:
                return features, ids, "layers", tuple(str(x) for x in archive["layers"]), None
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise InputError(f"Cannot read embedding file {path}: {err}") from None
    raise InputError(
        f"{path} holds a 3-D embedding but neither 'times_ms' nor 'layers' to say what its "
        "first axis is."
    )


# ---------------------------------------------------------------------------- correlations


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
    return _standardize(a, method) @ _standardize(b, method).T


def _standardize(values: np.ndarray, method: str) -> np.ndarray:
    """Rows transformed so that the dot product of two rows is the comparison ``method``."""
    n = values.shape[1]
    if method in ("spearman", "rho_a"):
        values = stats.rankdata(values, axis=1)
    if method == "rho_a":
        return (values - (n + 1) / 2) * np.sqrt(12.0 / (n**3 - n))
    if method != "cosine":
        values = values - values.mean(1, keepdims=True)
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
        return (_standardize(meg, method) * _standardize(models, method)).sum(1)
    return np.array([correlate(meg[t], models[t], method)[0, 0] for t in range(len(meg))])


# ---------------------------------------------------------------------------- the analysis


@dataclass
class TimeRSAConfig:
    """Settings of `time_resolved_rsa`."""

    method: str = "spearman"  # any of rsa.METHODS
    window_ms: tuple[float, float] | None = None  # analysed times (inclusive); None: all
    participants: list[str] | None = None  # None: all participants of the store
    exclude_participants: list[str] | None = None
    concept_ids: list[str] | None = None  # restrict to these concepts (e.g. held-out ones)
    n_permutations: int = 1000  # 0: no cluster test
    threshold_p: float = 0.05  # cluster-forming threshold (pointwise permutation p)
    alpha: float = 0.05  # cluster significance level
    baseline: Literal["zero", "prestimulus"] = "zero"  # test r > 0, or r above its mean before 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_option("method", self.method, METHODS)
        check_option("baseline", self.baseline, ("zero", "prestimulus"))
        if self.n_permutations < 0:
            raise InputError(
                f"Invalid value for 'n_permutations': expected >= 0, got {self.n_permutations}."
            )
        for name in ("threshold_p", "alpha"):
            if not 0 < getattr(self, name) < 1:
                raise InputError(f"Invalid value for {name!r}: expected in (0, 1).")


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


def time_resolved_rsa(
    store: RDMStore | str | os.PathLike,
    models: Sequence[ModelRDMs],
    config: TimeRSAConfig | None = None,
    verbose: bool = True,
) -> TimeRSAResult:
    """Correlate model RDMs with a store's MEG RDMs at every timepoint; see the module docstring.

    Parameters
    ----------
    store : RDMStore or path
    models : sequence of ModelRDMs
        Compared over the concepts they share with the store (and ``config.concept_ids``).
    config : TimeRSAConfig, optional
    verbose : bool
        Show a progress bar.

    Returns
    -------
    TimeRSAResult
    """
    config = config or TimeRSAConfig()
    if not models:
        raise InputError("Give at least one model (embedding) to compare with the MEG.")
    names = [n for m in models for n in m.curve_names()]
    if len(set(names)) != len(names):
        raise InputError(f"Model names repeat: {sorted(names)}; rename the files.")
    own = isinstance(store, str | os.PathLike)
    store = RDMStore(store) if own else store
    try:
        return _run(store, list(models), config, verbose)
    finally:
        if own:
            store.close()


def _run(
    store: RDMStore, models: list[ModelRDMs], config: TimeRSAConfig, verbose: bool
) -> TimeRSAResult:
    concept_ids = _shared_concepts(store, models, config.concept_ids)
    models = [m.select(concept_ids) for m in models]
    times = store.times_ms[store.time_indices(config.window_ms)]
    participants = store.participant_indices(config.participants, config.exclude_participants)
    participant_ids = tuple(store.participant_ids[p] for p in participants)
    for model in models:
        if model.kind == "time" and not (
            len(model.times_ms) == len(times) and np.allclose(model.times_ms, times)
        ):
            raise InputError(
                f"Model {model.name!r} has {len(model.times_ms)} timepoints "
                f"({model.times_ms[0]:g}..{model.times_ms[-1]:g} ms) but the MEG window has "
                f"{len(times)} ({times[0]:g}..{times[-1]:g} ms); use --time-window to match."
            )
    if config.baseline == "prestimulus" and not (times < 0).any():
        raise InputError("A pre-stimulus baseline needs timepoints before 0 ms in the window.")
    n_p, n_t = len(participant_ids), len(times)
    most_rows = (
        max(len(m.values) for m in models if m.kind != "time")
        if any(m.kind != "time" for m in models)
        else 1
    )
    permutations = _Permutations(len(concept_ids), config.n_permutations, config.seed, most_rows)
    targets = ["group", *participant_ids]
    curves = {
        name: np.full((len(targets), n_t), np.nan) for m in models for name in m.curve_names()
    }
    nulls = {
        name: np.full((len(targets), config.n_permutations, n_t), np.nan, dtype=np.float32)
        for name in curves
    }
    ceiling = {"lower": np.full((n_p, n_t), np.nan), "upper": np.full((n_p, n_t), np.nan)}
    # larger blocks than a plain read: every block rebuilds the permuted pair indices
    blocks = store.iter_times(
        config.window_ms, concept_ids, list(participant_ids), batch_bytes=RSA_READ_BYTES
    )
    offset = 0
    standardized: dict[str, np.ndarray] = {}
    bar = tqdm(total=n_t, desc="Time-resolved RSA", unit="time", disable=not verbose)
    with bar:
        for time_rows, block in blocks:
            span = slice(offset, offset + len(time_rows))
            _block_noise_ceiling(block, config.method, ceiling, span)
            rows = [_nanmean(block), *block]
            for model in models:
                _block_model(model, rows, span, config, permutations, curves, nulls, standardized)
            offset += len(time_rows)
            bar.update(len(time_rows))
    clusters = _clusters(curves, nulls, times, targets, config)
    result = TimeRSAResult(
        times_ms=times,
        concept_ids=tuple(concept_ids),
        participant_ids=participant_ids,
        group={name: values[0] for name, values in curves.items()},
        participants={name: values[1:] for name, values in curves.items()},
        noise_ceiling={
            bound: (np.nanmean(v, 0) if n_p > 1 else np.full(n_t, np.nan))
            for bound, v in ceiling.items()
        },
        clusters=clusters,
        config=config,
    )
    for model in models:
        if model.kind == "layers":
            result.layer_time[model.name] = np.stack(
                [result.group[name] for name in model.curve_names()]
            )
            result.layer_labels[model.name] = model.labels
    return result


def _shared_concepts(
    store: RDMStore, models: list[ModelRDMs], restrict: Sequence[str] | None
) -> list[str]:
    shared = set(store.concept_ids)
    for model in models:
        overlap = shared & set(model.concept_ids)
        if len(overlap) < 3:
            raise InputError(
                f"Model {model.name!r} shares {len(overlap)} concept(s) with the MEG store "
                f"({len(model.concept_ids)} in the model, {len(store.concept_ids)} in the store); "
                "at least 3 are needed."
            )
        shared = overlap
    if restrict is not None:
        restricted = shared & set(restrict)
        if len(restricted) < 3:
            raise InputError(
                f"Only {len(restricted)} of the {len(set(restrict))} selected concepts are in "
                "both the store and every model; at least 3 are needed."
            )
        shared = restricted
    return [c for c in store.concept_ids if c in shared]


class _Permutations:
    """Seeded relabellings of the concepts, as index arrays into condensed RDMs."""

    def __init__(self, n_concepts: int, n_permutations: int, seed: int, rows: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.orders = [rng.permutation(n_concepts) for _ in range(n_permutations)]
        self.n = n_concepts
        self._u, self._v = np.triu_indices(n_concepts, k=1)
        n_pairs = len(self._u)
        # a chunk of permuted models is (chunk x rows, n_pairs) float64
        self.chunk = max(1, min(n_permutations, NULL_BYTES // max(1, 8 * n_pairs * rows)))
        self._cache = (
            [self._pairs(o) for o in self.orders]
            if n_permutations * n_pairs * 8 <= NULL_BYTES
            else None
        )

    def __len__(self) -> int:
        return len(self.orders)

    def _pairs(self, order: np.ndarray) -> np.ndarray:
        return pair_index(order[self._u], order[self._v], self.n)

    def chunks(self) -> Any:
        """Yield (start, list of pair-index arrays) in chunks that fit the memory budget."""
        for start in range(0, len(self.orders), self.chunk):
            stop = min(start + self.chunk, len(self.orders))
            if self._cache is not None:
                yield start, self._cache[start:stop]
            else:
                yield start, [self._pairs(o) for o in self.orders[start:stop]]


def _block_model(
    model: ModelRDMs,
    rows: list[np.ndarray],
    span: slice,
    config: TimeRSAConfig,
    permutations: _Permutations,
    curves: dict[str, np.ndarray],
    nulls: dict[str, np.ndarray],
    standardized: dict[str, np.ndarray],
) -> None:
    """Fill this block's timepoints of the model's curves (and null curves) for every target.

    Without missing pairs, relabelling the concepts only reorders the model's ranks, so the
    model is standardised (ranked, centred, scaled) once and each permutation is a gather;
    otherwise every permuted model is re-ranked over the pairs the MEG holds.
    """
    names = model.curve_names()
    method = config.method
    fast = FAST_PATH and method != "kendall_tau_a" and not np.isnan(model.values).any()
    if fast and model.name not in standardized:
        standardized[model.name] = _standardize(model.values, method)
    complete = [t for t, meg in enumerate(rows) if fast and not np.isnan(meg).any()]
    if complete:
        _fast_targets(
            model,
            [rows[t] for t in complete],
            complete,
            span,
            config,
            permutations,
            curves,
            nulls,
            standardized[model.name],
        )
    for target, meg in enumerate(rows):  # (Tb, n_pairs)
        if target in complete:
            continue
        if model.kind == "time":
            values = model.values[span]
            curves[names[0]][target, span] = correlate_rowwise(meg, values, method)
            for start, chunk in permutations.chunks():
                for k, pairs in enumerate(chunk):
                    nulls[names[0]][target, start + k, span] = correlate_rowwise(
                        meg, values[:, pairs], method
                    )
            continue
        observed = correlate(meg, model.values, method)  # (Tb, M)
        for m, name in enumerate(names):
            curves[name][target, span] = observed[:, m]
        for start, chunk in permutations.chunks():
            permuted = np.concatenate([model.values[:, pairs] for pairs in chunk])  # (k*M, n)
            null = correlate(meg, permuted, method).reshape(len(meg), len(chunk), len(names))
            for m, name in enumerate(names):
                nulls[name][target, start : start + len(chunk), span] = null[:, :, m].T


def _fast_targets(
    model: ModelRDMs,
    megs: list[np.ndarray],
    targets: list[int],
    span: slice,
    config: TimeRSAConfig,
    permutations: _Permutations,
    curves: dict[str, np.ndarray],
    nulls: dict[str, np.ndarray],
    z_model: np.ndarray,
) -> None:
    """The complete targets together: each permuted model is gathered once for all of them."""
    names = model.curve_names()
    z_meg = np.stack([_standardize(meg.astype(np.float64), config.method) for meg in megs])
    n_targets, n_times, n_pairs = z_meg.shape
    if model.kind == "time":
        z_time = z_model[span]
        curves[names[0]][targets, span] = (z_meg * z_time).sum(-1)
        for start, chunk in permutations.chunks():
            for k, pairs in enumerate(chunk):
                nulls[names[0]][targets, start + k, span] = (z_meg * z_time[:, pairs]).sum(-1)
        return
    flat = z_meg.reshape(n_targets * n_times, n_pairs)
    observed = (flat @ z_model.T).reshape(n_targets, n_times, len(names))
    for m, name in enumerate(names):
        curves[name][targets, span] = observed[:, :, m]
    for start, chunk in permutations.chunks():
        permuted = np.concatenate([z_model[:, pairs] for pairs in chunk])  # (k*M, n)
        null = (flat @ permuted.T).reshape(n_targets, n_times, len(chunk), len(names))
        for m, name in enumerate(names):
            nulls[name][targets, start : start + len(chunk), span] = null[..., m].transpose(0, 2, 1)


def _block_noise_ceiling(
    block: np.ndarray, method: str, ceiling: dict[str, np.ndarray], span: slice
) -> None:
    """Each participant against the mean of the others (lower) and of all (upper)."""
    n_p = block.shape[0]
    if n_p < 2:
        return
    valid = ~np.isnan(block)
    total = np.where(valid, block, 0.0).sum(0, dtype=np.float64)
    count = valid.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        everyone = total / count
        for p in range(n_p):
            others = (total - np.where(valid[p], block[p], 0.0)) / (count - valid[p])
            ceiling["lower"][p, span] = correlate_rowwise(block[p], others, method)
            ceiling["upper"][p, span] = correlate_rowwise(block[p], everyone, method)


def _clusters(
    curves: dict[str, np.ndarray],
    nulls: dict[str, np.ndarray],
    times: np.ndarray,
    targets: list[str],
    config: TimeRSAConfig,
) -> dict[str, dict[str, list[Cluster]]]:
    if config.n_permutations == 0:
        return {}
    found: dict[str, dict[str, list[Cluster]]] = {}
    before = times < 0
    for name, values in curves.items():
        found[name] = {}
        for k, target in enumerate(targets):
            observed, null = values[k], nulls[name][k].astype(np.float64)
            if config.baseline == "prestimulus":
                observed = observed - np.nanmean(observed[before])
                null = null - np.nanmean(null[:, before], axis=1, keepdims=True)
            found[name][target] = cluster_permutation_test(
                observed, null, times, config.threshold_p
            )
    return found


def _nanmean(block: np.ndarray) -> np.ndarray:
    valid = ~np.isnan(block)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, block, 0.0).sum(0, dtype=np.float64) / valid.sum(0)


# ---------------------------------------------------------------------------- outputs


def save_time_rsa(result: TimeRSAResult, out: str | os.PathLike, plots: bool = True) -> dict:
    """Write ``rsa.json``, ``curves.csv``, ``curves.npz``, layer x time ``.npy`` and plots.

    Returns the summary written to ``rsa.json`` (with the paths of the files).
    """
    from clip_hba.plots import plot_layer_time, plot_rsa_curves

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
    files = {"curves_csv": str(write_atomic(out / "curves.csv", lambda p: p.write_text(text)))}

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
    files["curves_npz"] = str(_write_npz(out / "curves.npz", arrays))
    for name, matrix in result.layer_time.items():
        stem = f"layer_time_{_safe(name)}"
        files[stem] = str(_write_npy(out / f"{stem}.npy", matrix))
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


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(handle, **arrays)

    return write_atomic(path, write)


def _write_npy(path: Path, array: np.ndarray) -> Path:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.save(handle, array)

    return write_atomic(path, write)
