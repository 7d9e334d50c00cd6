"""What CLIP-HBA-MEG costs at full size: seconds and peak memory of each stage.

A THINGS-MEG-sized simulated store (1,854 concepts, 281 timepoints -100..1300 ms, 4
participants: 1,717,731 pairs each) and a randomly initialised CLIP with the shapes of CLIP
ViT-B/32 on 1,854 synthetic images. Stages, each in a process of its own (so that its peak
resident memory is its own), every one printing one JSON line with ``stage``, ``seconds`` and
``peak_rss_gb`` (and ``numpy_disabled`` where numpy's AVX-512 kernels were turned off, as on
AMD Zen 4: `clip_hba.cpu`):

- ``cache_build``: a `fit meg` trainer's set-up: the model, the targets (participants' mean
  over 1,483 training and validation concepts, 1.1 M pairs x 281 times) and the feature cache
  (every block's class token of every concept through the frozen tower);
- ``stage0_epoch``: one stage-0 epoch (W only, on the cached features) with its validation;
- ``stage1_epoch``: one stage-1 epoch (DoRA rank 32 on every block, the tower run on every
  batch) with its validation;
- ``evaluate_meg``: `evaluate meg` of a finished run (the MEG model, the base model and its
  12 blocks on the 371 held-out concepts, with --permutations);
- ``rsa_static``: `meg rsa` of one static model (the SPoSE embedding) on all 1,854 concepts;
- ``rsa_layers``: `meg rsa` of a 12-layer model (the random CLIP's blocks) on all concepts.

Generated files (store, images, model, a finished run, the layer embedding) are kept in
``--workdir`` and reused. Usage:
python benchmarks/full_scale.py --threads 2 --workdir DIR [--stages a,b] [--permutations N]
[--method spearman|pearson|...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from clip_hba.cpu import use_avx2_sorts

use_avx2_sorts()  # as the command line does (AMD Zen 4 only); the stages inherit it

from clip_hba.rsa.methods import METHODS  # noqa: E402

STAGES = ("cache_build", "stage0_epoch", "stage1_epoch", "evaluate_meg", "rsa_static", "rsa_layers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--workdir", type=Path, default=Path("full-scale"))
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated")
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--concepts", type=int, default=1854)
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument(
        "--method", default="spearman", choices=METHODS, help="meg rsa's comparison method"
    )
    parser.add_argument("--only", choices=("prepare", *STAGES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only is not None:  # a child: one stage in this process
        _limit_threads(args.threads)
        print(json.dumps(_stage(args.only, args)), flush=True)
        return
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    for stage in ["prepare", *stages]:
        command = [sys.executable, __file__, *sys.argv[1:], "--only", stage]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        line = done.stdout.strip().splitlines()[-1]
        if stage != "prepare":
            print(line, flush=True)


def _limit_threads(threads: int) -> None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _stage(stage: str, args: argparse.Namespace) -> dict:
    work = args.workdir.resolve()
    if stage == "prepare":
        started = time.perf_counter()
        _prepare(work, args)
        return {"stage": "prepare", "seconds": round(time.perf_counter() - started, 1)}
    started = time.perf_counter()
    extra = STAGE_FUNCTIONS[stage](work, args)
    seconds = time.perf_counter() - started - extra.pop("untimed_s", 0.0)
    return {
        "stage": stage,
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(_peak_rss_gb(), 2),
        "threads": args.threads,
        **extra,
        **_numpy_setting(),
    }


def _numpy_setting() -> dict:
    disabled = os.environ.get("NPY_DISABLE_CPU_FEATURES")
    return {} if disabled is None else {"numpy_disabled": disabled}


# ---------------------------------------------------------------------------- inputs


def _prepare(work: Path, args: argparse.Namespace) -> None:
    """The store, images and model (reused when they exist)."""
    from clip_hba.meg import RDMStore, SimulationConfig, simulate_meg
    from clip_hba.testing import CLIP_SHAPES, make_random_clip, make_things_images

    work.mkdir(parents=True, exist_ok=True)
    store = work / "store.h5"
    if not store.exists():
        config = SimulationConfig(n_concepts=args.concepts, n_participants=args.participants)
        simulate_meg(store, config, verbose=False)
    with RDMStore(store) as opened:
        concept_ids = list(opened.concept_ids)
    if not (work / "images" / "done").exists():
        make_things_images(work / "images", concept_ids, size=256)
        (work / "images" / "done").write_text("ok")
    if not (work / "clip" / "config.json").exists():
        make_random_clip(work / "clip", **CLIP_SHAPES["vit-b32"])


def _config(work: Path, args: argparse.Namespace, out: str, **settings):
    from clip_hba.models import InputConfig
    from clip_hba.training import MegFitConfig

    return MegFitConfig(
        store=str(work / "store.h5"),
        model=str(work / "clip"),
        out=str(work / out),
        inputs=InputConfig(images=str(work / "images")),
        precision=args.precision,
        device="cpu",
        **settings,
    )


def _trainer(work: Path, args: argparse.Namespace):
    import shutil

    from clip_hba.training import MegTrainer

    shutil.rmtree(work / "timing-run", ignore_errors=True)
    trainer = MegTrainer(_config(work, args, "timing-run"), verbose=False)
    return trainer


def _epoch(trainer) -> float:
    started = time.perf_counter()
    trainer.epoch(1)
    return time.perf_counter() - started


# ---------------------------------------------------------------------------- stages


def cache_build(work: Path, args: argparse.Namespace) -> dict:
    trainer = _trainer(work, args)
    return {"train_concepts": trainer.n_train, "val_concepts": trainer.n_val}


def stage0_epoch(work: Path, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    trainer = _trainer(work, args)
    trainer.start()  # the run, the loss normalisers, epoch 0's validation
    untimed = time.perf_counter() - started
    _epoch(trainer)
    return {"untimed_s": untimed}


def stage1_epoch(work: Path, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    trainer = _trainer(work, args)
    trainer.start()
    trainer.enter_stage1()
    trainer.progress.stage = 1
    trainer.optimizer = trainer.optimizer_for(1)
    untimed = time.perf_counter() - started
    _epoch(trainer)
    return {"untimed_s": untimed, "train_concepts": trainer.n_train}


def evaluate_meg(work: Path, args: argparse.Namespace) -> dict:
    from clip_hba.pipelines import evaluate_meg_run
    from clip_hba.training import RunDir, fit_meg

    started = time.perf_counter()
    run = work / "run"
    if RunDir(run).status() != "finished":  # a run to evaluate: one stage-0 epoch
        import shutil

        shutil.rmtree(run, ignore_errors=True)
        fit_meg(_config(work, args, "run", stage0_epochs=1, stage1_epochs=0), verbose=False)
    untimed = time.perf_counter() - started
    summary = evaluate_meg_run(
        run, work / "store.h5", work / "evaluation", n_permutations=args.permutations,
        verbose=False, precision=args.precision,
    )  # fmt: skip
    held_out = summary["held_out_concepts"]
    return {"untimed_s": untimed, "permutations": args.permutations, "held_out": held_out}


def rsa_static(work: Path, args: argparse.Namespace) -> dict:
    from clip_hba.data import load_spose, save_embedding

    path = work / "spose.npz"
    if not path.exists():
        spose = load_spose()
        save_embedding(path, spose, spose.concept_ids)
    return _rsa(work, args, path, "rsa_static")


def rsa_layers(work: Path, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    path = work / "layers.npz"
    if not path.exists():
        from clip_hba.pipelines import embed_run

        embed_run(work / "clip", path, images=work / "images", layers=True, verbose=False)
    untimed = time.perf_counter() - started
    return {"untimed_s": untimed, **_rsa(work, args, path, "rsa_layers")}


def _rsa(work: Path, args: argparse.Namespace, embedding: Path, name: str) -> dict:
    from clip_hba.evaluation import TimeRSAConfig, time_rsa_files

    config = TimeRSAConfig(method=args.method, n_permutations=args.permutations)
    time_rsa_files(work / "store.h5", [embedding], work / name, config, verbose=False)
    return {"permutations": args.permutations, "method": args.method}


STAGE_FUNCTIONS = {
    "cache_build": cache_build,
    "stage0_epoch": stage0_epoch,
    "stage1_epoch": stage1_epoch,
    "evaluate_meg": evaluate_meg,
    "rsa_static": rsa_static,
    "rsa_layers": rsa_layers,
}

if __name__ == "__main__":
    main()
