"""BIDS MEG datasets (mne-bids) -> time-resolved RDMs in a store, one participant per subject.

Raw runs are epoched around the ``events.tsv`` rows whose column names a concept, and folded
into each subject's condition means (correlation) or trials (decoding, folds = runs); see
`clip_hba.meg.epochs` for the two dissimilarities.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from clip_hba._validation import InputError
from clip_hba.meg.config import BidsEpoching, EpochsConfig
from clip_hba.meg.epochs import (
    ConditionMeans,
    _expand,
    _kind,
    _write_participant,
    bin_times,
    concept_order,
    condition_rdms,
    correlation_rdms,
)
from clip_hba.meg.store import TimeRDMs
from clip_hba.meg.writer import StoreWriter

__all__ = ["import_bids"]


def import_bids(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    subjects: Sequence[str] | None = None,
    epoching: BidsEpoching | None = None,
    config: EpochsConfig | None = None,
    dtype: str = "float32",
    data_dir: str | os.PathLike | None = None,
    verbose: bool = True,
) -> Path:
    """Import a BIDS MEG dataset (mne-bids) into a store, one participant per subject.

    Each run is read with `mne_bids.read_raw_bids`, epoched around the rows of its
    ``events.tsv`` whose ``epoching.event_column`` names a concept, and folded into the
    participant's condition means (correlation) or trials (decoding, folds = runs).
    """
    from mne_bids import get_entity_vals

    epoching = epoching or BidsEpoching()
    config = config or EpochsConfig()
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"No BIDS dataset at {root}.")
    subjects = list(subjects or get_entity_vals(root, "subject"))
    if not subjects:
        raise InputError(f"{root} holds no sub-* folders.")
    runs = {s: _bids_runs(root, s, epoching) for s in subjects}
    labels = [c for s in subjects for path in runs[s] for c in _events(path, epoching)[1]]
    order = concept_order(labels, data_dir)
    writer = None
    try:
        for p, subject in enumerate(tqdm(subjects, desc="Subjects", disable=not verbose)):
            rdms = _bids_subject(runs[subject], epoching, config, order)
            if writer is None:
                writer = StoreWriter(
                    out,
                    order,
                    subjects,
                    rdms.times_ms,
                    dtype,
                    {"kind": _kind(config), "source": f"bids:{root.name}"},
                )
            _write_participant(writer, p, rdms, f"sub-{subject}")
        return writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def _bids_runs(root: Path, subject: str, epoching: BidsEpoching) -> list[Any]:
    from mne_bids import find_matching_paths

    paths = find_matching_paths(
        root,
        subjects=subject,
        sessions=epoching.session,
        tasks=epoching.task,
        datatypes="meg",
        suffixes="meg",
        extensions=[".fif", ".ds", ".con", ".sqd", ".pdf", ".bin"],
    )
    if not paths:
        raise InputError(f"sub-{subject} has no MEG runs in {root} (task {epoching.task!r}).")
    return sorted(paths, key=str)


def _events(bids_path: Any, epoching: BidsEpoching) -> tuple[np.ndarray, list[str]]:
    """(onsets in s, concept labels) of the events that name a concept."""
    events_path = Path(bids_path.copy().update(suffix="events", extension=".tsv").fpath)
    if not events_path.is_file():
        raise InputError(f"{bids_path.basename} has no events.tsv ({events_path}).")
    with events_path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if rows and epoching.event_column not in rows[0]:
        raise InputError(
            f"{events_path.name} has no column {epoching.event_column!r}; it has "
            f"{', '.join(rows[0])}."
        )
    pattern = re.compile(epoching.concept_pattern) if epoching.concept_pattern else None
    onsets, labels = [], []
    for row in rows:
        value = (row.get(epoching.event_column) or "").strip()
        if value in ("", "n/a"):
            continue
        if pattern is not None:
            match = pattern.search(value)
            if match is None:
                continue
            value = match.group(1) if match.groups() else match.group(0)
        onsets.append(float(row["onset"]))
        labels.append(value)
    return np.array(onsets), labels


def _bids_runs_epochs(
    runs: list[Any], epoching: BidsEpoching
) -> Iterator[tuple[np.ndarray, list[str], np.ndarray, int, list[str]]]:
    """Per run: (data (n, ch, T), labels, times_ms, run number, channel names)."""
    import mne
    from mne_bids import read_raw_bids

    for number, bids_path in enumerate(runs):
        onsets, labels = _events(bids_path, epoching)
        if not labels:
            continue
        raw = read_raw_bids(bids_path, verbose="error")
        samples = raw.first_samp + np.round(onsets * raw.info["sfreq"]).astype(int)
        events = np.column_stack([samples, np.zeros_like(samples), np.arange(len(samples)) + 1])
        epochs = mne.Epochs(
            raw,
            events,
            tmin=epoching.tmin_s,
            tmax=epoching.tmax_s,
            baseline=epoching.baseline,
            picks="data",
            decim=epoching.decim,
            preload=True,
            event_repeated="drop",
            reject_by_annotation=False,
            verbose="error",
        )
        kept = epochs.events[:, 2] - 1  # rows of the events that became epochs
        picks = mne.pick_types(epochs.info, meg=True, eeg=True, exclude="bads")
        yield (
            epochs.get_data(picks=picks),
            [labels[k] for k in kept],
            epochs.times * 1000.0,
            number,
            [epochs.ch_names[k] for k in picks],
        )


def _bids_subject(
    runs: list[Any], epoching: BidsEpoching, config: EpochsConfig, order: list[str]
) -> TimeRDMs:
    means, trials, conditions, groups, times = ConditionMeans(), [], [], [], None
    channels = None
    for data, labels, run_times, number, names in _bids_runs_epochs(runs, epoching):
        if channels is not None and names != channels:
            raise InputError(
                f"Run {number + 1} of the subject has other data channels than run 1 (bad "
                "channels differ?); mark the same channels bad in every run's channels.tsv."
            )
        channels = names
        if times is not None and len(run_times) != len(times):
            raise InputError("The runs of one subject give epochs of different lengths.")
        times = run_times
        if config.method == "correlation":
            means.add(data, labels)
        else:
            trials.append(data)
            conditions += labels
            groups += [number] * len(labels)
    if times is None:
        raise InputError("No epochs could be cut from the subject's runs.")
    if config.method != "correlation":  # decoding, crossnobis: every epoch
        folds = groups if len(set(groups)) > 1 else None
        return condition_rdms(np.concatenate(trials), conditions, times, config, folds, order)
    present = [c for c in order if c in means.sums]
    binned, binned_times = bin_times(means.means(present), times, config.bin_ms)
    return _expand(correlation_rdms(binned), present, order, binned_times)
