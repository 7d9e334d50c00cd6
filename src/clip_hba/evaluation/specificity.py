"""Specificity of personal models: does each participant's model fit their own MEG best?

S[i, j] = mean over a time window of the RSA between participant i's model RDMs and
participant j's MEG RDMs (held-out concepts), with the mean diagonal minus the mean
off-diagonal and a permutation p-value (which model belongs to whom, shuffled: exactly over
all P! assignments when there are few, else a seeded Monte Carlo sample; the smallest p the
test can give is stated).

The second-order analysis (`second_order`) asks whether the personal models differ from each
other as the participants do: the participant x participant dissimilarity of the models' RDMs
(1 - their RSA, mean over the window) against the same matrix of the participants' MEG, by a
Spearman correlation of the upper triangles with a Mantel permutation test (participants
relabelled in rows and columns together).
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clip_hba._io import write_json_atomic
from clip_hba._validation import InputError
from clip_hba.evaluation.config import SPECIFICITY_WINDOW_MS
from clip_hba.evaluation.plots import plot_specificity
from clip_hba.meg.store import TimeRDMs
from clip_hba.rsa.comparisons import correlate, correlate_rowwise

__all__ = [
    "SecondOrder",
    "Specificity",
    "difference",
    "permuted_differences",
    "save_specificity",
    "second_order",
    "specificity_matrix",
    "strict_column_max",
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
    permutations: str = "exact"  # "exact" (all P! assignments) or "monte_carlo"
    n_permutations: int = 0  # assignments in the null
    min_p_value: float = 1.0  # the smallest p the test can give: 1 / (1 + n_permutations)
    second_order: SecondOrder | None = None

    def to_dict(self) -> dict:
        return {
            "participants": list(self.participants),
            "matrix": self.matrix.tolist(),
            "diagonal_minus_off_diagonal": self.difference,
            "p_value": self.p_value,
            "diagonal_is_column_max": self.diagonal_is_column_max,
            "all_diagonals_column_max": all(self.diagonal_is_column_max),
            "window_ms": list(self.window_ms),
            "permutations": self.permutations,
            "n_permutations": self.n_permutations,
            "min_p_value": self.min_p_value,
            "second_order": None if self.second_order is None else self.second_order.to_dict(),
        }


@dataclass
class SecondOrder:
    """Participant x participant dissimilarities of the models and of the MEG, and their fit."""

    model_dissimilarity: np.ndarray  # (P, P): 1 - RSA between the models of i and j
    meg_dissimilarity: np.ndarray  # (P, P): 1 - RSA between the MEG of i and j
    rho: float  # Spearman r of their upper triangles
    p_value: float  # Mantel: participants relabelled, one-sided (rho larger)
    permutations: str
    n_permutations: int
    min_p_value: float

    def to_dict(self) -> dict:
        return {
            "model_dissimilarity": self.model_dissimilarity.tolist(),
            "meg_dissimilarity": self.meg_dissimilarity.tolist(),
            "spearman_rho": self.rho,
            "p_value": self.p_value,
            "permutations": self.permutations,
            "n_permutations": self.n_permutations,
            "min_p_value": self.min_p_value,
        }


def strict_column_max(matrix: np.ndarray) -> list[bool]:
    """Per column j: is S[j, j] larger than every other model's S[i, j]? (A tie is not: models
    that kept the same starting point are not specific to anyone.)"""
    n = len(matrix)
    return [bool(matrix[j, j] > np.delete(matrix[:, j], j).max()) for j in range(n)]


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
    models = [np.asarray(model_rdms[p])[in_window] for p in participants]
    data = [meg.values[j][in_window] for j in range(len(participants))]
    matrix = _rsa_matrix(models, data, method)
    observed = difference(matrix)
    null = permuted_differences(matrix, n_permutations, seed)
    p_value = _p_value(null, observed)
    column_max = strict_column_max(matrix)
    return Specificity(
        participants,
        matrix,
        observed,
        p_value,
        column_max,
        (float(window_ms[0]), float(window_ms[1])),
        permutations=_kind(len(participants), n_permutations),
        n_permutations=len(null),
        min_p_value=1.0 / (1 + len(null)),
        second_order=second_order(models, data, method, n_permutations, seed),
    )


def _rsa_matrix(a: list[np.ndarray], b: list[np.ndarray], method: str) -> np.ndarray:
    """M[i, j]: mean over time of the RSA between ``a[i]`` and ``b[j]`` (each (T, n_pairs))."""
    matrix = np.zeros((len(a), len(b)))
    for i, rdms in enumerate(a):
        for j, other in enumerate(b):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row: mean of none
                matrix[i, j] = float(np.nanmean(correlate_rowwise(other, rdms, method)))
    return matrix


def _kind(n: int, n_permutations: int) -> str:
    return "exact" if math.factorial(n) <= n_permutations else "monte_carlo"


def _orders(n: int, n_permutations: int, seed: int) -> list[np.ndarray]:
    """Every assignment but the observed one, or ``n_permutations`` seeded random ones."""
    if _kind(n, n_permutations) == "exact":
        return [np.array(o) for o in itertools.permutations(range(n))][1:]
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for _ in range(n_permutations)]


def permuted_differences(matrix: np.ndarray, n_permutations: int, seed: int) -> np.ndarray:
    """`difference` under every other assignment of models to participants (or a sample)."""
    return np.array(
        [difference(matrix[order]) for order in _orders(len(matrix), n_permutations, seed)]
    )


def second_order(
    model_rdms: list[np.ndarray],
    meg_rdms: list[np.ndarray],
    method: str = "spearman",
    n_permutations: int = 10000,
    seed: int = 0,
) -> SecondOrder | None:
    """Do the personal models differ from each other as their participants' MEG does?

    Parameters
    ----------
    model_rdms, meg_rdms : list of ndarray, each (T, n_pairs)
        Participant by participant, the same timepoints and pairs.

    Returns
    -------
    SecondOrder, or None with fewer than 3 participants (one pair: nothing to correlate).
    """
    n = len(model_rdms)
    if n < 3:
        return None
    models = 1.0 - _rsa_matrix(model_rdms, model_rdms, method)
    meg = 1.0 - _rsa_matrix(meg_rdms, meg_rdms, method)
    upper = np.triu_indices(n, k=1)
    observed = _spearman(models[upper], meg[upper])
    null = np.array(
        [
            _spearman(models[np.ix_(order, order)][upper], meg[upper])
            for order in _orders(n, n_permutations, seed)
        ]
    )
    p_value = _p_value(null, observed)
    return SecondOrder(
        models,
        meg,
        observed,
        p_value,
        _kind(n, n_permutations),
        len(null),
        1.0 / (1 + len(null)),
    )


def _p_value(null: np.ndarray, observed: float) -> float:
    """One-sided permutation p: the observed assignment counts, and so does every tie (up to
    rounding: a relabelling that reorders equal values gives the same statistic)."""
    return (1 + int((null >= observed - 1e-12).sum())) / (1 + len(null))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(correlate(a[None], b[None], "spearman")[0, 0])


def save_specificity(result: Specificity, out: str | os.PathLike) -> dict:
    """Write ``specificity.json`` and ``specificity.png``; return the JSON."""
    out = Path(out)
    summary = result.to_dict()
    summary["files"] = {"plot": str(plot_specificity(result, out / "specificity.png"))}
    write_json_atomic(out / "specificity.json", summary)
    return summary
