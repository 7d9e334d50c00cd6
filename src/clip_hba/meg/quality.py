"""How well each participant's MEG RDMs agree with the others': data quality per participant.

For each timepoint, a participant's RDM is correlated with the mean RDM of the other
participants (leave-one-out, the lower bound of the noise ceiling) and with the mean of all
(the upper bound). Averaged over a window after onset, the leave-one-out value says how much
of the group's structure a participant shares; a participant far below the others (as
participant 4 of THINGS-MEG) is better left out of group targets (``--exclude-participants``).
The correlations stream over time blocks, so memory does not grow with the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clip_hba.meg.config import QUALITY_WINDOW_MS
from clip_hba.meg.store import RDMStore
from clip_hba.rsa.comparisons import correlate_rowwise
from clip_hba.rsa.methods import Method

__all__ = ["FLAG_RATIO", "QUALITY_WINDOW_MS", "leave_one_out_correlations", "participant_quality"]

FLAG_RATIO = 0.5  # flagged: below this share of the median of the other participants' values


def leave_one_out_correlations(block: np.ndarray, method: Method) -> tuple[np.ndarray, np.ndarray]:
    """Each participant's RDM against the mean of the others and against the mean of all.

    Parameters
    ----------
    block : ndarray, shape (P, T, n_pairs)
        NaN pairs are left out of the means (and of each correlation).
    method : str
        A comparison method of `clip_hba.rsa.METHODS`.

    Returns
    -------
    others, everyone : ndarray, shape (P, T)
        NaN where there is a single participant.
    """
    n_p, n_t = block.shape[:2]
    others = np.full((n_p, n_t), np.nan)
    everyone = np.full((n_p, n_t), np.nan)
    if n_p < 2:
        return others, everyone
    valid = ~np.isnan(block)
    total = np.where(valid, block, 0.0).sum(0, dtype=np.float64)
    count = valid.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_all = total / count
        for p in range(n_p):
            mean_others = (total - np.where(valid[p], block[p], 0.0)) / (count - valid[p])
            others[p] = correlate_rowwise(block[p], mean_others, method)
            everyone[p] = correlate_rowwise(block[p], mean_all, method)
    return others, everyone


def participant_quality(
    store: RDMStore,
    window_ms: tuple[float, float] = QUALITY_WINDOW_MS,
    method: Method = "pearson",
    concept_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per participant: agreement with the others over ``window_ms``, share of the ceiling, flag.

    Returns
    -------
    dict
        ``participants``: one entry per participant with ``r_with_others`` (the mean over the
        window of the correlation with the mean of the other participants),
        ``share_of_ceiling`` (that value over the lower noise ceiling, the mean of every
        participant's ``r_with_others``: 1 for a typical participant) and ``flagged`` (below
        `FLAG_RATIO` times the median of the others' values); ``flagged`` lists the flagged
        ids and ``advice`` names the remedy; ``lower_noise_ceiling`` and
        ``upper_noise_ceiling`` (each participant against the mean of all, itself included)
        are the window's means. With fewer than 3 participants nobody can be singled out.
    """
    times = store.times_ms[store.time_indices(window_ms)]
    ids = list(store.participant_ids)
    others = np.full((len(ids), len(times)), np.nan)
    everyone = np.full((len(ids), len(times)), np.nan)
    offset = 0
    for time_rows, block in store.iter_times(window_ms, concept_ids):
        span = slice(offset, offset + len(time_rows))
        others[:, span], everyone[:, span] = leave_one_out_correlations(block, method)
        offset += len(time_rows)
    agreement = np.array([_nanmean(row) for row in others])
    lower, upper = _nanmean(others.ravel()), _nanmean(everyone.ravel())
    entries = {}
    for k, person in enumerate(ids):
        rest = np.delete(agreement, k)
        flagged = len(ids) >= 3 and bool(agreement[k] < FLAG_RATIO * np.nanmedian(rest))
        entries[person] = {
            "r_with_others": _finite(agreement[k]),
            "share_of_ceiling": _finite(agreement[k] / lower) if lower else None,
            "flagged": flagged,
        }
    flagged_ids = [p for p, entry in entries.items() if entry["flagged"]]
    summary = {
        "window_ms": [float(times[0]), float(times[-1])],
        "method": method,
        "lower_noise_ceiling": _finite(lower),
        "upper_noise_ceiling": _finite(upper),
        "participants": entries,
        "flagged": flagged_ids,
        "rule": f"flagged below {FLAG_RATIO:g} x the median of the other participants' r",
    }
    if flagged_ids:
        summary["advice"] = (
            f"{', '.join(flagged_ids)} agree(s) far less with the others than they with each "
            f"other; consider --exclude-participants {','.join(flagged_ids)} for group models."
        )
    return summary


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
