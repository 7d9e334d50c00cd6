"""Images per second of ``clip-hba embed`` against a bare ``transformers`` CLIP forward.

A randomly initialised CLIP with the shapes of CLIP ViT-B/32 (``--shapes vit-l14`` for
ViT-L/14) and synthetic THINGS images. Both paths run in this process on the same batches of
the same pixels, alternating, and the median of ``--repeats`` passes is kept:

- ours: `clip_hba.models.embed` (eval mode, the class token through the tower and the
  projection, the prompt-cosine head over the 66 SPoSE labels, means per concept, ids);
- bare: ``CLIPModel.get_image_features`` on the same batches, cosine with the label
  features computed once -- what a user would write by hand.

The image decoding and resizing are timed apart (``prepare_s``: `concept_inputs`, once).
Prints one JSON line: {"images_per_s_ours", "images_per_s_bare", "ratio", ...}; ratio >= 0.9
means the pipeline adds little. Usage:
python benchmarks/embed_throughput.py [--threads N] [--images N] [--batch-size N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from clip_hba.data import load_concepts
from clip_hba.models import InputConfig, base_model, concept_inputs, embed
from clip_hba.testing import CLIP_SHAPES, make_random_clip, make_things_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", choices=sorted(CLIP_SHAPES), default="vit-b32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(Path(tmp), args)), flush=True)


def measure(tmp: Path, args: argparse.Namespace) -> dict:
    from transformers import CLIPModel

    model_dir = make_random_clip(tmp / "clip", **CLIP_SHAPES[args.shapes])
    concept_ids = list(load_concepts().ids[: args.images])
    images = make_things_images(tmp / "images", concept_ids, size=256)
    device = torch.device(args.device)
    ours = base_model(model_dir, device=device)
    started = time.perf_counter()
    inputs = concept_inputs(ours.backbone, concept_ids, InputConfig(images=str(images)))
    prepare_s = time.perf_counter() - started
    bare = CLIPModel.from_pretrained(model_dir).to(device).eval()
    labels = F.normalize(ours.label_features().detach().float(), dim=-1)  # once, as by hand
    pixels = inputs.tensors["pixel_values"]

    def run_bare() -> torch.Tensor:
        outputs = []
        half = torch.float16 if args.precision == "fp16" else torch.bfloat16
        with torch.no_grad(), torch.autocast(device.type, half, args.precision != "fp32"):
            for start in range(0, len(pixels), args.batch_size):
                batch = pixels[start : start + args.batch_size].to(device)
                features = bare.get_image_features(pixel_values=batch)
                features = getattr(features, "pooler_output", features)  # (v5 may wrap it)
                scores = ours.head_config.logit_scale * F.normalize(features, dim=-1) @ labels.T
                outputs.append(scores.float().cpu())
        return torch.cat(outputs)

    def run_ours() -> torch.Tensor:
        return torch.tensor(embed(ours, inputs, args.batch_size, precision=args.precision).values)

    run_bare(), run_ours()  # warm-up
    times: dict[str, list[float]] = {"bare": [], "ours": []}
    for _ in range(args.repeats):
        for name, function in (("bare", run_bare), ("ours", run_ours)):
            started = time.perf_counter()
            result = function()
            times[name].append(time.perf_counter() - started)
            if name == "bare":
                reference = result
            else:
                difference = float((result - reference.double()).abs().max())
    ours_s, bare_s = statistics.median(times["ours"]), statistics.median(times["bare"])
    return {
        "images_per_s_ours": round(len(pixels) / ours_s, 2),
        "images_per_s_bare": round(len(pixels) / bare_s, 2),
        "ratio": round(bare_s / ours_s, 3),
        "max_abs_difference": difference,
        "prepare_s": round(prepare_s, 2),
        "images": len(pixels),
        "batch_size": args.batch_size,
        "shapes": args.shapes,
        "device": str(device),
        "precision": args.precision,
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    main()
