"""How the MEG demo's figures depend on the simulated participants: one line per simulation seed.

Runs the MEG stages of ``clip-hba demo`` (group model, its evaluation, individualized models,
specificity) from a finished behaviour run, on the demo's simulation with each given seed
(seed 0 is the demo's own). Besides the demo's figures each line gives an oracle: the
specificity matrix of each participant's *true* personal behavioural RDM (SPoSE weighted by
their planted dimension weights, static over time) against everyone's held-out MEG, over the
same concepts, window and correlation. Where even the oracle's diagonal is not the largest in
a column, that participant's data hardly shows their personal space.

``auc_start`` is the held-out AUC of the group run's starting point (its epoch-0 model: the
behaviour model's tower with W on the last block and the output's relu), which the run never
falls below on validation; ``auc_behavior`` is the behaviour model's own.

Usage: python benchmarks/meg_demo_seeds.py BEHAVIOR_RUN OUT [--seeds 0 1 2 3 4]
(BEHAVIOR_RUN: e.g. clip-hba-demo/run after ``clip-hba demo``; about 5-6 minutes a seed on
2 CPU cores.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from clip_hba.data import load_spose
from clip_hba.evaluation import (
    ModelRDMs,
    TimeRSAConfig,
    strict_column_max,
    summarize_curve,
    time_resolved_rsa,
)
from clip_hba.meg import RDMStore, simulate_meg
from clip_hba.models import concept_inputs, embed_times
from clip_hba.pipelines import demo_meg_config, demo_simulation, run_meg_demo
from clip_hba.rsa import correlate_rowwise, rdm
from clip_hba.training import MegTrainer, RunDir

WINDOW_MS = (0.0, 1000.0)


def oracle_matrix(store_path: Path, concept_ids: list[str]) -> np.ndarray:
    """S[i, j]: participant i's true behavioural RDM vs participant j's MEG (mean over window)."""
    with RDMStore(store_path) as store:
        attention = store.ground_truth()["attention"]  # (P, 66)
        meg = store.read(WINDOW_MS, concept_ids)  # values: (P, T, pairs)
    spose = load_spose().select(concept_ids).values
    n = len(attention)
    matrix = np.zeros((n, n))
    for i in range(n):
        own = rdm(spose * attention[i], "pearson")
        for j in range(n):
            data = meg.values[j]
            matrix[i, j] = np.nanmean(
                correlate_rowwise(data, np.broadcast_to(own, data.shape), "spearman")
            )
    return matrix


def start_auc(store_path: Path, behavior_run: Path, out: Path, concept_ids: list[str]) -> float:
    """Held-out AUC of the group run's starting point (its epoch-0 model), as `evaluate meg`."""
    config = demo_meg_config(store_path, out / "start", init_behavior=behavior_run)
    model = MegTrainer(config, verbose=False).model
    inputs = concept_inputs(model.backbone, concept_ids, config.inputs, things_ids_only=False)
    embedding = embed_times(model, inputs)
    window = (float(model.times_ms[0]), float(model.times_ms[-1]))
    rsa_config = TimeRSAConfig(n_permutations=0, concept_ids=concept_ids, window_ms=window)
    result = time_resolved_rsa(
        store_path, [ModelRDMs.from_embedding("start", embedding)], rsa_config, verbose=False
    )
    return summarize_curve(result.group["start"], result.times_ms)["auc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("behavior_run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    for seed in args.seeds:
        started = time.perf_counter()
        out = args.out / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        store = out / "simulated.h5"
        if not store.exists():
            config = dataclasses.replace(demo_simulation(), seed=seed)
            simulate_meg(store, config, verbose=False)
        summary = run_meg_demo(out, args.behavior_run, verbose=False)
        held_out = RunDir(summary["group_run"]).description["split"]["test"]
        oracle = oracle_matrix(store, held_out)
        specific = summary["specificity"]
        line = {
            "seed": seed,
            "auc_group": round(summary["group_vs_base"]["auc_meg_model"], 4),
            "auc_base": round(summary["group_vs_base"]["auc_base"], 4),
            "auc_behavior": round(summary["group_curves"]["behavior"]["auc"], 4),
            "auc_start": round(start_auc(store, args.behavior_run, out, held_out), 4),
            "dominant_layers": summary["layer_weights"]["n_distinct_dominant_layers_after_0ms"],
            "diagonal_is_column_max": specific["diagonal_is_column_max"],
            "diagonal_minus_off_diagonal": round(specific["diagonal_minus_off_diagonal"], 4),
            "p_value": round(specific["p_value"], 4),
            "oracle_diagonal_is_column_max": strict_column_max(oracle),
            "matrix": np.round(specific["matrix"], 4).tolist(),
            "oracle_matrix": np.round(oracle, 4).tolist(),
            "seconds": round(time.perf_counter() - started),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
