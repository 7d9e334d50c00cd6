"""A few minutes on a GPU: what the training and embedding paths cost there, fp32 and bf16.

A randomly initialised CLIP with the shapes of CLIP ViT-L/14 (no downloads), synthetic THINGS
images and a simulated store of as many concepts. For each precision:

- ``behavior_epoch_s_cached`` / ``_uncached``: one CLIP-HBA-Behavior epoch (the paper's
  adapters: DoRA rank 32 on the last 2 vision blocks and the last text block; training and
  validation) with the frozen-prefix cache and without it;
- ``meg_stage1_epoch_s``: one CLIP-HBA-MEG stage-1 epoch (DoRA on every block, the tower run
  on every batch) with its validation;
- ``embed_images_per_s``: `embed` of every image;
- ``peak_gpu_gb``: the most GPU memory allocated during that precision's work.

Prints one JSON line. ``--shapes tiny --device cpu`` runs the same code on the tiny test
models (what the test suite does). Usage: python benchmarks/gpu_check.py [--images N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from clip_hba.data import split_concepts
from clip_hba.meg import SimulationConfig, simulate_meg
from clip_hba.models import AdapterConfig, InputConfig, base_model, concept_inputs, embed
from clip_hba.testing import CLIP_SHAPES, make_random_clip, make_things_images
from clip_hba.training import BehaviorFitConfig, BehaviorTrainer, MegFitConfig, MegTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", choices=("vit-l14", "tiny"), default="vit-l14")
    parser.add_argument("--images", type=int, default=256, help="training + validation")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(check(Path(tmp), args)), flush=True)


def check(tmp: Path, args: argparse.Namespace) -> dict:
    large = args.shapes == "vit-l14"
    model = make_random_clip(tmp / "clip", **(CLIP_SHAPES["vit-l14"] if large else {}))
    split = split_concepts(seed=0)
    n_val = max(1, round(args.images * 0.2))  # the concepts fit behavior's --max-concepts uses
    concept_ids = [*split.train_ids[: args.images - n_val], *split.val_ids[:n_val], *split.test_ids]
    images = make_things_images(tmp / "images", concept_ids, size=256)
    store = simulate_meg(
        tmp / "sim.h5",
        SimulationConfig(n_concepts=len(concept_ids), n_participants=2),
        concept_ids=concept_ids,
        verbose=False,
    )
    result: dict = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "shapes": args.shapes,
        "images": args.images,
        "batch_size": args.batch_size,
        "torch": torch.__version__,
    }
    for precision in args.precisions.split(","):
        result[precision] = _one_precision(tmp, model, images, store, concept_ids, precision, args)
    return result


def _one_precision(
    tmp: Path,
    model: Path,
    images: Path,
    store: Path,
    concept_ids: list[str],
    precision: str,
    args: argparse.Namespace,
) -> dict:
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    numbers = {}
    for cache in ("memory", "off"):
        config = BehaviorFitConfig(
            model=str(model),
            out=str(tmp / f"behavior-{precision}-{cache}"),
            inputs=InputConfig(images=str(images)),
            batch_size=args.batch_size,
            max_concepts=args.images,
            cache=cache,
            device=args.device,
            precision=precision,
        )
        trainer = BehaviorTrainer(config, verbose=False)
        trainer.start()
        name = "cached" if cache == "memory" else "uncached"
        numbers[f"behavior_epoch_s_{name}"] = round(_timed(trainer.epoch, 1, cuda), 3)
        trainer.close()
    meg = MegFitConfig(
        store=str(store),
        model=str(model),
        out=str(tmp / f"meg-{precision}"),
        inputs=InputConfig(images=str(images)),
        adapter=AdapterConfig(rank=32, alpha=16.0, layers=(), label_layers=()),
        batch_size=min(50, args.batch_size),
        device=args.device,
        precision=precision,
    )
    trainer = MegTrainer(meg, verbose=False)
    trainer.start()
    trainer.enter_stage1()
    trainer.progress.stage = 1
    trainer.optimizer = trainer.optimizer_for(1)
    numbers["meg_stage1_epoch_s"] = round(_timed(trainer.epoch, 1, cuda), 3)
    embedder = base_model(model, device=args.device)
    inputs = concept_inputs(embedder.backbone, concept_ids, InputConfig(images=str(images)))
    embed(embedder, inputs, args.batch_size, precision=precision)  # warm-up
    seconds = _timed(lambda: embed(embedder, inputs, args.batch_size, precision=precision), cuda)
    numbers["embed_images_per_s"] = round(len(inputs) / seconds, 1)
    numbers["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    for path in tmp.glob(f"*-{precision}*"):
        shutil.rmtree(path, ignore_errors=True)
    return numbers


def _timed(function, *args_and_cuda) -> float:
    *args, cuda = args_and_cuda
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    function(*args)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
