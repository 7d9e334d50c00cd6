"""Inference: models -> embeddings of concept inputs, with their ids (and layer or time axis).

Deterministic and independent of the batch size: every model runs in eval mode (no dropout,
no MEG noise) through `map_batches`. A concept with several images gets the mean of their
outputs (`ConceptInputs.concept_means`); `embed_images` keeps one row per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from clip_hba.data.embeddings import ConceptEmbedding, ImageEmbedding, StackedEmbedding
from clip_hba.models.behavior import BehaviorModel
from clip_hba.models.inputs import ConceptInputs, eval_mode, map_batches
from clip_hba.models.meg import MegModel

__all__ = ["embed", "embed_images", "embed_layers", "embed_times"]


def embed(
    model: BehaviorModel,
    inputs: ConceptInputs,
    batch_size: int = 64,
    desc: str | None = None,
    precision: str = "fp32",
) -> ConceptEmbedding:
    """Predicted behavioural dimensions of every concept (the mean over its images).

    ``desc`` (here and in the other functions) shows a progress bar with that label;
    ``precision`` (``"fp32"``, ``"bf16"``, ``"fp16"``) is the format of the forward passes
    (`clip_hba.models.precision`); the outputs are float32 whatever it is.

    Returns
    -------
    ConceptEmbedding, shape (n_concepts, n_labels), labelled with the model's labels.
    """
    values = model.predict(inputs.tensors, batch_size, desc, precision)
    ids, values = _concept_means(inputs, values, dim=0)
    return ConceptEmbedding(values, ids, model.labels)


def embed_images(
    model: BehaviorModel,
    inputs: ConceptInputs,
    batch_size: int = 64,
    desc: str | None = None,
    precision: str = "fp32",
) -> ImageEmbedding:
    """Predicted behavioural dimensions of every input (image), with its image and concept id.

    Returns
    -------
    ImageEmbedding, shape (n_inputs, n_labels)
    """
    values = model.predict(inputs.tensors, batch_size, desc, precision)
    return ImageEmbedding(values, inputs.concept_ids, inputs.item_ids, model.labels)


def _concept_means(
    inputs: ConceptInputs, values: np.ndarray | torch.Tensor, dim: int
) -> tuple[tuple[str, ...], np.ndarray]:
    tensor = torch.as_tensor(np.asarray(values, dtype=np.float64))
    ids, means = inputs.concept_means(tensor, torch.arange(len(inputs)), dim=dim)
    return ids, means.numpy()


def embed_layers(
    model: BehaviorModel | MegModel,
    inputs: ConceptInputs,
    batch_size: int = 64,
    normed: bool | None = None,
    desc: str | None = None,
    precision: str = "fp32",
) -> StackedEmbedding:
    """Every block's pooled feature of every input (see `Tower.layer_features`).

    ``normed`` (through the tower's final norm): default the MEG model's own setting
    (``layer_features``), for other models True.

    Returns
    -------
    StackedEmbedding, shape (n_blocks, n_concepts, feature_dim), layers ``block_1`` ...
    """
    tower = model.backbone.concept_tower
    if normed is None:
        normed = not isinstance(model, MegModel) or model.config.layer_features == "normed"

    def features(batch: dict) -> torch.Tensor:
        return tower.layer_features(batch, normed=normed)

    with eval_mode(model):
        values = map_batches(
            features,
            inputs.tensors,
            batch_size,
            model.device,
            dim=1,
            desc=desc,
            precision=precision,
        )
    ids, means = _concept_means(inputs, values.double(), dim=1)
    return StackedEmbedding(means, ids, "layers")


def embed_times(
    model: MegModel,
    inputs: ConceptInputs,
    batch_size: int = 50,
    labels: Sequence[str] | None = None,
    desc: str | None = None,
    precision: str = "fp32",
) -> StackedEmbedding:
    """A MEG model's per-timepoint embeddings (noise off).

    Returns
    -------
    StackedEmbedding, shape (T, n_concepts, n_labels), with the model's ``times_ms``; columns
    named ``labels`` (the SPoSE labels) when given.
    """
    with eval_mode(model):
        values = map_batches(
            model, inputs.tensors, batch_size, model.device, dim=1, desc=desc, precision=precision
        )
    ids, means = _concept_means(inputs, values.double(), dim=1)
    return StackedEmbedding(
        means,
        ids,
        "time",
        times_ms=np.asarray(model.times_ms),
        dim_labels=None if labels is None else tuple(labels),
    )
