"""MEG runs evaluated: one run on its held-out concepts, or the specificity of personal runs.

`evaluate_meg_run`: the time-resolved RSA (curves, peaks, onsets, clusters, noise ceiling) of
the MEG model, the base model and (if the run started from one) the behaviour model against the
store's MEG RDMs of the run's held-out concepts; the learned layer weights W beside the base
backbone's layer x time RSA matrix; and the MEG model's behavioural alignment (48-object RDM)
at every timepoint. `specificity_of_runs`: the specificity matrix of individualized runs.
`evaluate_meg` takes either and decides which it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from clip_hba._io import check_output_dir, write_json_atomic, write_npy_atomic
from clip_hba._validation import InputError, check_option, preview
from clip_hba.data.things import load_rdm48
from clip_hba.evaluation.config import SPECIFICITY_WINDOW_MS, TimeRSAConfig
from clip_hba.evaluation.model_rdms import ModelRDMs
from clip_hba.evaluation.plots import plot_layer_weights
from clip_hba.evaluation.specificity import Specificity, save_specificity, specificity_matrix
from clip_hba.evaluation.time_rsa import time_resolved_rsa
from clip_hba.evaluation.time_rsa_result import save_time_rsa
from clip_hba.meg.store import RDMStore
from clip_hba.models.behavior import base_model
from clip_hba.models.config import PRECISIONS, InputConfig
from clip_hba.models.inference import embed, embed_layers, embed_times
from clip_hba.models.inputs import concept_inputs, concepts_with_inputs
from clip_hba.models.meg import MegModel
from clip_hba.rsa.comparisons import compare
from clip_hba.rsa.rdms import rdm
from clip_hba.training.config import MegFitConfig
from clip_hba.training.load import load_behavior_run, load_meg_run, resolve_device
from clip_hba.training.runs import RunDir, find_runs

__all__ = ["evaluate_meg", "evaluate_meg_run", "specificity_of_runs"]


def evaluate_meg(
    model: str | os.PathLike,
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    n_permutations: int = TimeRSAConfig.n_permutations,
    window_ms: tuple[float, float] = SPECIFICITY_WINDOW_MS,
    seed: int = TimeRSAConfig.seed,
    device: str = "auto",
    images: str | os.PathLike | None = None,
    allow_unfinished: bool = False,
    verbose: bool = True,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Evaluate a MEG run (`evaluate_meg_run`) or a folder of runs (`specificity_of_runs`).

    ``window_ms`` is the specificity's time window; ``images`` overrides the runs' image
    folder; ``precision`` is the number format of the forward passes
    (`clip_hba.models.precision`). Writes JSON and plots to ``out`` and returns the JSON.
    """
    check_output_dir(out)
    check_option("precision", precision, PRECISIONS)
    run = RunDir(model)
    if run.is_run():
        return evaluate_meg_run(
            run.path,
            store,
            out,
            n_permutations=n_permutations,
            seed=seed,
            device=device,
            images=images,
            allow_unfinished=allow_unfinished,
            verbose=verbose,
            precision=precision,
        )
    runs = find_runs(model)
    if not runs:
        raise InputError(f"{model} is neither a MEG run nor a folder of MEG runs.")
    result = specificity_of_runs(
        {name: run.path for name, run in runs.items()},
        store,
        window_ms,
        n_permutations=n_permutations or 10000,  # 0 turns off cluster tests, not this one
        seed=seed,
        device=device,
        images=images,
        allow_unfinished=allow_unfinished,
        precision=precision,
    )
    return save_specificity(result, out)


def _meg_run(
    run_dir: str | os.PathLike, images: str | os.PathLike | None
) -> tuple[RunDir, MegFitConfig, InputConfig]:
    run = RunDir(run_dir).expect("meg", "--model")
    config = run.fit_config()
    return run, config, config.inputs.with_images(images)


