"""The behaviour demo's geometry term: one JSON line per ``--rdm-loss-weight``.

Trains the demo's CLIP-HBA-Behavior model (all-MiniLM-L6-v2, word and definition, the
prompt-cosine head; `clip_hba.pipelines.demo_config`) with each weight L of the geometry term
and prints, for the epoch early stopping chose, the validation figures (MSE, the RDM term and
``val_rdm_spearman``: the validation concepts' RDM rho with their target RDM; the settings are
chosen on these) and the held-out ones (rdm48_spearman and odd-one-out accuracy). L = 0 is the
MSE alone, the paper's loss.

Usage: python benchmarks/behavior_demo_ablation.py OUT [--weights 0 30 100 1000]
(about 10-12 minutes a weight on 2 CPU cores; runs go to OUT/w<L>/run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from clip_hba.pipelines import demo_config
from clip_hba.training import RunDir, fit_behavior


def ablate(out: Path, weight: float) -> dict:
    config = dataclasses.replace(demo_config(out / f"w{weight:g}"), rdm_loss_weight=weight)
    started = time.perf_counter()
    result = fit_behavior(config, verbose=False)
    metrics = RunDir(result.run_dir).read_metrics()
    best = next(r for r in result.log if r["epoch"] == result.best_epoch)
    return {
        "rdm_loss_weight": weight,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "val_mse": round(best["val_mse"], 3),
        "val_rdm": round(best["val_rdm"], 4),
        "val_rdm_spearman": round(best["val_rdm_spearman"], 4),
        "rdm48_spearman": round(metrics["after"]["rdm48_spearman"], 4),
        "odd_one_out_accuracy": round(metrics["after"]["odd_one_out_accuracy"], 4),
        "seconds": round(time.perf_counter() - started),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 30.0, 100.0, 1000.0])
    args = parser.parse_args()
    for weight in args.weights:
        print(json.dumps(ablate(args.out, weight)), flush=True)


if __name__ == "__main__":
    main()
