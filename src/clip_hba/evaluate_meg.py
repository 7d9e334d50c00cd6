"""Evaluation of CLIP-HBA-MEG runs on held-out concepts, and the specificity of personal models.

`evaluate_meg_run`: the time-resolved RSA (curves, peaks, onsets, clusters, noise ceiling) of
the MEG model, the base model and (if the run started from one) the behaviour model against the
store's MEG RDMs of the run's held-out concepts; the learned layer weights W beside the base
backbone's layer x time RSA matrix; and the MEG model's behavioural alignment (48-object RDM)
at every timepoint.

`specificity`: S[i, j] = mean over a time window of the RSA between participant i's model and
participant j's held-out MEG RDMs, with the mean diagonal minus the mean off-diagonal and a
permutation p-value (model labels shuffled).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clip_hba._io import write_json_atomic
from clip_hba._validation import InputError
from clip_hba.checkpoints import CONFIG_FILE, read_json
from clip_hba.embed import embed_layers, meg_embeddings
from clip_hba.inputs import concept_inputs
from clip_hba.meg import RDMStore
from clip_hba.meg_model import MegModel
from clip_hba.models import BehaviorModel, HeadConfig
from clip_hba.rsa import compare, rdm
from clip_hba.things import load_rdm48, load_spose_labels
from clip_hba.time_rsa import (
    ModelRDMs,
    TimeRSAConfig,
    correlate_rowwise,
    save_time_rsa,
    time_resolved_rsa,
)
from clip_hba.train_meg import MegFitConfig, load_meg_run

__all__ = ["Specificity", "evaluate_meg_run", "meg_embeddings", "specificity"]


def _run_setup(run_dir: Path) -> tuple[dict, MegFitConfig]:
    saved = read_json(run_dir / CONFIG_FILE)
    if saved.get("task") != "meg":
        raise InputError(f"{run_dir} is not a clip-hba MEG run.")
    return saved, MegFitConfig.from_dict(saved["fit"])


def _held_out(saved: dict, store: RDMStore) -> list[str]:
    held_out = [c for c in saved["split"]["test"] if c in set(store.concept_ids)]
    if len(held_out) < 3:
        raise InputError(
            f"Only {len(held_out)} of the run's held-out concepts are in {store.path}; "
            "at least 3 are needed."
        )
    return held_out


def evaluate_meg_run(
    run_dir: str | os.PathLike,
    store: str | os.PathLike,
    out: str | os.PathLike,
    n_permutations: int = 1000,
    seed: int = 0,
    device: str = "auto",
    verbose: bool = True,
) -> dict:
    """Evaluate one MEG run on its held-out concepts; writes JSON and plots to ``out``.

    Returns the summary (also ``out/evaluation.json``).
    """
    from clip_hba.plots import plot_layer_weights

    run_dir, out = Path(run_dir), Path(out)
    saved, config = _run_setup(run_dir)
    model = load_meg_run(run_dir, device)
    times = np.array(saved["times_ms"])
    with RDMStore(store) as opened:
        held_out = _held_out(saved, opened)
    inputs = concept_inputs(
        model.backbone, held_out, config.inputs, config.data_dir, things_ids_only=False
    )
    ids = list(inputs.concept_ids)
    models = [
        ModelRDMs.from_features(
            "meg_model", meg_embeddings(model, inputs), ids, kind="time", times_ms=times
        )
    ]
    base = _base_model(config, device)
    base_inputs = concept_inputs(
        base.backbone, ids, config.inputs, config.data_dir, things_ids_only=False
    )
    models.append(ModelRDMs.from_features("base", base.predict(base_inputs.tensors), ids))
    base_layers = embed_layers(base, base_inputs, 50)
    models.append(
        ModelRDMs.from_features(
            "base_layers",
            base_layers,
            ids,
            kind="layers",
            labels=[f"block_{k + 1}" for k in range(len(base_layers))],
        )
    )
    if config.init_behavior is not None:
        from clip_hba.embed import load_model

        behavior, _ = load_model(config.init_behavior, config.data_dir, device)
        models.append(
            ModelRDMs.from_features("behavior", behavior.predict(base_inputs.tensors), ids)
        )
    target = saved["target"]
    rsa_config = TimeRSAConfig(
        window_ms=(float(times[0]), float(times[-1])),
        participants=[target["participant"]] if target["participant"] else target["participants"],
        concept_ids=held_out,
        n_permutations=n_permutations,
        seed=seed,
    )
    result = time_resolved_rsa(store, models, rsa_config, verbose=verbose)
    summary = save_time_rsa(result, out)
    weights = model.weights().detach().cpu().numpy()  # (T, L)
    np.save(out / "layer_weights.npy", weights)
    summary["files"]["layer_weights_png"] = str(
        plot_layer_weights(
            weights,
            times,
            result.layer_time["base_layers"],
            result.times_ms,
            out / "layer_weights.png",
        )
    )
    group = summary["curves"]
    summary["meg_vs_base"] = {
        "auc_meg_model": group["meg_model"]["auc"],
        "auc_base": group["base"]["auc"],
        "auc_gain": group["meg_model"]["auc"] - group["base"]["auc"],
        "peak_meg_model": group["meg_model"]["peak"],
        "peak_base": group["base"]["peak"],
    }
    summary["layer_weights"] = _weights_summary(weights, times)
    summary["behavior"] = _behavioral_alignment(model, config, times)
    summary["run"] = str(run_dir)
    summary["held_out_concepts"] = len(held_out)
    write_json_atomic(out / "evaluation.json", summary)
    return summary


def _base_model(config: MegFitConfig, device: str) -> BehaviorModel:
    from clip_hba.backbones import load_backbone
    from clip_hba.train import resolve_device

    backbone = load_backbone(config.model)
    base = BehaviorModel(backbone, load_spose_labels(config.data_dir), HeadConfig())
    return base.to(resolve_device(device)).eval()


def _weights_summary(weights: np.ndarray, times: np.ndarray) -> dict:
    """Where W puts its weight: the dominant layer and the weighted mean layer over time."""
    dominant = weights.argmax(1)
    mean_layer = weights @ np.arange(1, weights.shape[1] + 1)
    after = times >= 0
    return {
        "dominant_layer_per_time": (dominant + 1).tolist(),
        "mean_layer_per_time": mean_layer.round(3).tolist(),
        "n_distinct_dominant_layers_after_0ms": len(set(dominant[after].tolist())),
        "mean_layer_range_after_0ms": [
            float(mean_layer[after].min()),
            float(mean_layer[after].max()),
        ]
        if after.any()
        else None,
    }


def _behavioral_alignment(model: MegModel, config: MegFitConfig, times: np.ndarray) -> dict:
    """rdm48_spearman of the MEG model's embedding at every timepoint (if inputs allow).

    The best timepoint is searched from 0 ms on: before stimulus onset the targets carry no
    structure, so the layer weights there stay at their start (the behaviour model's output).
    """
    human = load_rdm48(config.data_dir)
    try:
        inputs = concept_inputs(
            model.backbone,
            list(human.concept_ids),
            config.inputs,
            config.data_dir,
            things_ids_only=False,
        )
    except InputError as err:
        return {"rdm48_spearman_per_time": None, "note": str(err)}
    embeddings = meg_embeddings(model, inputs)
    human = human.select(list(inputs.concept_ids))
    rhos = []
    for values in embeddings:
        with np.errstate(invalid="ignore"):
            rdm_t = rdm(values, "pearson")
        rhos.append(compare(rdm_t, human.condensed) if np.isfinite(rdm_t).all() else float("nan"))
    rhos = np.array(rhos)
    after = np.where(times >= 0, rhos, np.nan)  # before 0 ms the weights are untrained
    best = int(np.nanargmax(after)) if np.isfinite(after).any() else int(np.nanargmax(rhos))
    return {
        "rdm48_spearman_best": float(rhos[best]),
        "best_time_ms": float(times[best]),
        "rdm48_spearman_per_time": [None if not np.isfinite(r) else float(r) for r in rhos],
    }


# ---------------------------------------------------------------------------- specificity


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


def _difference(matrix: np.ndarray) -> float:
    off = ~np.eye(len(matrix), dtype=bool)
    return float(np.diag(matrix).mean() - matrix[off].mean())


def specificity(
    runs: dict[str, str | os.PathLike],
    store: str | os.PathLike,
    window_ms: tuple[float, float] = (0.0, 1000.0),
    method: str = "spearman",
    n_permutations: int = 10000,
    seed: int = 0,
    device: str = "auto",
) -> Specificity:
    """The specificity matrix of individualized models (participant id -> run directory).

    Every run must hold out the same concepts (same store, seed and fractions). The p-value
    shuffles which model belongs to whom (exactly, over all P! orders, when that is at most
    ``n_permutations``).
    """
    participants = tuple(runs)
    if len(participants) < 2:
        raise InputError("Specificity needs the models of at least 2 participants.")
    embeddings, held_out, times, first_test = {}, None, None, None
    for participant, run_dir in runs.items():
        saved, config = _run_setup(Path(run_dir))
        if held_out is None:
            with RDMStore(store) as opened:
                held_out = _held_out(saved, opened)
            times = np.array(saved["times_ms"])
            first_test = set(saved["split"]["test"])
        elif set(saved["split"]["test"]) != first_test:
            raise InputError(f"{run_dir} holds out other concepts than the first run.")
        elif not np.array_equal(np.array(saved["times_ms"]), times):
            raise InputError(f"{run_dir} has another time axis than the first run.")
        model = load_meg_run(run_dir, device)
        inputs = concept_inputs(
            model.backbone, held_out, config.inputs, config.data_dir, things_ids_only=False
        )
        embeddings[participant] = rdm(meg_embeddings(model, inputs), "pearson")  # (T, pairs)
    assert times is not None and held_out is not None
    in_window = (times >= window_ms[0]) & (times <= window_ms[1])
    if not in_window.any():
        raise InputError(f"No timepoint of the runs lies in {window_ms} ms.")
    with RDMStore(store) as opened:
        meg = opened.read((float(times[0]), float(times[-1])), held_out, list(participants))
    if len(meg.times_ms) != len(times):
        raise InputError("The store's time axis does not match the runs'.")
    matrix = np.zeros((len(participants), len(participants)))
    for i, p_model in enumerate(participants):
        model_rdms = embeddings[p_model][in_window]
        for j in range(len(participants)):
            data = meg.values[j][in_window]
            matrix[i, j] = float(np.nanmean(correlate_rowwise(data, model_rdms, method)))
    observed = _difference(matrix)
    null = _permuted_differences(matrix, n_permutations, seed)
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


def _permuted_differences(matrix: np.ndarray, n_permutations: int, seed: int) -> np.ndarray:
    n = len(matrix)
    if math.factorial(n) <= n_permutations:
        orders = [np.array(o) for o in itertools.permutations(range(n))]
        orders = orders[1:]  # leave out the observed assignment
    else:
        rng = np.random.default_rng(seed)
        orders = [rng.permutation(n) for _ in range(n_permutations)]
    return np.array([_difference(matrix[order]) for order in orders])


def save_specificity(result: Specificity, out: str | os.PathLike) -> dict:
    """Write ``specificity.json`` and ``specificity.png``; return the JSON."""
    from clip_hba.plots import plot_specificity

    out = Path(out)
    summary = result.to_dict()
    summary["files"] = {"plot": str(plot_specificity(result, out / "specificity.png"))}
    write_json_atomic(out / "specificity.json", summary)
    return summary
