"""What a CLIP-HBA-MEG run fits: the split of a store's concepts, the targets and the loss."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clip_hba._validation import InputError, check_option
from clip_hba.data.things import load_rdm48
from clip_hba.meg.store import RDMStore, TimeRDMs
from clip_hba.models.backbones import Backbone
from clip_hba.models.inputs import concepts_with_inputs
from clip_hba.models.meg import NoiseCurves, noise_curves
from clip_hba.rsa.rdms import pair_index, subset_pairs
from clip_hba.training.config import LOSS_TERMS, RDM_CORRELATIONS, TG_TERMS, MegFitConfig
from clip_hba.training.losses import masked_pearson
from clip_hba.training.runs import RunDir

__all__ = [
    "MegSplit",
    "meg_loss",
    "meg_split",
    "meg_targets",
    "rdm_correlations",
    "rsa_gain_confidence",
    "run_metrics",
    "scaled_targets",
    "store_split",
    "weighted_terms",
]

logger = logging.getLogger(__name__)


@dataclass
class MegSplit:
    """Concept ids held out, for validation and for training, each in the store's order."""

    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    test_ids: tuple[str, ...]


def meg_split(
    concept_ids: list[str],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    data_dir: str | os.PathLike | None = None,
    max_concepts: int | None = None,
) -> MegSplit:
    """Seeded held-out / validation / training split of a store's concepts.

    The held-out set takes the 48 concepts of the behavioural RDM first (when present), then
    random others, up to ``test_fraction``; the rest splits ``val_fraction`` / training.
    ``max_concepts`` keeps only the first that many (quick runs).
    """
    if max_concepts is not None:
        if max_concepts > len(concept_ids):
            raise InputError(
                f"--max-concepts {max_concepts} is more than the {len(concept_ids)} concepts "
                "of the store that have inputs; give fewer or leave it out."
            )
        concept_ids = concept_ids[:max_concepts]
    rng = np.random.default_rng(seed)
    n_test = max(3, round(test_fraction * len(concept_ids)))
    rdm48 = set(load_rdm48(data_dir).concept_ids)
    first = [c for c in concept_ids if c in rdm48][:n_test]
    others = [c for c in concept_ids if c not in set(first)]
    order = [others[k] for k in rng.permutation(len(others))]
    test = first + order[: n_test - len(first)]
    rest = order[n_test - len(first) :]
    n_val = max(3, round(val_fraction * len(rest)))
    if len(rest) - n_val < 3:
        raise InputError(
            f"{len(concept_ids)} concepts are too few to hold out {n_test}, validate on {n_val} "
            "and train on at least 3."
        )
    keep = {c: k for k, c in enumerate(concept_ids)}
    return MegSplit(
        tuple(sorted(rest[n_val:], key=keep.get)),
        tuple(sorted(rest[:n_val], key=keep.get)),
        tuple(sorted(test, key=keep.get)),
    )


def store_split(config: MegFitConfig, backbone: Backbone) -> tuple[MegSplit, dict[str, Any]]:
    """The split of the store's concepts that have inputs, and the store's description.

    A run started from a MEG run (``init_meg``) must hold out the same concepts as it.
    """
    with RDMStore(config.store) as store:
        available = list(store.concept_ids)
        store_description = {"path": str(store.path), **store.fingerprint()}
    present = concepts_with_inputs(backbone, available, config.inputs, config.data_dir)
    if len(present) < len(available):
        missing = len(available) - len(present)
        logger.warning("%d of the store's concepts have no inputs: left out.", missing)
    fractions = (config.val_fraction, config.test_fraction)
    split = meg_split(present, config.seed, *fractions, config.data_dir, config.max_concepts)
    if config.init_meg is not None:  # its W and adapters must not have seen our held-out set
        parent = RunDir(config.init_meg).description["split"]["test"]
        if set(parent) != set(split.test_ids):
            raise InputError(
                f"{config.init_meg} holds out other concepts than this run would; use the "
                "same store, --seed, --val-fraction, --test-fraction and --max-concepts as "
                "that run."
            )
    return split, store_description


