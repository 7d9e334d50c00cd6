"""Everything that defines a training run, as dataclasses saved in the run's config.json.

`BehaviorFitConfig` (CLIP-HBA-Behavior) and `MegFitConfig` (CLIP-HBA-MEG, group or one
participant). No torch here: the command line reads the defaults from these classes. Each
config round-trips through JSON (`to_dict` / `from_dict`, unknown keys of newer or older runs
ignored, missing ones taking their defaults) and names the settings a resumed run may change.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from clip_hba._validation import InputError, check_option, check_range, check_type
from clip_hba.models.config import (
    LEGACY_MEG_MODEL,
    PRECISIONS,
    AdapterConfig,
    HeadConfig,
    InputConfig,
    MegModelConfig,
    absolute_path,
)

__all__ = [
    "AUGMENTATIONS",
    "INDIVIDUAL_RANK",
    "LEGACY_MEG_FIT",
    "LOSS_TERMS",
    "MEG_INITS",
    "RDM_CORRELATIONS",
    "TG_TERMS",
    "BehaviorFitConfig",
    "FitConfig",
    "MegFitConfig",
    "option_name",
]

AUGMENTATIONS = ("none", "standard")  # of training images (see clip_hba.data.transforms)
LOSS_TERMS = ("rdm", "mse", "tg")
RDM_CORRELATIONS = ("flat", "per-time")
TG_TERMS = ("row-mean", "matrix")
MEG_INITS = ("behavior", "base")
# what MEG runs saved before these settings existed did (their config.json lacks the keys)
LEGACY_MEG_FIT = {
    "rdm_correlation": "per-time",
    "tg_term": "matrix",
    "freeze_magnitude": False,
    "init": "behavior",
    "improvement_confidence": 0.0,
}
INDIVIDUAL_RANK = 6  # DoRA rank of individualized MEG models (group models: 32)


class _Config:
    """JSON round trip shared by the fit configs."""

    resumable: ClassVar[frozenset[str]] = frozenset()  # settings a resumed run may change

    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict) -> _Config:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in values.items() if k in known})

    def free_to_change(self) -> frozenset[str]:
        """Settings that may differ when this run is resumed (budgets, the path of ``out``, and
        where the base model lies: a resume checks that it is the same model)."""
        return self.resumable | {"out", "model"}


# settings whose command-line option is not "--" + the setting's name with dashes
_OPTIONS = {
    "adapter.label_layers": "--text-layers",
    "adapter.use_dora": "--dora/--no-dora",
    "adapter.dropout": "--adapter-dropout",
    "head.kind": "--head",
    "meg.noise": "--no-noise",
    "init_meg": "--group-run",
    "time_budget_s": "--time-budget",
    "participant": "--participant",
    "exclude_participants": "--exclude-participants",
}


def option_name(key: str) -> str:
    """The command-line option of a setting, flattened (``adapter.rank`` -> ``--rank``) or by
    its own name (``time_budget_s`` -> ``--time-budget``)."""
    if key in _OPTIONS:
        return _OPTIONS[key]
    leaf = key.rsplit(".", 1)[-1]
    return _LEAF_OPTIONS.get(leaf, "--" + leaf.replace("_", "-"))


# the same for names that mean one setting wherever they appear in an error message
_LEAF_OPTIONS = {
    "label_layers": "--text-layers",
    "dropout": "--adapter-dropout",
    "time_budget_s": "--time-budget",
    "init_meg": "--group-run",
    "asymmetry": "--asymmetric",
}


def _local_path(value: str | None) -> str | None:
    """An existing local path made absolute; a hub id (or anything else) unchanged."""
    if value is not None and Path(value).exists():
        return str(Path(value).resolve())
    return value


def _check_at_least(config: object, names: tuple[str, ...], low: int) -> None:
    for name in names:
        value = check_type(name, getattr(config, name), (int, np.integer), "an integer")
        if value < low:
            raise InputError(f"Invalid value for {name!r}: expected >= {low}, got {value}.")


def _check_budget(seconds: float | None) -> None:
    if seconds is not None:
        check_range("time_budget_s", seconds, 0, math.inf, high_open=True)


@dataclass
class BehaviorFitConfig(_Config):
    """Everything that defines a CLIP-HBA-Behavior run (saved as the run's config.json)."""

    model: str  # Hugging Face hub id or local directory of the base model
    out: str  # run directory
    inputs: InputConfig = field(default_factory=InputConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    epochs: int = 500  # maximum number of epochs
    batch_size: int = 64
    lr: float = 3e-4  # AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    patience: int = 20  # stop after this many epochs without a lower validation MSE
    seed: int = 0  # split, adapter initialisation and batch order
    val_fraction: float = 0.2  # share of the 1,806 non-held-out concepts used for validation
    cache: Literal["auto", "memory", "disk", "off"] = "auto"  # frozen-prefix cache
    max_concepts: int | None = None  # use only this many train+val concepts (quick runs)
    data_dir: str | None = None  # THINGS data directory (default: bundled)
    time_budget_s: float | None = None  # a safety stop after this many seconds (best kept)
    train_dropout: bool = False  # dropout of the trainable blocks (and adapters) while training
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: lr -> 0 over `epochs`
    device: str = "auto"  # "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
    allow_random_init: bool = False  # accept a base model whose files lack some weights
    # "standard": seeded random resized crop, flip and colour jitter of training images
    augment: Literal["none", "standard"] = "none"
    # weight L of the geometry term: L x (1 - Pearson r) between the batch's model RDM and
    # target RDM (1 - Pearson of the 66-d rows); 0 = the MSE alone (the paper's)
    rdm_loss_weight: float = 0.0
    # forward passes in float32, or under autocast in bfloat16 / float16 (fp16: loss scaling)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    devices: int = 1  # data-parallel processes (one GPU each on CUDA); see training.distributed

    # allow_random_init: a run begun before the setting existed may take it on resume
    resumable: ClassVar[frozenset[str]] = frozenset(
        {"epochs", "patience", "time_budget_s", "allow_random_init", "device", "devices"}
    )

    def __post_init__(self) -> None:
        if Path(self.model).is_dir():  # a local model: absolute, so the run loads from anywhere
            self.model = str(Path(self.model).resolve())
        self.data_dir = absolute_path(self.data_dir)
        if isinstance(self.inputs, dict):
            self.inputs = InputConfig(**self.inputs)
        if isinstance(self.adapter, dict):
            self.adapter = AdapterConfig(**self.adapter)
        if isinstance(self.head, dict):
            self.head = HeadConfig(**self.head)
        check_option("cache", self.cache, ("auto", "memory", "disk", "off"))
        check_option("lr_schedule", self.lr_schedule, ("constant", "cosine"))
        check_option("augment", self.augment, AUGMENTATIONS)
        check_option("precision", self.precision, PRECISIONS)
        _check_at_least(self, ("seed",), 0)
        check_range("rdm_loss_weight", self.rdm_loss_weight, 0, math.inf, high_open=True)
        check_range("weight_decay", self.weight_decay, 0, math.inf, high_open=True)
        _check_at_least(self, ("epochs", "batch_size", "patience", "devices"), 1)
        check_range("lr", self.lr, 0, math.inf, low_open=True, high_open=True)
        check_range("val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        if self.max_concepts is not None and self.max_concepts < 4:
            raise InputError(
                f"Invalid value for 'max_concepts': expected >= 4, got {self.max_concepts}."
            )
        _check_budget(self.time_budget_s)

    def free_to_change(self) -> frozenset[str]:
        # a cosine schedule spans `epochs`: changing it would change every learning rate
        fixed = {"epochs"} if self.lr_schedule == "cosine" else set()
        return (self.resumable - fixed) | {"out", "model"}


@dataclass
class MegFitConfig(_Config):
    """Everything that defines a CLIP-HBA-MEG run (saved as the run's config.json)."""

    store: str  # MEG RDM store (.h5)
    model: str  # base model: hub id or local directory
    out: str  # run directory
    inputs: InputConfig = field(default_factory=InputConfig)
    init_behavior: str | None = None  # CLIP-HBA-Behavior run to start from (and take labels)
    init_meg: str | None = None  # a MEG run to start from (individualized: the group run)
    # with init_behavior: the concept tower starts as the behaviour model's ("behavior") or as
    # the base model's ("base", the reference's); the label embeddings are the behaviour model's
    init: Literal["behavior", "base"] = "behavior"
    participant: str | None = None  # one participant (individualized model); None: the mean
    participants: list[str] | None = None  # group: participants averaged (None: all)
    exclude_participants: list[str] | None = None
    time_window: tuple[float, float] | None = None  # ms, inclusive; None: all times
    meg: MegModelConfig = field(default_factory=MegModelConfig)
    adapter: AdapterConfig = field(
        default_factory=lambda: AdapterConfig(rank=32, alpha=16.0, layers=(), label_layers=())
    )  # layers () = every block of the concept tower
    stage0_lr: float = 3e-3  # layer weights W (both stages)
    stage1_lr: float = 3e-5  # DoRA adapters (stage 1)
    stage0_epochs: int = 200  # stage 0 runs until early stopping, at most this many epochs
    stage1_epochs: int = 50  # 0: no stage 1
    patience: int = 5
    batch_size: int = 50  # concepts per batch
    weight_decay: float = 0.01  # AdamW
    loss_weights: tuple[float, float, float] = (1.0, 0.1, 0.15)  # rdm, mse, tg
    # flat: one Pearson r over every timepoint and pair together (the reference's); per-time:
    # the mean over timepoints of each timepoint's r
    rdm_correlation: Literal["flat", "per-time"] = "flat"
    # row-mean: 1 - r between the row means of the two temporal-generalisation matrices (the
    # reference's); matrix: 1 - r between their upper triangles
    tg_term: Literal["row-mean", "matrix"] = "row-mean"
    freeze_magnitude: bool = True  # stage 1: DoRA magnitudes stay fixed (the reference's)
    # an epoch beats the best only if its higher validation RSA holds in at least this share
    # of paired bootstrap resamples of the validation concepts (0: any rise, the reference's)
    improvement_confidence: float = 0.95
    seed: int = 0
    val_fraction: float = 0.2  # of the non-held-out concepts
    test_fraction: float = 0.2  # held out (the 48 RDM concepts first, when present)
    max_concepts: int | None = None  # use only this many of the store's concepts (quick runs)
    time_budget_s: float | None = None  # a safety stop (either stage) after this many seconds
    device: str = "auto"
    data_dir: str | None = None
    allow_random_init: bool = False  # accept a base model whose files lack some weights
    # forward passes of the backbone in float32, or under autocast in bfloat16 / float16
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    devices: int = 1  # data-parallel processes (one GPU each on CUDA); see training.distributed

    resumable: ClassVar[frozenset[str]] = frozenset(
        {
            "stage0_epochs",
            "stage1_epochs",
            "patience",
            "time_budget_s",
            "allow_random_init",
            "device",
            "devices",
        }
    )

    def __post_init__(self) -> None:
        for name in ("store", "model", "init_behavior", "init_meg"):
            setattr(self, name, _local_path(getattr(self, name)))
        self.data_dir = absolute_path(self.data_dir)
        if isinstance(self.inputs, dict):
            self.inputs = InputConfig(**self.inputs)
        if isinstance(self.meg, dict):
            self.meg = MegModelConfig(**self.meg)
        if isinstance(self.adapter, dict):
            self.adapter = AdapterConfig(**self.adapter)
        if self.inputs.exemplar == "all":
            raise InputError(
                "Invalid value for 'exemplar': 'all' is for behaviour training; MEG RDMs hold one "
                "response per concept, so give 'first' or a file-name suffix such as '_01b'."
            )
        if self.time_window is not None:
            self.time_window = tuple(float(v) for v in self.time_window)
        self.loss_weights = tuple(float(v) for v in self.loss_weights)
        if self.init_behavior and self.init_meg:
            raise InputError(
                f"Start from a behaviour run or a MEG run, not both (got {self.init_behavior} "
                f"and {self.init_meg})."
            )
        check_option("rdm_correlation", self.rdm_correlation, RDM_CORRELATIONS)
        check_option("tg_term", self.tg_term, TG_TERMS)
        check_option("init", self.init, MEG_INITS)
        check_option("precision", self.precision, PRECISIONS)
        if self.init == "base" and self.init_behavior is None:
            raise InputError(
                "init 'base' takes the behaviour run's label embeddings with the base model's "
                "tower: give --init-behavior too."
            )
        check_range("weight_decay", self.weight_decay, 0, math.inf, high_open=True)
        check_range("improvement_confidence", self.improvement_confidence, 0, 1, high_open=True)
        _check_at_least(self, ("batch_size", "patience", "stage0_epochs", "devices"), 1)
        _check_at_least(self, ("stage1_epochs",), 0)
        if self.batch_size < 3:
            raise InputError(
                f"Invalid value for 'batch_size': RDMs need at least 3 concepts, got "
                f"{self.batch_size}."
            )
        check_range("stage0_lr", self.stage0_lr, 0, math.inf, low_open=True, high_open=True)
        check_range("stage1_lr", self.stage1_lr, 0, math.inf, low_open=True, high_open=True)
        self._check_loss_weights()
        for name in ("val_fraction", "test_fraction"):
            check_range(name, getattr(self, name), 0, 1, low_open=True, high_open=True)
        if self.max_concepts is not None:
            _check_at_least(self, ("max_concepts",), 5)
        _check_budget(self.time_budget_s)

    @classmethod
    def from_dict(cls, values: dict) -> MegFitConfig:
        """A saved config; settings it lacks (older runs) take what those runs did."""
        values = {**LEGACY_MEG_FIT, **values}
        meg = values.get("meg") or {}
        if isinstance(meg, dict):
            values["meg"] = {**LEGACY_MEG_MODEL, **meg}
        return super().from_dict(values)  # type: ignore[return-value]

    def _check_loss_weights(self) -> None:
        weights = self.loss_weights
        if len(weights) != 3 or not all(math.isfinite(w) and w >= 0 for w in weights):
            raise InputError(
                f"Invalid value for 'loss_weights': expected 3 non-negative numbers (rdm, mse, "
                f"tg), got {weights}."
            )
        if sum(weights) == 0:
            raise InputError(
                f"Invalid value for 'loss_weights': at least one must be > 0, got {weights}."
            )


FitConfig = BehaviorFitConfig | MegFitConfig
