"""Specificity of personal models: does each participant's model fit their own MEG best?

S[i, j] = mean over a time window of the RSA between participant i's model RDMs and
participant j's MEG RDMs (held-out concepts), with the mean diagonal minus the mean
off-diagonal and a permutation p-value (which model belongs to whom, shuffled).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clip_hba._io import write_json_atomic
from clip_hba._validation import InputError
from clip_hba.evaluation.config import SPECIFICITY_WINDOW_MS
from clip_hba.evaluation.plots import plot_specificity
from clip_hba.meg.store import TimeRDMs
from clip_hba.rsa.comparisons import correlate_rowwise

__all__ = [
    "Specificity",
    "difference",
    "permuted_differences",
    "save_specificity",
    "specificity_matrix",
]


@dataclass
class Specificity:
    """S[i, j]: model of participant i against held-out MEG of participant j."""

    participants: tuple[str, ...]
    matrix: np.ndarray  # (P, P)
    difference: float  # mean diagonal - mean off-diagonal
    p_value: float
    diagonal_is_column_max: list[bool]
    window_ms: tuple[float, float]

    def to_dict(self) -> dict:
        return {
            "participants": list(self.participants),
            "matrix": self.matrix.tolist(),
            "diagonal_minus_off_diagonal": self.difference,
            "p_value": self.p_value,
            "diagonal_is_column_max": self.diagonal_is_column_max,
            "all_diagonals_column_max": all(self.diagonal_is_column_max),
            "window_ms": list(self.window_ms),
        }


def difference(matrix: np.ndarray) -> float:
    off = ~np.eye(len(matrix), dtype=bool)
    return float(np.diag(matrix).mean() - matrix[off].mean())


def specificity_matrix(
    model_rdms: Mapping[str, np.ndarray],
    meg: TimeRDMs,
    window_ms: tuple[float, float] = SPECIFICITY_WINDOW_MS,
    method: str = "spearman",
    n_permutations: int = 10000,
    seed: int = 0,
) -> Specificity:
    """The specificity matrix of personal models' RDMs against participants' MEG RDMs.

    Parameters
    ----------
    model_rdms : mapping participant id -> ndarray, shape (T, n_pairs)
        Each participant's model RDMs at the MEG's timepoints, over ``meg.concept_ids``.
    meg : TimeRDMs
        Values (P, T, n_pairs) of the same participants (``meg.participant_ids``).
    window_ms : (float, float)
        Times averaged (inclusive).
    n_permutations : int
        The p-value shuffles which model belongs to whom: exactly, over all P! orders, when
        that is at most ``n_permutations``; else that many seeded random orders.
    """
    participants = tuple(model_rdms)
    if len(participants) < 2:
        raise InputError(
            f"Specificity needs the models of at least 2 participants, got {len(participants)}."
        )
    if meg.participant_ids is None or tuple(meg.participant_ids) != participants:
        raise InputError(
            f"The MEG holds participants {meg.participant_ids}, the models {participants}."
        )
    times = meg.times_ms
    in_window = (times >= window_ms[0]) & (times <= window_ms[1])
    if not in_window.any():
        raise InputError(f"No timepoint of the runs lies in {window_ms} ms.")
    matrix = np.zeros((len(participants), len(participants)))
    for i, p_model in enumerate(participants):
        rdms = np.asarray(model_rdms[p_model])[in_window]
        for j in range(len(participants)):
            data = meg.values[j][in_window]
            matrix[i, j] = float(np.nanmean(correlate_rowwise(data, rdms, method)))
    observed = difference(matrix)
    null = permuted_differences(matrix, n_permutations, seed)
    p_value = (1 + int((null >= observed).sum())) / (1 + len(null))
    column_max = [bool(matrix[j, j] >= matrix[:, j].max()) for j in range(len(participants))]
    return Specificity(
        participants,
        matrix,
        observed,
        p_value,
        column_max,
        (float(window_ms[0]), float(window_ms[1])),
    )


def permuted_differences(matrix: np.ndarray, n_permutations: int, seed: int) -> np.ndarray:
    """`difference` under every other assignment of models to participants (or a sample)."""
    n = len(matrix)
    if math.factorial(n) <= n_permutations:
        orders = [np.array(o) for o in itertools.permutations(range(n))]
        orders = orders[1:]  # leave out the observed assignment
    else:
        rng = np.random.default_rng(seed)
        orders = [rng.permutation(n) for _ in range(n_permutations)]
    return np.array([difference(matrix[order]) for order in orders])


def save_specificity(result: Specificity, out: str | os.PathLike) -> dict:
    """Write ``specificity.json`` and ``specificity.png``; return the JSON."""
    out = Path(out)
    summary = result.to_dict()
    summary["files"] = {"plot": str(plot_specificity(result, out / "specificity.png"))}
    write_json_atomic(out / "specificity.json", summary)
    return summary
