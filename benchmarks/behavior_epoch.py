"""Time one CLIP-HBA-Behavior training epoch with and without the frozen-prefix cache.

A randomly initialised CLIP with the shapes of CLIP ViT-L/14 (vision: 24 blocks, width 1024,
patch 14, 224 px; text: 12 blocks, width 768), 32 synthetic images, batch 16, DoRA (rank 32)
on ``out_proj`` of the last 2 vision blocks and the last text block. Both paths run in this
process on the same model and data:

- cached: the hidden states entering the 23rd of the 24 vision blocks (index 22, printed as
  ``first_trained_block``) are computed once (timed separately as ``cache_build_s``); each step
  runs that block, the class token's path through the last block, and the label prompts' last
  text block from their own cached prefix;
- uncached: each step runs all 24 vision blocks and the 66 label prompts (padded to CLIP's 77
  tokens) through the whole text tower, as the reference implementation does.

Prints one JSON line: {"epoch_s_cached", "epoch_s_uncached", "speedup", "cache_build_s", ...}.
Usage: python benchmarks/behavior_epoch.py [--threads N] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from clip_hba.data import load_concepts, load_spose, load_spose_labels
from clip_hba.models import (
    AdapterConfig,
    BehaviorModel,
    HeadConfig,
    InputConfig,
    add_adapters,
    concept_inputs,
    first_trainable_block,
    load_backbone,
    select_inputs,
)
from clip_hba.testing import CLIP_SHAPES, make_random_clip, make_things_images
from clip_hba.training import PrefixCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per path (median)")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp), args)), flush=True)


def run(tmp: Path, args: argparse.Namespace) -> dict:
    model_dir = make_random_clip(tmp / "clip", **CLIP_SHAPES["vit-l14"])
    concept_ids = list(load_concepts().ids[: args.images])
    images = make_things_images(tmp / "images", concept_ids, size=256)
    model = BehaviorModel(load_backbone(model_dir), load_spose_labels(), HeadConfig())
    add_adapters(
        model.backbone, AdapterConfig(rank=32, alpha=16.0, layers=(-2, -1), label_layers=(-1,))
    )
    inputs = concept_inputs(model.backbone, concept_ids, InputConfig(images=str(images)))
    target = torch.tensor(
        load_spose(rescale="minmax100").select(concept_ids).values, dtype=torch.float32
    )
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=3e-4)
    label_prompts = model.backbone.tokenizer(
        list(model.labels),
        padding="max_length",
        max_length=77,
        truncation=True,
        return_tensors="pt",
    )
    label_prompts = {k: label_prompts[k] for k in ("input_ids", "attention_mask")}

    def uncached_step(rows: torch.Tensor) -> torch.Tensor:
        features = model.concept_tower(select_inputs(inputs.tensors, rows))
        labels = model.backbone.label_tower(label_prompts)
        return (
            model.head_config.logit_scale
            * F.normalize(features, dim=-1)
            @ F.normalize(labels, dim=-1).T
        )

    started = time.perf_counter()
    block = first_trainable_block(model.concept_tower)
    cache = PrefixCache.build(
        model.concept_tower, block, inputs, batch_size=args.batch_size, verbose=False
    )
    model.label_features()  # the label prompts' frozen prefix, computed once
    cache_build_s = time.perf_counter() - started

    def cached_step(rows: torch.Tensor) -> torch.Tensor:
        return model.forward_from(cache.hidden(rows), select_inputs(inputs.aux, rows), cache.block)

    timings = {}
    for name, step in (("uncached", uncached_step), ("cached", cached_step)):
        epoch(step, target, optimizer, args.batch_size)  # warm-up
        times = [epoch(step, target, optimizer, args.batch_size) for _ in range(args.epochs)]
        timings[name] = sorted(times)[len(times) // 2]
    return {
        "epoch_s_cached": round(timings["cached"], 3),
        "epoch_s_uncached": round(timings["uncached"], 3),
        "speedup": round(timings["uncached"] / timings["cached"], 2),
        "cache_build_s": round(cache_build_s, 2),
        "images": args.images,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "first_trained_block": block,
    }


def epoch(step, target: torch.Tensor, optimizer: torch.optim.Optimizer, batch_size: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(target), batch_size):
        rows = torch.arange(i, min(i + batch_size, len(target)))
        loss = F.mse_loss(step(rows), target[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
