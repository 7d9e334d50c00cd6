"""CLIP-HBA models: a backbone tower plus a head that predicts the 66 behavioural dimensions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clip_hba._validation import InputError, check_option
from clip_hba.backbones import Backbone, Inputs, Tower

__all__ = [
    "BehaviorModel",
    "HeadConfig",
    "first_trainable_block",
    "select_inputs",
    "to_device",
    "token_length",
]


@dataclass
class HeadConfig:
    """How backbone features become behavioural dimensions."""

    kind: Literal["prompt_cosine", "linear"] = "prompt_cosine"  # linear: features -> 66
    template: str = "{label}"  # prompt of a dimension label, e.g. "a photo of something {label}"
    logit_scale: float = 100.0  # prompt_cosine: output = logit_scale * cos(concept, label)

    def __post_init__(self) -> None:
        check_option("head", self.kind, ("prompt_cosine", "linear"))
        if "{label}" not in self.template:
            raise InputError(
                f"The prompt template must contain '{{label}}', got {self.template!r}."
            )

    def to_dict(self) -> dict:
        return asdict(self)


def first_trainable_block(tower: Tower) -> int:
    """Number of leading blocks (and so the embedding) with no trainable parameter."""
    for k, block in enumerate(tower.blocks):
        if any(p.requires_grad for p in block.parameters()):
            return k
    return tower.n_blocks


def select_inputs(
    inputs: Inputs, rows: torch.Tensor | np.ndarray | Sequence[int], trim: bool = True
) -> Inputs:
    """The given rows of every input tensor; with ``trim``, without all-padding token columns."""
    index = torch.as_tensor(rows, dtype=torch.long)
    selected = {k: v[index] for k, v in inputs.items()}
    length = token_length(selected) if trim else None
    if length is None:
        return selected
    return {k: v[:, :length] if v.ndim == 2 else v for k, v in selected.items()}


def to_device(inputs: Inputs, device: torch.device | str) -> Inputs:
    """Every input tensor on ``device``."""
    return {k: v.to(device) for k, v in inputs.items()}


def token_length(inputs: Inputs) -> int | None:
    """Number of leading token positions that hold a real token in some row (None: no tokens).

    Padding is masked out of attention and pooling, so dropping columns that are padding in
    every row changes nothing but the work done.
    """
    mask = inputs.get("attention_mask")
    if mask is None or mask.numel() == 0:
        return None
    return int(mask.any(dim=0).nonzero().max()) + 1


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
                with torch.no_grad():
                    self._frozen_label_features = tower(to_device(self._label_inputs, self.device))
            return self._frozen_label_features
        inputs = to_device(self._label_inputs, self.device)
        if self._label_hidden is None or self._label_hidden[0] != start:
            with torch.no_grad():
                self._label_hidden = (start, tower.hidden_at(inputs, start))
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

    @torch.no_grad()
    def predict(self, inputs: Inputs, batch_size: int = 64) -> np.ndarray:
        """Deterministic predictions in eval mode, batch by batch, shape (N, n_labels)."""
        modes = {module: module.training for module in self.modules()}
        self.eval()
        n = len(next(iter(inputs.values())))
        out = [
            self(to_device(select_inputs(inputs, range(i, min(i + batch_size, n))), self.device))
            .cpu()
            .numpy()
            for i in range(0, n, batch_size)
        ]
        for module, training in modes.items():
            module.training = training
        return np.concatenate(out).astype(np.float64)