def _held_out(run: RunDir, store: RDMStore) -> list[str]:
    in_store = set(store.concept_ids)
    held_out = [c for c in run.description["split"]["test"] if c in in_store]
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
    *,
    images: str | os.PathLike | None = None,
    allow_unfinished: bool = False,
    precision: str = "fp32",
) -> dict:
    """Evaluate one MEG run on its held-out concepts; writes JSON and plots to ``out``.

    Returns the summary (also ``out/evaluation.json``).
    """
    out = Path(out)
    run, config, inputs_config = _meg_run(run_dir, images)
    model = load_meg_run(run, device, allow_unfinished)
    saved = run.description
    times = np.array(saved["times_ms"])
    with RDMStore(store) as opened:
        held_out = _held_out(run, opened)
        recorded = saved.get("store", {}).get("sha256")  # runs of older versions: None
        store_matches = None if recorded is None else recorded == opened.fingerprint()["sha256"]
    inputs = concept_inputs(
        model.backbone, held_out, inputs_config, config.data_dir, things_ids_only=False
    )
    ids = list(inputs.concepts)
    meg_embedding = embed_times(model, inputs, precision=precision)
    models = [ModelRDMs.from_embedding("meg_model", meg_embedding)]
    base = base_model(
        config.model, config.data_dir, resolve_device(device), config.allow_random_init
    )
    base_inputs = concept_inputs(
        base.backbone, ids, inputs_config, config.data_dir, things_ids_only=False
    )
    models.append(ModelRDMs.from_embedding("base", embed(base, base_inputs, precision=precision)))
    # the base model's blocks as the MEG model mixes them (with or without the final norm)
    normed = config.meg.layer_features == "normed"
    layers = embed_layers(base, base_inputs, 50, normed=normed, precision=precision)
    models.append(ModelRDMs.from_embedding("base_layers", layers))
    if config.init_behavior is not None:
        behavior = load_behavior_run(RunDir(config.init_behavior), device, allow_unfinished)
        behavior_embedding = embed(behavior, base_inputs, precision=precision)
        models.append(ModelRDMs.from_embedding("behavior", behavior_embedding))
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
    summary["files"]["layer_weights"] = str(write_npy_atomic(out / "layer_weights.npy", weights))
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
    summary["behavior"] = _behavioral_alignment(model, config, inputs_config, times, precision)
    summary["run"] = str(run.path)
    summary["held_out_concepts"] = len(held_out)
    summary["store_matches_training"] = store_matches
    write_json_atomic(out / "evaluation.json", summary)
    return summary


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


def _behavioral_alignment(
    model: MegModel,
    config: MegFitConfig,
    inputs_config: InputConfig,
    times: np.ndarray,
    precision: str = "fp32",
) -> dict:
    """rdm48_spearman of the MEG model's embedding at every timepoint (if inputs allow).

    The best timepoint is searched from 0 ms on: before stimulus onset the targets carry no
    structure, so the layer weights there stay at their start (the behaviour model's output).
    """
    human = load_rdm48(config.data_dir)
    wanted = list(human.concept_ids)
    try:
        present = concepts_with_inputs(model.backbone, wanted, inputs_config, config.data_dir)
    except InputError:  # none of them has an image
        present = []
    missing = [c for c in wanted if c not in present]
    if missing:
        return {
            "rdm48_spearman_per_time": None,
            "note": f"Not computed: {len(missing)} of the 48 concepts of the behavioural RDM "
            f"have no inputs ({preview(missing)}).",
        }
    inputs = concept_inputs(
        model.backbone, wanted, inputs_config, config.data_dir, things_ids_only=False
    )
    embeddings = embed_times(model, inputs, precision=precision).values
    human = human.select(list(inputs.concepts))
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


def specificity_of_runs(
    runs: dict[str, str | os.PathLike],
    store: str | os.PathLike,
    window_ms: tuple[float, float] = SPECIFICITY_WINDOW_MS,
    method: str = "spearman",
    n_permutations: int = 10000,
    seed: int = 0,
    device: str = "auto",
    *,
    images: str | os.PathLike | None = None,
    allow_unfinished: bool = False,
    precision: str = "fp32",
) -> Specificity:
    """The specificity matrix of individualized runs (participant id -> run directory).

    Every run must hold out the same concepts (same store, seed and fractions) and share one
    time axis; see `clip_hba.evaluation.specificity.specificity_matrix`.
    """
    if len(runs) < 2:
        raise InputError(
            f"Specificity needs the models of at least 2 participants, got {len(runs)}."
        )
    model_rdms, held_out, times, first_test = {}, None, None, None
    for participant, run_dir in runs.items():
        run, config, inputs_config = _meg_run(run_dir, images)
        saved = run.description
        if held_out is None:
            with RDMStore(store) as opened:
                held_out = _held_out(run, opened)
            times = np.array(saved["times_ms"])
            first_test = set(saved["split"]["test"])
        elif set(saved["split"]["test"]) != first_test:
            raise InputError(f"{run_dir} holds out other concepts than the first run.")
        elif not np.array_equal(np.array(saved["times_ms"]), times):
            raise InputError(f"{run_dir} has another time axis than the first run.")
        model = load_meg_run(run, device, allow_unfinished)
        inputs = concept_inputs(
            model.backbone, held_out, inputs_config, config.data_dir, things_ids_only=False
        )
        # whose model it is: the participant the run was trained on, not the folder's name
        own = config.participant or participant
        if own in model_rdms:
            raise InputError(f"{run_dir} and another run are both models of participant {own!r}.")
        embedding = embed_times(model, inputs, precision=precision)
        model_rdms[own] = rdm(embedding.values, "pearson")  # (T, pairs)
    assert times is not None and held_out is not None
    with RDMStore(store) as opened:
        meg = opened.read((float(times[0]), float(times[-1])), held_out, list(runs))
    if len(meg.times_ms) != len(times) or not np.allclose(meg.times_ms, times):
        raise InputError(
            f"The store's time axis ({len(meg.times_ms)} timepoints from {meg.times_ms[0]:g} ms) "
            f"does not match the runs' ({len(times)} from {times[0]:g} ms)."
        )
    return specificity_matrix(model_rdms, meg, window_ms, method, n_permutations, seed)
