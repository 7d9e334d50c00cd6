"""Settings of the models, as small dataclasses (no torch: the CLI reads their defaults).

`InputConfig` (where concept inputs come from), `AdapterConfig` (DoRA/LoRA placement),
`HeadConfig` (features -> behavioural dimensions), `MegModelConfig` (the MEG model).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import asdict, dataclass
from typing import Literal

from clip_hba._validation import InputError, check_exemplar, check_option, check_range

__all__ = [
    "GATINGS",
    "LAYER_FEATURES",
    "LEGACY_MEG_MODEL",
    "PRECISIONS",
    "AdapterConfig",
    "HeadConfig",
    "InputConfig",
    "MegModelConfig",
    "absolute_path",
]

LAYER_FEATURES = ("raw", "normed")
# the number format of forward passes (torch autocast): fp32 (none), bfloat16 or float16
PRECISIONS = ("fp32", "bf16", "fp16")
GATINGS = ("richness", "none")
# what runs saved before these settings existed did (their config.json lacks the keys)
LEGACY_MEG_MODEL = {"layer_features": "normed", "gating": "none"}


@dataclass
class InputConfig:
    """Where concept inputs come from."""

    images: str | None = None  # image folder (THINGS layout, or with images.csv / images_csv)
    images_csv: str | None = None  # CSV with columns image,concept_id
    # "first": each concept's first image file by name (THINGS: _01b, else _01s/_02s); "all":
    # every image (a sample each in training, a mean per concept in evaluation); or a suffix
    exemplar: str = "first"
    skip_missing: bool = False  # leave out concepts without an image instead of failing
    normalization: Literal["things", "clip"] = "things"  # per-channel image mean/std
    text_template: str = "{word}: {definition}"  # text backbones: the text of a concept
    max_text_tokens: int = 64

    def __post_init__(self) -> None:
        # absolute, so that a run's inputs are found from any working directory
        self.images = absolute_path(self.images)
        self.images_csv = absolute_path(self.images_csv)
        check_exemplar(self.exemplar)
        try:
            self.text_template.format(word="w", definition="d")
        except (KeyError, IndexError, ValueError):
            raise InputError(
                "Invalid value for 'text_template': it may use {word} and {definition} only, "
                f"got {self.text_template!r}."
            ) from None

    def to_dict(self) -> dict:
        return asdict(self)

    def with_images(
        self,
        images: str | os.PathLike | None = None,
        images_csv: str | os.PathLike | None = None,
    ) -> InputConfig:
        """These settings with another image folder (and CSV), where given.

        A new folder comes without the old folder's image list (``images_csv``), which names
        files of the old folder.
        """
        if images is None and images_csv is None:
            return self
        return dataclasses.replace(
            self,
            images=self.images if images is None else str(images),
            images_csv=None if images_csv is None else str(images_csv),
        )


@dataclass
class AdapterConfig:
    """Where and how to add low-rank adapters.

    Blocks are numbered from 1 (block 1 = the first transformer block, as in ``block_1`` of the
    outputs and Hugging Face's ``hidden_states[1]``); negative numbers count from the end (-1 =
    the last block).
    """

    rank: int = 32  # r of the low-rank update
    alpha: float = 16.0  # lora_alpha; the update is scaled by alpha / rank
    layers: tuple[int, ...] = (-2, -1)  # blocks of the concept tower (CLIP: vision)
    label_layers: tuple[int, ...] = (-1,)  # blocks of the label tower (CLIP: text); () = frozen
    modules: tuple[str, ...] | None = None  # module names inside a block; None = attention output
    use_dora: bool = True  # DoRA (weight-decomposed) instead of plain LoRA
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.layers = tuple(int(i) for i in self.layers)
        self.label_layers = tuple(int(i) for i in self.label_layers)
        self.modules = None if self.modules is None else tuple(self.modules)
        if self.rank < 1:
            raise InputError(
                f"Invalid value for 'rank': expected an integer >= 1, got {self.rank}."
            )
        check_range("alpha", self.alpha, 0, math.inf, low_open=True, high_open=True)
        if not 0 <= self.dropout < 1:
            raise InputError(f"Invalid value for 'dropout': expected [0, 1), got {self.dropout}.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HeadConfig:
    """How backbone features become behavioural dimensions."""

    kind: Literal["prompt_cosine", "linear"] = "prompt_cosine"  # linear: features -> 66
    template: str = "{label}"  # prompt of a dimension label, e.g. "a photo of something {label}"
    logit_scale: float = 100.0  # prompt_cosine: output = logit_scale * cos(concept, label)

    def __post_init__(self) -> None:
        check_option("head", self.kind, ("prompt_cosine", "linear"))
        check_range("logit_scale", self.logit_scale, 0, math.inf, low_open=True, high_open=True)
        if "{label}" not in self.template:
            raise InputError(
                f"The prompt template must contain '{{label}}', got {self.template!r}."
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MegModelConfig:
    """Architecture settings of a CLIP-HBA-MEG model."""

    window: int = 3  # layer weights are smoothed over +-window timepoints (3 = +-15 ms at 5 ms)
    noise: bool = True  # noise injection while training
    noise_scale: float = 1.0  # multiplies the noise curve
    logit_scale: float = 100.0  # prompt-cosine head: logit_scale x cos(feature, label)
    dimension_gains: bool = False  # learn one gain per output dimension (a personal weighting)
    # raw: each block's pooled token x projection without the final norm (the reference's);
    # normed: through the final norm first (so the last block equals the behaviour model)
    layer_features: Literal["raw", "normed"] = "raw"
    # richness: the model RDM at time t is scaled by the targets' mean dissimilarity at t
    # (min-max scaled, zero before 0 ms: no structure before onset); none: unscaled
    gating: Literal["richness", "none"] = "richness"

    def __post_init__(self) -> None:
        check_option("layer_features", self.layer_features, LAYER_FEATURES)
        check_option("gating", self.gating, GATINGS)
        check_range("logit_scale", self.logit_scale, 0, math.inf, low_open=True, high_open=True)
        if self.window < 0:
            raise InputError(f"Invalid value for 'window': expected >= 0, got {self.window}.")
        if self.noise_scale < 0:
            raise InputError(
                f"Invalid value for 'noise_scale': expected >= 0, got {self.noise_scale}."
            )

    def to_dict(self) -> dict:
        return asdict(self)


def absolute_path(path: str | os.PathLike | None) -> str | None:
    """``path`` made absolute (``~`` expanded, not resolving links), or None."""
    return None if path is None else os.path.abspath(os.path.expanduser(os.fspath(path)))
