"""How robust a model's behavioural alignment is to image corruptions.

For each corruption and severity (`clip_hba.data.transforms`), every concept image is corrupted
at the model's input resolution, embedded (the mean over a concept's images with exemplar
"all"), and scored like ``clip-hba evaluate behavior``: the 48-object RDM rho and the
odd-one-out accuracy, each with its confidence interval, beside the clean images' scores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from clip_hba._io import write_json_atomic
from clip_hba._validation import InputError, check_option
from clip_hba.data.transforms import CORRUPTIONS, SEVERITIES, parse_corruptions
from clip_hba.evaluation.behavior import evaluate_behavior
from clip_hba.evaluation.plots import check_figure_path, plot_corruptions
from clip_hba.models.config import PRECISIONS
from clip_hba.models.inference import embed
from clip_hba.models.inputs import ConceptInputs
from clip_hba.pipelines.embed import run_inputs
from clip_hba.training.load import load_run

__all__ = ["evaluate_corruptions"]

SCORES = (
    "rdm48_spearman",
    "rdm48_spearman_ci",
    "odd_one_out_accuracy",
    "odd_one_out_ci",
    "n_rdm48_concepts",
    "n_triplets",
)


def evaluate_corruptions(
    model: str | os.PathLike,
    *,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    images: str | os.PathLike | None = None,
    images_csv: str | os.PathLike | None = None,
    exemplar: str | None = None,
    normalization: str | None = None,
    skip_missing: bool = False,
    batch_size: int = 64,
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    device: str = "auto",
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    allow_unfinished: bool = False,
    allow_random_init: bool = False,
    verbose: bool = True,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Behavioural scores of ``model`` on clean and corrupted images.

    Parameters
    ----------
    model : path or str
        A behaviour run, or a base image model (hub id or folder) with the prompt-cosine head.
    corruptions : sequence of str
        Names from `clip_hba.data.transforms.CORRUPTIONS` (empty: the clean images only).
    severities : sequence of int
        Levels 1-5.
    images, images_csv, exemplar, normalization, skip_missing
        The images, as for ``clip-hba embed`` (default: the run's).
    out, plot : path, optional
        Write the result as JSON, and the figure (`plot_corruptions`).
    precision : {"fp32", "bf16", "fp16"}
        Number format of the forward passes (`clip_hba.models.precision`).

    Returns
    -------
    dict
        ``clean``: the scores on the images as they are; ``corruptions``: name -> one record
        per severity (``severity`` and the scores); ``model``, ``n_concepts``, ``n_images``,
        ``exemplar`` and the settings.
    """
    check_option("precision", precision, PRECISIONS)
    corruptions = parse_corruptions(",".join(corruptions)) if corruptions else ()
    if plot is not None:
        check_figure_path(plot)
        if not corruptions:
            raise InputError("A robustness plot needs some --corruptions.")
    loaded = load_run(
        model,
        device,
        allow_unfinished=allow_unfinished,
        allow_random_init=allow_random_init,
        data_dir=data_dir,
    )
    if loaded.kind == "meg":
        raise InputError("Corruptions are scored on behaviour runs and base models, not MEG runs.")
    inputs, config, run_data_dir = run_inputs(
        loaded, images, images_csv, exemplar, normalization, skip_missing, data_dir
    )
    if inputs.images is None:
        raise InputError(f"{model} reads texts: corruptions need an image model.")

    def scores(concept_inputs: ConceptInputs) -> dict[str, Any]:
        embedding = embed(loaded.model, concept_inputs, batch_size, precision=precision)
        result = evaluate_behavior(
            embedding,
            n_bootstrap=n_bootstrap,
            ci_level=ci_level,
            seed=seed,
            data_dir=run_data_dir,
        ).to_dict()
        return {k: result[k] for k in SCORES}

    conditions = [(c, s) for c in corruptions for s in severities]
    bar = tqdm(conditions, desc="Corruptions", disable=not verbose)
    result: dict[str, Any] = {
        "model": str(model),
        "n_concepts": len(inputs.concepts),
        "n_images": len(inputs),
        "exemplar": config.exemplar,
        "n_bootstrap": n_bootstrap,
        "ci_level": ci_level,
        "seed": seed,
        "clean": scores(inputs),
        "corruptions": {c: [] for c in corruptions},
    }
    pixels = inputs.images
    for corruption, severity in bar:
        corrupted = inputs.with_pixels(pixels.corrupted(corruption, severity))
        result["corruptions"][corruption].append({"severity": severity, **scores(corrupted)})
    if plot is not None:
        result["plot"] = str(plot_corruptions(result, plot))
    if out is not None:
        write_json_atomic(Path(out), result)
    return result
