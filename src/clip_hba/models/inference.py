"""Inference: models -> embeddings of concept inputs, with their ids (and layer or time axis).

Deterministic and independent of the batch size: every model runs in eval mode (no dropout,
no MEG noise) through `map_batches`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from clip_hba.data.embeddings import ConceptEmbedding, StackedEmbedding
from clip_hba.models.behavior import BehaviorModel
from clip_hba.models.inputs import ConceptInputs, eval_mode, map_batches
from clip_hba.models.meg import MegModel

__all__ = ["embed", "embed_layers", "embed_times"]


def embed(model: BehaviorModel, inputs: ConceptInputs, batch_size: int = 64) -> ConceptEmbedding:
    """Predicted behavioural dimensions of every input.

    Returns
    -------
    ConceptEmbedding, shape (n_inputs, n_labels), labelled with the model's labels.
    """
    values = model.predict(inputs.tensors, batch_size)
    return ConceptEmbedding(values, inputs.concept_ids, model.labels)


def embed_layers(
    model: BehaviorModel | MegModel,
    inputs: ConceptInputs,
    batch_size: int = 64,
    normed: bool | None = None,
) -> StackedEmbedding:
    """Every block's pooled feature of every input (see `Tower.layer_features`).

    ``normed`` (through the tower's final norm): default the MEG model's own setting
    (``layer_features``), for other models True.

    Returns
    -------
    StackedEmbedding, shape (n_blocks, n_inputs, feature_dim), layers ``block_1`` ...
    """
    tower = model.backbone.concept_tower
    if normed is None:
        normed = not isinstance(model, MegModel) or model.config.layer_features == "normed"

    def features(batch: dict) -> torch.Tensor:
        return tower.layer_features(batch, normed=normed)

    with eval_mode(model):
        values = map_batches(features, inputs.tensors, batch_size, model.device, dim=1)
    return StackedEmbedding(values.double().numpy(), inputs.concept_ids, "layers")


def embed_times(
    model: MegModel,
    inputs: ConceptInputs,
    batch_size: int = 50,
    labels: Sequence[str] | None = None,
) -> StackedEmbedding:
    """A MEG model's per-timepoint embeddings (noise off).

    Returns
    -------
    StackedEmbedding, shape (T, n_inputs, n_labels), with the model's ``times_ms``; columns
    named ``labels`` (the SPoSE labels) when given.
    """
    with eval_mode(model):
        values = map_batches(model, inputs.tensors, batch_size, model.device, dim=1)
    return StackedEmbedding(
        values.double().numpy(),
        inputs.concept_ids,
        "time",
        times_ms=np.asarray(model.times_ms),
        dim_labels=None if labels is None else tuple(labels),
    )
