"""Time one CLIP-HBA-MEG stage-0 epoch with and without the layer-feature cache, and stage 1.

A randomly initialised CLIP with the shapes of CLIP ViT-B/32 (vision: 12 blocks, width 768,
patch 32, 224 px; text: 12 blocks, width 512), 100 synthetic concepts (images) whose MEG RDMs
are simulated over T = 281 timepoints (-100..1300 ms), batch 50 (80/20 split of 80 non-held-out
concepts: 64 training concepts, 2 steps per epoch). Both stage-0 paths train only the layer
weights W, in this process, on the same run:

- cached: every block's class-token feature of every concept was computed once (timed
  with the rest of the set-up, ``build_s``); each step mixes cached features;
- uncached: each step runs the whole frozen vision tower on the batch, as the reference does.

Stage 1 (DoRA rank 32 on every block's out_proj, W and adapters trained) is timed too.
Prints one JSON line: {"epoch_s_cached", "epoch_s_uncached", "speedup", "build_s",
"stage1_epoch_s", ...}. Usage: python benchmarks/meg_epoch.py [--threads N] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from clip_hba.meg import RDMStore, SimulationConfig, simulate_meg
from clip_hba.models import InputConfig
from clip_hba.testing import CLIP_SHAPES, make_random_clip, make_things_images
from clip_hba.training import MegFitConfig, MegTrainer


def timed_epochs(trainer: MegTrainer, epochs: int) -> float:
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        trainer.train_epoch()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per path (median)")
    parser.add_argument("--concepts", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = simulate_meg(
            root / "sim.h5",
            SimulationConfig(n_concepts=args.concepts, n_participants=2),
            verbose=False,
        )
        with RDMStore(store) as opened:
            concept_ids = list(opened.concept_ids)
        images = make_things_images(root / "images", concept_ids, size=256)
        model = make_random_clip(root / "clip", **CLIP_SHAPES["vit-b32"])
        config = MegFitConfig(
            store=str(store),
            model=str(model),
            out=str(root / "run"),
            inputs=InputConfig(images=str(images)),
            batch_size=50,
        )
        started = time.perf_counter()
        run = MegTrainer(config, verbose=False)
        build_s = time.perf_counter() - started
        run.norms = {"rdm": 1.0, "mse": 1.0, "tg": 1.0}
        run.optimizer = run.optimizer_for(0)
        cached = timed_epochs(run, args.epochs)
        features, run.features = run.features, None
        uncached = timed_epochs(run, args.epochs)
        run.features = features
        run.run.path.mkdir(parents=True, exist_ok=True)
        run.run.save_weights(run.weights())  # stage 1 starts from the best stage-0 weights
        run.enter_stage1()
        run.progress.stage = 1
        run.optimizer = run.optimizer_for(1)
        stage1 = timed_epochs(run, args.epochs)
    print(
        json.dumps(
            {
                "epoch_s_cached": round(cached, 3),
                "epoch_s_uncached": round(uncached, 3),
                "speedup": round(uncached / cached, 1),
                "build_s": round(build_s, 2),  # model, images, targets and the feature cache
                "stage1_epoch_s": round(stage1, 2),
                "train_concepts": run.n_train,
                "times": int(run.target.shape[0]),
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