def meg_targets(config: MegFitConfig, concept_ids: list[str]) -> tuple[TimeRDMs, list[str]]:
    """The run's target RDMs over ``concept_ids`` and the participants they come from.

    Returns
    -------
    TimeRDMs
        Values (T, pairs): one participant's RDMs, or the participants' NaN-aware mean.
    participants : list of str
    """
    with RDMStore(config.store) as store:
        if config.participant is not None:
            read = store.read(config.time_window, concept_ids, [config.participant])
            return TimeRDMs(read.values[0], read.concept_ids, read.times_ms), [config.participant]
        rows = store.participant_indices(config.participants, config.exclude_participants)
        mean = store.mean(
            config.time_window, concept_ids, config.participants, config.exclude_participants
        )
        return mean, [store.participant_ids[r] for r in rows]


# ---------------------------------------------------------------------------- loss


def _generalisation(rdms: torch.Tensor) -> torch.Tensor:
    """Temporal generalisation: Pearson r between the RDMs of every two timepoints, (T, T)."""
    centred = rdms - rdms.mean(-1, keepdim=True)
    unit = centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


def _tg_term(
    predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str
) -> torch.Tensor:
    """1 - r between the temporal-generalisation matrices (over pairs without NaN)."""
    complete = mask.all(0)
    n_times = predicted.shape[0]
    if n_times < 3 or int(complete.sum()) < 3:
        return predicted.new_zeros(())
    tg_model = _generalisation(predicted[:, complete])
    tg_target = _generalisation(target[:, complete])
    if kind == "row-mean":
        tg_model, tg_target = tg_model.mean(1), tg_target.mean(1)
    else:
        upper = torch.triu_indices(n_times, n_times, offset=1, device=predicted.device)
        tg_model = tg_model[upper[0], upper[1]]
        tg_target = tg_target[upper[0], upper[1]]
    everything = torch.ones_like(tg_model, dtype=torch.bool)
    return 1.0 - masked_pearson(tg_model, tg_target, everything)


