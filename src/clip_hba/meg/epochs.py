"""MEG epochs -> time-resolved RDMs between conditions, and their import into a store.

Three dissimilarities, per timepoint, between the conditions (concepts) of one participant:

- ``correlation`` (fast default): 1 - Pearson r between the condition-averaged sensor patterns,
  each sensor z-scored across conditions first (so magnetometers and gradiometers weigh alike).
  Only the per-condition sums are kept, so epochs stream one condition (or run) at a time.
- ``crossnobis``: cross-validated Mahalanobis distance with a shrunk noise covariance from the
  training folds' residuals (`clip_hba.meg.crossval.crossnobis_rdms`; rsatoolbox's crossnobis).
- ``decoding``: cross-validated pairwise accuracy (%) of two-class shrinkage LDA in closed
  form, one pooled covariance per fold shared by all pairs (`clip_hba.meg.crossval.lda_rdms`).

The two cross-validated ones fold by session/run when a fold label is given (leave one group
out), else deal each condition's trials into ``n_splits`` folds (seeded), and hold the epochs in
memory; they cost folds x timepoints x (conditions^2 x channels) multiply-adds.

Sources: MNE ``-epo.fif`` files (one per participant; concept ids from a metadata column or the
event names) or a BIDS dataset read with mne-bids (raw runs epoched around the events whose
``events.tsv`` column names the concept).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from clip_hba._validation import InputError, check_range
from clip_hba.data.things import load_concepts
from clip_hba.meg.config import BidsEpoching, EpochsConfig
from clip_hba.meg.crossval import crossnobis_rdms, lda_rdms
from clip_hba.meg.store import TimeRDMs
from clip_hba.meg.writer import StoreWriter
from clip_hba.rsa.rdms import rdm, subset_pairs

__all__ = [
    "BidsEpoching",
    "ConditionMeans",
    "EpochsConfig",
    "bin_means",
    "bin_times",
    "check_finite_epochs",
    "concept_order",
    "condition_rdms",
    "correlation_rdms",
    "crossval_folds",
    "decoding_rdms",
    "epochs_rdms",
    "import_epochs",
    "time_bins",
]

RDM_BYTES = 256 << 20  # square RDMs held at once while condensing


# ---------------------------------------------------------------------------- arrays -> RDMs


class ConditionMeans:
    """Running per-condition sums of epochs (n_channels, n_times), for the correlation RDM."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def add(self, data: np.ndarray, conditions: Sequence[str]) -> None:
        """Add epochs (n_epochs, n_channels, n_times) with their condition labels."""
        conditions = np.asarray(conditions, dtype=str)
        check_finite_epochs(data, conditions)
        for label in dict.fromkeys(conditions.tolist()):
            rows = conditions == label
            total = data[rows].sum(0, dtype=np.float64)
            if label in self.sums:
                self.sums[label] += total
            else:
                self.sums[label] = total
            self.counts[label] = self.counts.get(label, 0) + int(rows.sum())

    def means(self, order: Sequence[str]) -> np.ndarray:
        """Condition means in ``order``, shape (n_conditions, n_channels, n_times)."""
        return np.stack([self.sums[c] / self.counts[c] for c in order])


def check_finite_epochs(data: np.ndarray, conditions: np.ndarray) -> None:
    """Refuse epochs (n_epochs, n_channels, n_times) holding NaN or infinite samples.

    One such sample would turn every pair of its timepoint into NaN without saying why.
    """
    bad = ~np.isfinite(data)
    if bad.any():
        epoch, channel, sample = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(
            f"The epochs hold {int(bad.sum())} NaN or infinite sample(s), the first in epoch "
            f"{epoch} (condition {str(conditions[epoch])!r}), channel {channel}, sample "
            f"{sample}; drop those epochs or mark the channel bad."
        )


