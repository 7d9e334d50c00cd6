"""Embed with any model: a behaviour run, a MEG run or a base model -> an embedding file.

One row per concept (the mean over its images when there are several, with each row's
``image_ids`` entry naming them, joined by ``;``), or one row per image (``per_image``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from clip_hba._io import check_output_file
from clip_hba._validation import InputError, check_option, preview
from clip_hba.data.embeddings import (
    check_embedding_out,
    save_embedding,
    save_image_embedding,
    save_stacked_embedding,
)
from clip_hba.data.things import load_spose_labels
from clip_hba.models.config import PRECISIONS, InputConfig
from clip_hba.models.inference import embed, embed_images, embed_layers, embed_times
from clip_hba.models.inputs import ConceptInputs, concept_inputs
from clip_hba.training.load import LoadedModel, load_run

__all__ = ["embed_run", "run_inputs"]

logger = logging.getLogger(__name__)


def embed_run(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    images_csv: str | os.PathLike | None = None,
    exemplar: str | None = None,
    normalization: str | None = None,
    skip_missing: bool = False,
    batch_size: int = 64,
    with_rdm: bool = False,
    layers: bool = False,
    per_image: bool = False,
    device: str = "auto",
    data_dir: str | os.PathLike | None = None,
    allow_unfinished: bool = False,
    allow_random_init: bool = False,
    verbose: bool = True,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Write the embedding of every concept input of ``model`` to ``out``; return a summary.

    Parameters
    ----------
    model : path or str
        A run directory of ``clip-hba fit`` (behaviour: the 66-d head; MEG: (T, N, 66) with the
        time axis) or a base model (hub id or folder) with the prompt-cosine head.
    out : path
        ``.npz`` (or ``.csv``/``.tsv`` for 66-d embeddings); see `save_embedding` and
        `save_stacked_embedding`.
    images, images_csv, exemplar, normalization
        Override the inputs the run was trained with (its own image folder by default; a new
        ``images`` folder drops the run's image list unless ``images_csv`` is given).
    data_dir : path, optional
        THINGS data directory (default: the run's).
    with_rdm : bool
        Also store the RDMs (1 - Pearson, condensed).
    layers : bool
        Every block's pooled feature instead of the head (behaviour runs and base models).
    per_image : bool
        One row per image (with its image and concept id) instead of one per concept (the mean
        over the concept's images, with exemplar ``"all"``); behaviour runs and base models.
    allow_unfinished : bool
        Accept a run whose training did not finish.
    verbose : bool
        Show a progress bar.
    precision : {"fp32", "bf16", "fp16"}
        Number format of the forward passes (`clip_hba.models.precision`); the file holds
        float32 values either way.

    Returns
    -------
    dict
        ``n_items`` (inputs embedded: images or texts), ``n_concepts``, ``n_rows`` (rows
        written), ``n_dims`` and the axes written.
    """
    check_output_file(out)
    check_option("precision", precision, PRECISIONS)
    _check_outputs_combine(with_rdm, layers, per_image)
    loaded = load_run(
        model,
        device,
        allow_unfinished=allow_unfinished,
        allow_random_init=allow_random_init,
        data_dir=data_dir,
    )
    if loaded.kind == "meg" and (layers or per_image):
        raise InputError(
            f"{'--layers' if layers else '--per-image'} is for behaviour runs and base models, "
            "not MEG runs."
        )
    axis = "time" if loaded.kind == "meg" else "layers" if layers else None
    check_embedding_out(out, axis, with_rdm)  # (before the work, not after it)
    inputs, config, run_data_dir = run_inputs(
        loaded, images, images_csv, exemplar, normalization, skip_missing, data_dir
    )
    _report_run_concepts_missing(loaded, inputs)
    desc = "Embedding" if verbose else None
    summary: dict[str, Any] = {
        "out": str(out),
        "n_items": len(inputs),
        "n_concepts": len(inputs.concepts),
        "exemplar": config.exemplar,
        "precision": precision,
    }
    if per_image:
        images_embedding = embed_images(loaded.model, inputs, batch_size, desc, precision)
        save_image_embedding(out, images_embedding)
        n_rows, n_dims = images_embedding.values.shape
        return {**summary, "n_rows": n_rows, "n_dims": n_dims, "per_image": True}
    if loaded.kind == "meg":
        labels = load_spose_labels(run_data_dir)
        embedding = embed_times(loaded.model, inputs, batch_size, labels, desc, precision)
        item_ids = inputs.item_ids_of(embedding.concept_ids)
        save_stacked_embedding(out, embedding, item_ids, with_rdm)
        n_times, n_rows, n_dims = embedding.values.shape
        return {**summary, "n_rows": n_rows, "n_times": n_times, "n_dims": n_dims}
    if layers:
        stacked = embed_layers(loaded.model, inputs, batch_size, desc=desc, precision=precision)
        save_stacked_embedding(out, stacked, inputs.item_ids_of(stacked.concept_ids))
        n_layers, n_rows, n_dims = stacked.values.shape
        return {**summary, "n_rows": n_rows, "n_layers": n_layers, "n_dims": n_dims}
    embedding = embed(loaded.model, inputs, batch_size, desc, precision)
    save_embedding(out, embedding, inputs.item_ids_of(embedding.concept_ids), with_rdm=with_rdm)
    return {**summary, "n_rows": len(embedding.concept_ids), "n_dims": embedding.n_dims}


def _report_run_concepts_missing(loaded: LoadedModel, inputs: ConceptInputs) -> None:
    """Warn when a run's own concepts are missing from the images embedded (e.g. a partial
    folder): the output holds fewer concepts than the run was trained and tested on."""
    if loaded.run is None:
        return
    description = loaded.run.description
    own = list(description.get("concept_images") or {})  # a behaviour run's concepts
    own = own or [c for part in description.get("split", {}).values() for c in part]  # MEG
    missing = [c for c in own if c not in set(inputs.concepts)]
    if missing:
        logger.warning(
            "%d of the %d concepts of the run have no input here and are not embedded: %s",
            len(missing),
            len(own),
            preview(missing),
        )


def _check_outputs_combine(with_rdm: bool, layers: bool, per_image: bool) -> None:
    if layers and per_image:
        raise InputError("--per-image writes the 66-d head per image: not with --layers.")
    if with_rdm and (layers or per_image):
        raise InputError(
            f"--rdm and {'--layers' if layers else '--per-image'} cannot be combined (the RDM "
            "is of the 66-d embedding of each concept)."
        )


def run_inputs(
    loaded: LoadedModel,
    images: str | os.PathLike | None,
    images_csv: str | os.PathLike | None,
    exemplar: str | None,
    normalization: str | None,
    skip_missing: bool,
    data_dir: str | os.PathLike | None,
) -> tuple[ConceptInputs, InputConfig, str | os.PathLike | None]:
    """Every concept input of a loaded model: the run's own settings unless overridden.

    Returns the inputs, their settings and the THINGS data directory (given, else the run's).
    """
    config = dataclasses.replace(
        loaded.inputs.with_images(images, images_csv),
        exemplar=loaded.inputs.exemplar if exemplar is None else exemplar,
        normalization=loaded.inputs.normalization if normalization is None else normalization,
        skip_missing=skip_missing,
    )
    run_data_dir = data_dir
    if run_data_dir is None and loaded.config is not None:
        run_data_dir = loaded.config.data_dir
    inputs = concept_inputs(
        loaded.model.backbone, None, config, run_data_dir, things_ids_only=False
    )
    return inputs, config, run_data_dir