def rdm_correlations(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson r of model and target RDMs at every timepoint, NaN pairs left out, (T,).

    A timepoint where either RDM is constant (e.g. a gated model before 0 ms) gives 0.
    """
    mask = ~torch.isnan(target)
    return masked_pearson(predicted, torch.nan_to_num(target), mask)


def meg_loss(
    predicted: torch.Tensor,
    target: torch.Tensor,
    weights: tuple[float, float, float] = (1.0, 0.1, 0.15),
    norms: dict[str, float] | None = None,
    rdm_correlation: str = "flat",
    tg_term: str = "row-mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """The MEG loss between model RDMs and target RDMs, both (T, n_pairs).

    Terms: ``rdm`` = 1 - Pearson r over every timepoint and pair at once (``"flat"``, the
    reference's: the model must also match how distinct the RDMs are at each moment) or the
    mean over timepoints of 1 - r (``"per-time"``); ``mse`` = mean squared error of the model's
    RDM (1 - Pearson, in [0, 2], gated) against the target (rescaled to [0, 1]), as the
    reference; ``tg`` = 1 - Pearson r between the row means (``"row-mean"``, the reference's)
    or the upper triangles (``"matrix"``) of the two temporal-generalisation matrices. NaN
    target pairs are left out. With ``norms`` each term is divided by its norm.

    Returns
    -------
    total : Tensor (scalar)
    parts : dict term -> float (the raw, unnormalised values)
    """
    check_option("rdm_correlation", rdm_correlation, RDM_CORRELATIONS)
    check_option("tg_term", tg_term, TG_TERMS)
    mask = ~torch.isnan(target)
    target = torch.nan_to_num(target)
    if rdm_correlation == "flat":  # every timepoint and pair as one long vector
        flat = masked_pearson(predicted.reshape(1, -1), target.reshape(1, -1), mask.reshape(1, -1))
        rdm_term = 1.0 - flat[0]
    else:
        rdm_term = (1.0 - masked_pearson(predicted, target, mask)).mean()
    weight = mask.to(predicted.dtype)
    mse_term = (((predicted - target) ** 2) * weight).sum() / weight.sum().clamp_min(1.0)
    terms = {"rdm": rdm_term, "mse": mse_term, "tg": _tg_term(predicted, target, mask, tg_term)}
    total = sum(weighted_terms(terms, weights, norms).values())
    return total, {name: float(value.detach()) for name, value in terms.items()}


def weighted_terms(
    parts: dict[str, Any], weights: tuple[float, float, float], norms: dict[str, float] | None
) -> dict[str, Any]:
    """Each term as it enters the loss (weight x term / norm); they add up to the loss.

    ``parts`` are the raw terms (``meg_loss``'s second output, or tensors).
    """
    norms = norms or {}
    return {
        name: w * parts[name] / max(norms.get(name, 1.0), 1e-12)
        for w, name in zip(weights, LOSS_TERMS, strict=True)
    }


def rsa_gain_confidence(
    candidate: torch.Tensor,
    best: torch.Tensor,
    target: torch.Tensor,
    times: torch.Tensor,
    n_concepts: int,
    n_resamples: int = 200,
    seed: int = 0,
) -> float:
    """How reliably ``candidate`` beats ``best`` on the validation RSA: a paired bootstrap.

    The validation concepts are resampled with replacement (pairs of a concept with itself
    dropped) ``n_resamples`` times, the same draws for both models; the result is the share of
    draws in which the candidate's mean RSA over ``times`` is the higher one.

    Parameters
    ----------
    candidate, best, target : Tensor, shape (T, n_pairs)
        Model RDMs and target RDMs over the same ``n_concepts`` validation concepts.
    times : Tensor of bool, shape (T,)
        The timepoints averaged.
    """
    generator = torch.Generator().manual_seed(seed)
    upper = torch.triu_indices(n_concepts, n_concepts, offset=1)
    wins = 0
    for _ in range(n_resamples):
        draw = torch.randint(0, n_concepts, (n_concepts,), generator=generator)
        rows_a, rows_b = draw[upper[0]], draw[upper[1]]
        distinct = rows_a != rows_b
        pairs = pair_index(rows_a[distinct].numpy(), rows_b[distinct].numpy(), n_concepts)
        pairs = torch.as_tensor(pairs, device=target.device)
        sampled = target[:, pairs]
        gain = (
            rdm_correlations(candidate[:, pairs], sampled)[times].mean()
            - rdm_correlations(best[:, pairs], sampled)[times].mean()
        )
        wins += int(gain > 0)
    return wins / n_resamples


def run_metrics(log: list[dict], progress: Any, out_of_time: bool) -> dict[str, Any]:
    """A finished run's ``metrics.json``: its best epoch, where it started, epochs per stage.

    ``progress`` is the run's `clip_hba.training.loop.Progress`; ``kept_start``: no epoch beat
    the starting model (epoch 0 of stage 0); ``stopped_by_time_budget``: the safety time
    limit ended training (only then do the metrics depend on the machine's speed).
    """
    best = next(
        r for r in log if (r["stage"], r["epoch"]) == (progress.best_stage, progress.best_epoch)
    )
    return {
        "kept_start": (progress.best_stage, progress.best_epoch) == (0, 0),
        "best_stage": progress.best_stage,
        "best_epoch": progress.best_epoch,
        "best_val_loss": progress.best_val_loss,
        "initial_val_loss": log[0]["val_loss"],
        "initial_val_r": log[0]["val_r"],
        "best_val_r": best["val_r"],
        "epochs": {s: sum(1 for r in log if r["stage"] == s and r["epoch"] > 0) for s in (0, 1)},
        "stopped_by_time_budget": out_of_time,
    }


def scaled_targets(
    targets: TimeRDMs, n_train: int, n_val: int, config: MegFitConfig
) -> tuple[np.ndarray, tuple[float, float], NoiseCurves]:
    """The targets rescaled to [0, 1] and the noise curves, both from the training pairs only.

    Parameters
    ----------
    targets : TimeRDMs, values (T, pairs) among the training then validation concepts
    n_train, n_val : int

    Returns
    -------
    scaled : ndarray, shape (T, pairs)
    scale : (low, high), the training pairs' minimum and maximum
    curves : NoiseCurves (gate and noise over time)
    """
    values, times = targets.values, targets.times_ms
    train_pairs = subset_pairs(np.arange(n_train), n_train + n_val)
    low, high = np.nanmin(values[:, train_pairs]), np.nanmax(values[:, train_pairs])
    if not high > low:
        raise InputError(f"The training targets are constant ({low:g} everywhere); nothing to fit.")
    scaled = values - low
    scaled /= high - low  # in place: at THINGS size each copy is 1.2 GB
    if config.meg.gating == "richness" and not (times >= 0).any():
        raise InputError(
            f"--gating richness needs timepoints from 0 ms on; the targets span "
            f"{times[0]:g}..{times[-1]:g} ms (use --gating none)."
        )
    curves = noise_curves(scaled[:, train_pairs], times, config.meg.window, config.meg.gating)
    return scaled, (float(low), float(high)), curves