def correlation_rdms(means: np.ndarray) -> np.ndarray:
    """1 - Pearson between condition patterns at every time; means (C, ch, T) -> (T, pairs)."""
    n_conditions, _, n_times = means.shape
    patterns = np.moveaxis(means, 2, 0)  # (T, C, ch)
    with np.errstate(invalid="ignore", divide="ignore"):
        patterns = (patterns - patterns.mean(1, keepdims=True)) / patterns.std(1, keepdims=True)
    patterns = np.nan_to_num(patterns)  # a flat sensor carries no pattern
    step = max(1, RDM_BYTES // (8 * n_conditions**2))
    out = np.empty((n_times, n_conditions * (n_conditions - 1) // 2), dtype=np.float32)
    for t in range(0, n_times, step):
        out[t : t + step] = rdm(patterns[t : t + step], "pearson")
    return out


def crossval_folds(
    conditions: Sequence[str],
    groups: Sequence[Any] | None = None,
    n_splits: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """The fold of each epoch: its session/run, else its condition's trials dealt into k folds.

    Parameters
    ----------
    conditions : sequence of str, length n_epochs
    groups : sequence, length n_epochs, optional
        Session/run of each epoch; each distinct value is one fold (leave one group out).
    n_splits : int
        Without groups: each condition's trials, shuffled (seeded), are dealt round the folds
        from a random start, so a condition with fewer trials than folds misses some folds.
    seed : int

    Returns
    -------
    ndarray of int, shape (n_epochs,)
        Fold numbers 0..F-1 (groups in sorted order; empty folds dropped).
    """
    conditions = np.asarray(conditions, dtype=str)
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != len(conditions):
            raise InputError(f"{len(groups)} fold labels for {len(conditions)} epochs.")
        labels, folds = np.unique(groups.astype(str), return_inverse=True)
        if len(labels) < 2:
            raise InputError(
                f"Cross-validation needs at least 2 sessions/runs, got one ({labels[0]!r})."
            )
        return folds.astype(np.int64)
    if n_splits < 2:
        raise InputError(f"Invalid value for 'n_splits': expected >= 2, got {n_splits}.")
    rng = np.random.default_rng(seed)
    folds = np.empty(len(conditions), dtype=np.int64)
    for label in np.unique(conditions):
        rows = np.flatnonzero(conditions == label)
        start = int(rng.integers(n_splits))
        folds[rows[rng.permutation(len(rows))]] = (start + np.arange(len(rows))) % n_splits
    return np.unique(folds, return_inverse=True)[1].astype(np.int64)


def decoding_rdms(
    data: np.ndarray,
    conditions: np.ndarray,
    order: Sequence[str],
    groups: np.ndarray | None,
    config: EpochsConfig,
    verbose: bool = False,
) -> np.ndarray:
    """Cross-validated pairwise LDA accuracy (%) at every time; (T, pairs), NaN if undecodable.

    Folds by ``groups`` (session/run) or dealt per condition (`crossval_folds`); the classifier
    is `clip_hba.meg.crossval.lda_rdms` with ``config.shrinkage``.
    """
    folds = crossval_folds(conditions, groups, config.n_splits, config.seed)
    return lda_rdms(data, conditions, order, folds, config.shrinkage, verbose, np.float32)


def bin_times(data: np.ndarray, times_ms: np.ndarray, bin_ms: float | None) -> tuple:
    """Average consecutive samples into bins of ``bin_ms`` (`time_bins`); (..., T) -> (..., B)."""
    if bin_ms is None:
        return data, times_ms
    bins = time_bins(times_ms, bin_ms)
    k = len(bins[0])
    trimmed = data[..., : len(bins) * k]
    binned = trimmed.reshape(*data.shape[:-1], len(bins), k).mean(-1)
    return binned, bin_means(times_ms, bins)


def time_bins(times_ms: np.ndarray, bin_ms: float | None) -> list[np.ndarray]:
    """Consecutive groups of timepoints spanning ``bin_ms`` each (None: one per timepoint).

    Bins start at the first timepoint; a last, incomplete group is dropped. ``bin_ms`` must be
    a whole multiple of the sampling step (e.g. 5 ms bins of 1 ms samples, as Cichy's
    118-image set is used by the reference implementation).
    """
    times_ms = np.asarray(times_ms, dtype=np.float64)
    if bin_ms is None:
        return [np.array([t]) for t in range(len(times_ms))]
    check_range("bin_ms", bin_ms, 0, low_open=True)
    step = float(np.median(np.diff(times_ms))) if len(times_ms) > 1 else float(bin_ms)
    if len(times_ms) > 1 and not np.allclose(np.diff(times_ms), step, rtol=1e-6, atol=1e-9):
        raise InputError("Binning needs evenly spaced timepoints; this time axis is uneven.")
    k = round(bin_ms / step)
    if k < 1 or abs(k * step - bin_ms) > 1e-6 * max(1.0, bin_ms):
        raise InputError(
            f"Invalid value for 'bin_ms': expected a whole multiple of the sampling step "
            f"({step:g} ms), got {bin_ms:g}."
        )
    n_bins = len(times_ms) // k
    if n_bins == 0:
        raise InputError(
            f"Bins of {bin_ms:g} ms are longer than the data ({len(times_ms)} timepoints)."
        )
    return [np.arange(b * k, (b + 1) * k) for b in range(n_bins)]


def bin_means(times_ms: np.ndarray, bins: list[np.ndarray]) -> np.ndarray:
    """The time of each bin: the mean of its timepoints (ms)."""
    times_ms = np.asarray(times_ms, dtype=np.float64)
    return np.array([times_ms[rows].mean() for rows in bins])


def condition_rdms(
    data: np.ndarray,
    conditions: Sequence[str],
    times_ms: Any,
    config: EpochsConfig | None = None,
    groups: Sequence[Any] | None = None,
    order: Sequence[str] | None = None,
    verbose: bool = False,
) -> TimeRDMs:
    """Time-resolved RDMs between the conditions of epochs held in memory.

    Parameters
    ----------
    data : ndarray, shape (n_epochs, n_channels, n_times)
    conditions : sequence of str, length n_epochs
        The concept id of each epoch.
    times_ms : array-like, shape (n_times,)
    config : EpochsConfig, optional
    groups : sequence, length n_epochs, optional
        Session/run of each epoch: decoding and crossnobis folds leave one group out.
    order : sequence of str, optional
        Order of the conditions in the RDMs (default `concept_order`).

    Returns
    -------
    TimeRDMs, values (T, n_pairs)
    """
    config = config or EpochsConfig()
    data = np.asarray(data)
    conditions = np.asarray(conditions, dtype=str)
    times_ms = np.asarray(times_ms, dtype=np.float64)
    if data.ndim != 3 or data.shape[0] != len(conditions) or data.shape[2] != len(times_ms):
        raise InputError(
            f"Epochs of shape {data.shape} do not match {len(conditions)} condition labels and "
            f"{len(times_ms)} times."
        )
    order = list(order or concept_order(conditions.tolist()))
    present = [c for c in order if c in set(conditions.tolist())]
    if len(present) < 3:
        raise InputError(f"RDMs need at least 3 conditions, got {len(present)}.")
    data, times_ms = bin_times(data, times_ms, config.bin_ms)
    if config.method == "correlation":
        means = ConditionMeans()
        means.add(data, conditions)
        values = correlation_rdms(means.means(present))
    else:
        check_finite_epochs(data, conditions)
        group_array = None if groups is None else np.asarray(groups)
        if group_array is not None and len(group_array) != len(conditions):
            raise InputError(f"{len(group_array)} fold labels for {len(conditions)} epochs.")
        if config.method == "decoding":
            values = decoding_rdms(data, conditions, present, group_array, config, verbose)
        else:
            folds = crossval_folds(conditions, group_array, config.n_splits, config.seed)
            values = crossnobis_rdms(
                data, conditions, present, folds, config.shrinkage, None, verbose, np.float32
            )
    return _expand(values, present, order, times_ms)


def concept_order(labels: Sequence[str], data_dir: str | os.PathLike | None = None) -> list[str]:
    """THINGS concepts in official order, other labels sorted after them."""
    unique = set(labels)
    official = [c for c in load_concepts(data_dir).ids if c in unique]
    return official + sorted(unique - set(official))


# ---------------------------------------------------------------------------- MNE epochs


def _epochs_conditions(epochs: Any, concept_column: str | None, where: str) -> np.ndarray:
    if concept_column is not None:
        if epochs.metadata is None or concept_column not in epochs.metadata:
            raise InputError(f"{where} has no metadata column {concept_column!r}.")
        return epochs.metadata[concept_column].astype(str).to_numpy()
    names = {code: name for name, code in epochs.event_id.items()}
    return np.array([names[code] for code in epochs.events[:, 2]], dtype=str)


def _epochs_groups(epochs: Any, fold_column: str | None, where: str) -> np.ndarray | None:
    if fold_column is None:
        return None
    if epochs.metadata is None or fold_column not in epochs.metadata:
        raise InputError(f"{where} has no metadata column {fold_column!r} for the folds.")
    return epochs.metadata[fold_column].astype(str).to_numpy()


def epochs_rdms(
    epochs: Any,
    config: EpochsConfig | None = None,
    concept_column: str | None = None,
    fold_column: str | None = None,
    order: Sequence[str] | None = None,
    verbose: bool = False,
) -> TimeRDMs:
    """Time-resolved RDMs of one participant's `mne.Epochs` (data channels, bads excluded).

    Concept ids come from ``epochs.metadata[concept_column]``, else from the event names. With
    the correlation method the epochs are read one condition at a time, so epochs that are not
    preloaded never sit in memory all at once.
    """
    config = config or EpochsConfig()
    where = "The epochs"
    conditions = _epochs_conditions(epochs, concept_column, where)
    order = list(order or concept_order(conditions.tolist()))
    times_ms = epochs.times * 1000.0
    if config.method != "correlation":
        data = epochs.get_data(picks="data")
        groups = _epochs_groups(epochs, fold_column, where)
        return condition_rdms(data, conditions, times_ms, config, groups, order, verbose)
    present = [c for c in order if c in set(conditions.tolist())]
    means = ConditionMeans()
    for label in tqdm(present, desc="Condition means", disable=not verbose, leave=False):
        rows = np.flatnonzero(conditions == label)
        means.add(epochs[rows].get_data(picks="data"), [label] * len(rows))
    binned, binned_times = bin_times(means.means(present), times_ms, config.bin_ms)
    return _expand(correlation_rdms(binned), present, order, binned_times)


def _expand(
    values: np.ndarray, present: Sequence[str], order: Sequence[str], times_ms: np.ndarray
) -> TimeRDMs:
    """RDMs over ``present`` placed into RDMs over ``order`` (other pairs NaN)."""
    if list(present) == list(order):
        return TimeRDMs(values, tuple(order), times_ms)
    n = len(order)
    position = {c: k for k, c in enumerate(order)}
    rows = np.array([position[c] for c in present])
    full = np.full((values.shape[0], n * (n - 1) // 2), np.nan, dtype=np.float32)
    full[:, subset_pairs(rows, n)] = values
    return TimeRDMs(full, tuple(order), times_ms)


def import_epochs(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    participant_ids: Sequence[str] | None = None,
    config: EpochsConfig | None = None,
    concept_column: str | None = None,
    fold_column: str | None = None,
    dtype: str = "float32",
    data_dir: str | os.PathLike | None = None,
    verbose: bool = True,
) -> Path:
    """Import MNE ``-epo.fif`` files, one per participant, into a store.

    The store's concepts are all conditions of all participants (THINGS concepts in official
    order); a participant without a condition has NaN for its pairs. Every participant must
    share one time axis.
    """
    import mne

    config = config or EpochsConfig()
    sources = [Path(s) for s in sources]
    if not sources:
        raise InputError("Give at least one -epo.fif file.")
    participants = list(participant_ids or [_participant_from_path(s) for s in sources])
    if len(participants) != len(sources):
        raise InputError(f"{len(sources)} epochs files but {len(participants)} participant ids.")
    headers = []
    for source in sources:
        try:
            epochs = mne.read_epochs(source, preload=False, verbose="error")
        except (OSError, ValueError) as err:
            raise InputError(f"Cannot read MNE epochs from {source}: {err}") from None
        headers.append((epochs, _epochs_conditions(epochs, concept_column, str(source))))
    order = concept_order([c for _, conditions in headers for c in conditions.tolist()], data_dir)
    writer = None
    try:
        for p, (epochs, _) in enumerate(
            tqdm(headers, desc="Participants", disable=not verbose or len(headers) == 1)
        ):
            rdms = epochs_rdms(epochs, config, concept_column, fold_column, order, verbose)
            if writer is None:
                writer = StoreWriter(
                    out,
                    order,
                    participants,
                    rdms.times_ms,
                    dtype,
                    {"kind": _kind(config), "source": f"mne:{sources[0].name}"},
                )
            _write_participant(writer, p, rdms, sources[p])
        return writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def _kind(config: EpochsConfig) -> str:
    return {
        "correlation": "correlation_distance",
        "decoding": "decoding_accuracy",
        "crossnobis": "crossnobis_distance",
    }[config.method]


def _write_participant(writer: StoreWriter, p: int, rdms: TimeRDMs, source: Any) -> None:
    if len(rdms.times_ms) != len(writer.times_ms) or not np.allclose(
        rdms.times_ms, writer.times_ms
    ):
        raise InputError(
            f"{source} has another time axis ({len(rdms.times_ms)} times from "
            f"{rdms.times_ms[0]:g} ms) than the first participant ({len(writer.times_ms)} from "
            f"{writer.times_ms[0]:g} ms)."
        )
    writer.write_block(p, 0, rdms.values)


def _participant_from_path(path: Path) -> str:
    match = re.search(r"sub-([A-Za-z0-9]+)", path.name)
    return match.group(1) if match else path.name.split("-epo")[0].split(".")[0]
