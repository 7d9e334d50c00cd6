"""CLIP-HBA models: a backbone tower plus a head that predicts the 66 behavioural dimensions."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clip_hba._validation import InputError
from clip_hba.data.things import load_spose_labels
from clip_hba.models.backbones import Backbone, Inputs, Tower, first_trainable_block, load_backbone
from clip_hba.models.config import HeadConfig
from clip_hba.models.inputs import eval_mode, map_batches, to_device
from clip_hba.models.precision import full_precision

__all__ = ["BehaviorModel", "base_model"]


class BehaviorModel(nn.Module):
    """Backbone + head: concept inputs -> (B, n_labels) predicted behavioural dimensions.

    Parameters
    ----------
    backbone : Backbone
    labels : sequence of str
        Names of the output dimensions (the 66 SPoSE labels).
    head : HeadConfig
    """

    def __init__(self, backbone: Backbone, labels: Sequence[str], head: HeadConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.backbone_model = backbone.model  # registered, so .to() / .parameters() see it
        self.labels = tuple(labels)
        self.head_config = head
        self.linear: nn.Linear | None = None
        self._label_inputs: Inputs | None = None
        self._label_hidden: tuple[int, torch.Tensor] | None = None  # (block, hidden states)
        self._frozen_label_features: torch.Tensor | None = None
        if head.kind == "linear":
            self.linear = nn.Linear(backbone.concept_tower.feature_dim, len(self.labels))
        elif backbone.label_tower is None:
            raise InputError(
                f"The prompt-cosine head needs a text tower; {backbone.name_or_path} has none. "
                "Use the linear head (--head linear)."
            )
        else:
            prompts = [head.template.format(label=label) for label in self.labels]
            self._label_inputs = backbone.tokenize(prompts)

    @property
    def device(self) -> torch.device:
        return next(self.backbone_model.parameters()).device

    @property
    def concept_tower(self) -> Tower:
        return self.backbone.concept_tower

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def label_features(self) -> torch.Tensor:
        """Label prompt features, shape (n_labels, P).

        Computed once while the label tower is frozen; otherwise recomputed on every call from
        the cached hidden states entering its first trainable block.
        """
        tower = self.backbone.label_tower
        assert tower is not None and self._label_inputs is not None
        start = first_trainable_block(tower)
        if start == tower.n_blocks:
            if self._frozen_label_features is None:
                with torch.no_grad():  # float32, whatever autocast the first call ran in
                    features = tower(to_device(self._label_inputs, self.device))
                    self._frozen_label_features = full_precision(features)
            return self._frozen_label_features
        inputs = to_device(self._label_inputs, self.device)
        if self._label_hidden is None or self._label_hidden[0] != start:
            with torch.no_grad():
                self._label_hidden = (start, full_precision(tower.hidden_at(inputs, start)))
        return tower.features_from(self._label_hidden[1], inputs, start)

    def reset_caches(self) -> None:
        """Forget cached label features (after loading other weights)."""
        self._label_hidden = None
        self._frozen_label_features = None

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Behavioural dimensions from concept features (B, P) -> (B, n_labels)."""
        if self.linear is not None:
            return self.linear(features)
        labels = F.normalize(self.label_features(), dim=-1)
        return self.head_config.logit_scale * F.normalize(features, dim=-1) @ labels.T

    def forward(self, inputs: Inputs) -> torch.Tensor:
        """Predictions for raw inputs through every block, shape (B, n_labels)."""
        return self.head(self.concept_tower(inputs))

    def forward_from(self, hidden: torch.Tensor, inputs: Inputs, block: int) -> torch.Tensor:
        """Predictions from hidden states entering ``block`` (the frozen-prefix cache)."""
        return self.head(self.concept_tower.features_from(hidden, inputs, block))

    def predict(
        self,
        inputs: Inputs,
        batch_size: int = 64,
        desc: str | None = None,
        precision: str = "fp32",
    ) -> np.ndarray:
        """Deterministic predictions in eval mode, batch by batch, shape (N, n_labels).

        ``desc`` shows a progress bar with that label; ``precision`` is the format of the
        forward passes (`clip_hba.models.precision`).
        """
        with eval_mode(self):
            values = map_batches(
                self, inputs, batch_size, self.device, desc=desc, precision=precision
            )
        return values.numpy().astype(np.float64)


def base_model(
    name_or_path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    allow_random_init: bool = False,
) -> BehaviorModel:
    """A base model (hub id or folder) with the default prompt-cosine head, in eval mode."""
    backbone = load_backbone(name_or_path, allow_random_init=allow_random_init)
    model = BehaviorModel(backbone, load_spose_labels(data_dir), HeadConfig())
    return model.to(device).eval()
