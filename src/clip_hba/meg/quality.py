"""How well each participant's MEG RDMs agree with the others': data quality per participant.

For each timepoint, a participant's RDM is correlated with the mean RDM of the other
participants (leave-one-out, the lower bound of the noise ceiling) and with the mean of all
(the upper bound). Averaged over a window after onset, the leave-one-out value says how much
of the group's structure a participant shares; a participant far below the others (as
participant 4 of THINGS-MEG) is better left out of group targets (``--exclude-participants``).
The correlations stream over time blocks, so memory does not grow with the store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import numpy as np
import torch

from clip_hba.meg.config import QUALITY_WINDOW_MS
from clip_hba.meg.store import RDMStore
from clip_hba.rsa.comparisons import correlate_rowwise, standardize
from clip_hba.rsa.methods import Method

__all__ = ["FLAG_RATIO", "QUALITY_WINDOW_MS", "leave_one_out_correlations", "participant_quality"]

FLAG_RATIO = 0.5  # flagged: below this share of the median of the other participants' values
_LOO_BYTES = 64 << 20  # leave-one-out means standardised at once


def leave_one_out_correlations(
    block: np.ndarray, method: Method, standardized: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each participant's RDM against the mean of the others and against the mean of all.

    Parameters
    ----------
    block : ndarray, shape (P, T, n_pairs)
        NaN pairs are left out of the means (and of each correlation).
    method : str
        A comparison method of `clip_hba.rsa.METHODS`.
    standardized : ndarray, shape (P + 1, T, n_pairs), optional
        For a block without NaN: `clip_hba.rsa.standardize` of the mean of all participants
        (row 0) and of each participant's rows (rows 1..P), already computed by the caller
        (time-resolved RSA needs them for its curves) and reused here. Ignored for a block
        with NaN and for Kendall's tau-a, which take the general path.

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
    if method != "kendall_tau_a" and block.shape[-1] >= 3 and valid.all():
        return _complete_leave_one_out(block, method, standardized)
    total = np.where(valid, block, 0.0).sum(0, dtype=np.float64)
    count = valid.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_all = total / count
        for p in range(n_p):
            mean_others = (total - np.where(valid[p], block[p], 0.0)) / (count - valid[p])
            others[p] = correlate_rowwise(block[p], mean_others, method)
            everyone[p] = correlate_rowwise(block[p], mean_all, method)
    return others, everyone


def _complete_leave_one_out(
    block: np.ndarray, method: Method, standardized: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """`leave_one_out_correlations` of a block without NaN: every row standardised once.

    The general path (NaN pairs: per-pair counts) standardises each participant's rows twice
    and the mean of all once per participant; here they are standardised once (or taken from
    ``standardized``) and only the P leave-one-out means, ``(sum - own) / (P - 1)``, are
    ranked anew. The means are the same numbers and standardised the same way; only the
    final dot products round differently (about 1e-16).
    """
    n_p = len(block)
    total = _sum_over_participants(block)
    if standardized is None:
        standardized = np.empty((n_p + 1, *block.shape[1:]), dtype=np.float64)
        standardize(total / n_p, method, out=standardized[0])
        n_pairs = block.shape[2]
        standardize(block.reshape(-1, n_pairs), method, out=standardized[1:].reshape(-1, n_pairs))
    z_all, z_own = standardized[0], standardized[1:]
    others = np.empty(block.shape[:2])
    # every participant's leave-one-out mean for a few timepoints at a time, standardised in
    # one call (one pool of threads, small buffers)
    step = max(1, _LOO_BYTES // (8 * n_p * block.shape[2]))
    for start in range(0, block.shape[1], step):
        span = slice(start, start + step)
        mean_others = _leave_one_out_means(total[span], block[:, span])  # (P, tb, n_pairs)
        z_others = standardize(mean_others.reshape(-1, block.shape[2]), method)
        z_others = z_others.reshape(mean_others.shape)
        others[:, span] = np.einsum("ptn,ptn->pt", z_own[:, span], z_others)
    everyone = np.einsum("ptn,tn->pt", z_own, z_all)
    return others, everyone


def _sum_over_participants(block: np.ndarray) -> np.ndarray:
    """``block.sum(0, dtype=float64)``, (P, T, n) -> (T, n), in threads over the pairs.

    The same additions in the same order for every value (an axis-0 sum adds the
    participants one after another), so the same bits.
    """
    total = np.empty(block.shape[1:], dtype=np.float64)

    def work(c: slice) -> None:
        block[..., c].sum(0, dtype=np.float64, out=total[..., c])

    _in_threads(work, block.shape[-1])
    return total


def _leave_one_out_means(total: np.ndarray, block: np.ndarray) -> np.ndarray:
    """``(total - block) / (P - 1)``, (T, n) and (P, T, n) -> (P, T, n) float64, in threads."""
    means = np.empty(block.shape, dtype=np.float64)

    def work(c: slice) -> None:
        np.subtract(total[..., c], block[..., c], out=means[..., c])
        means[..., c] /= len(block) - 1

    _in_threads(work, block.shape[-1])
    return means


def _in_threads(work: Callable[[slice], None], n_columns: int) -> None:
    """``work(columns)`` for even chunks of ``range(n_columns)``, in threads.

    numpy's arithmetic releases the GIL; these full-size float64 passes over every
    participant's pairs otherwise keep one core busy while the others wait (at THINGS-MEG
    size, 2 cores: 32 ms per timepoint on one, 22 ms in threads). Up to
    ``torch.get_num_threads()`` threads, about 4 chunks each, and no chunk below 16,384
    columns: numpy then sums along the participants one after another, never pairwise, as
    over the whole array.
    """
    workers = torch.get_num_threads()
    n_chunks = max(1, min(4 * workers, n_columns // (1 << 14)))
    bounds = np.linspace(0, n_columns, n_chunks + 1).astype(int)
    chunks = [slice(a, b) for a, b in pairwise(bounds)]
    if workers <= 1 or n_chunks == 1:
        for c in chunks:
            work(c)
        return
    with ThreadPoolExecutor(min(workers, n_chunks)) as pool:
        list(pool.map(work, chunks))


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
