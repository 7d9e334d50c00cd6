"""CLIP-HBA-MEG training: group and individualized models of time-resolved MEG RDMs.

One path. Load the base model and the chain of runs it starts from (a behaviour run, or a MEG
run for individualized models), merging their adapters into the weights, and freeze the label
embeddings. Split the store's concepts (held-out, validation, training), read the targets
(participants' mean or one participant, over a time window) and rescale them to [0, 1] on the
training concepts, from which the noise curves also come. Then:

- stage 0: the backbone is frozen, so every block's pooled feature of every concept is computed
  once; only the layer weights W (and, with ``meg.dimension_gains``, the dimension gains)
  train (AdamW, ``stage0_lr``) until the validation loss stops improving;
- stage 1: the best stage-0 state is reloaded, DoRA adapters are added to every block, and W
  (and gains; ``stage0_lr``) and the adapters (``stage1_lr``) train together.

The loss per batch of concepts compares the model's (T, pairs) RDMs with the targets:
``(1 - r)`` averaged over timepoints + 0.1 x MSE + 0.15 x ``(1 - r)`` between the two temporal
generalisation matrices, each term divided by its value at the initial validation pass.
Every epoch is logged and checkpointed; ``resume`` continues exactly where a run stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clip_hba import __version__
from clip_hba._io import write_atomic, write_json_atomic
from clip_hba._validation import InputError
from clip_hba.adapters import (
    AdapterConfig,
    adapter_state,
    add_adapters,
    load_adapter_state,
    merge_adapters,
)
from clip_hba.backbones import Backbone, load_backbone
from clip_hba.checkpoints import (
    CONFIG_FILE,
    LAST_FILE,
    LOG_FILE,
    METRICS_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    load_metadata,
    load_tensors,
    optimizer_from_tensors,
    optimizer_tensors,
    read_json,
    save_tensors,
)
from clip_hba.inputs import ConceptInputs, InputConfig, concept_inputs
from clip_hba.meg import RDMStore
from clip_hba.meg_model import (
    MegModel,
    MegModelConfig,
    NoiseCurves,
    noise_curves,
    relative_gains,
)
from clip_hba.models import BehaviorModel, HeadConfig, select_inputs, to_device
from clip_hba.rsa import pair_index
from clip_hba.things import load_rdm48, load_spose_labels
from clip_hba.train import resolve_device

__all__ = ["MegFitConfig", "MegFitResult", "fit_meg", "load_meg_run", "meg_loss", "meg_split"]

logger = logging.getLogger(__name__)

LOSS_TERMS = ("rdm", "mse", "tg")


@dataclass
class MegFitConfig:
    """Everything that defines a CLIP-HBA-MEG run (saved as the run's config.json)."""

    store: str  # MEG RDM store (.h5)
    model: str  # base model: hub id or local directory
    out: str  # run directory
    inputs: InputConfig = field(default_factory=InputConfig)
    init_behavior: str | None = None  # CLIP-HBA-Behavior run to start from (and take labels)
    init_meg: str | None = None  # a MEG run to start from (individualized: the group run)
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
    weight_decay: float = 0.0
    loss_weights: tuple[float, float, float] = (1.0, 0.1, 0.15)  # rdm, mse, tg
    seed: int = 0
    val_fraction: float = 0.2  # of the non-held-out concepts
    test_fraction: float = 0.2  # held out (the 48 RDM concepts first, when present)
    max_concepts: int | None = None  # use only this many of the store's concepts (quick runs)
    time_budget_s: float | None = None  # stop training (either stage) after this many seconds
    device: str = "auto"
    data_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("store", "model", "init_behavior", "init_meg"):
            value = getattr(self, name)
            if value is not None and Path(value).exists():
                setattr(self, name, str(Path(value).resolve()))
        if isinstance(self.inputs, dict):
            self.inputs = InputConfig(**self.inputs)
        if isinstance(self.meg, dict):
            self.meg = MegModelConfig(**self.meg)
        if isinstance(self.adapter, dict):
            self.adapter = AdapterConfig(**self.adapter)
        if self.time_window is not None:
            self.time_window = tuple(float(v) for v in self.time_window)
        self.loss_weights = tuple(float(v) for v in self.loss_weights)
        if self.init_behavior and self.init_meg:
            raise InputError("Start from a behaviour run or a MEG run, not both.")
        for name in ("batch_size", "patience", "stage0_epochs"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"Invalid value for {name!r}: expected >= 1.")
        if self.batch_size < 3:
            raise InputError("Invalid value for 'batch_size': RDMs need at least 3 concepts.")
        if not (self.stage0_lr > 0 and self.stage1_lr > 0):
            raise InputError("Learning rates must be > 0.")
        weights = self.loss_weights
        if len(weights) != 3 or not all(math.isfinite(w) and w >= 0 for w in weights):
            raise InputError(
                f"Invalid value for 'loss_weights': expected 3 non-negative numbers (rdm, mse, "
                f"tg), got {weights}."
            )
        if sum(weights) == 0:
            raise InputError("Invalid value for 'loss_weights': at least one must be > 0.")
        for name in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise InputError(f"Invalid value for {name!r}: expected in (0, 1).")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> MegFitConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class MegFitResult:
    """What `fit_meg` produced."""

    run_dir: Path
    best_stage: int
    best_val_loss: float
    log: list[dict]
    model: MegModel = field(repr=False)


# ---------------------------------------------------------------------------- data


@dataclass
class MegSplit:
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    test_ids: tuple[str, ...]


def meg_split(
    concept_ids: list[str], seed: int, val_fraction: float, test_fraction: float
) -> MegSplit:
    """Seeded held-out / validation / training split of a store's concepts.

    The held-out set takes the 48 concepts of the behavioural RDM first (when present), then
    random others, up to ``test_fraction``; the rest splits ``val_fraction`` / training.
    """
    rng = np.random.default_rng(seed)
    n_test = max(3, round(test_fraction * len(concept_ids)))
    rdm48 = set(load_rdm48().concept_ids)
    first = [c for c in concept_ids if c in rdm48][:n_test]
    others = [c for c in concept_ids if c not in set(first)]
    order = [others[k] for k in rng.permutation(len(others))]
    test = first + order[: n_test - len(first)]
    rest = order[n_test - len(first) :]
    n_val = max(3, round(val_fraction * len(rest)))
    if len(rest) - n_val < 3:
        raise InputError(
            f"{len(concept_ids)} concepts are too few to hold out {n_test}, validate on {n_val} "
            "and train on at least 3."
        )
    keep = {c: k for k, c in enumerate(concept_ids)}
    return MegSplit(
        tuple(sorted(rest[n_val:], key=keep.get)),
        tuple(sorted(rest[:n_val], key=keep.get)),
        tuple(sorted(test, key=keep.get)),
    )


def _targets(
    config: MegFitConfig, concept_ids: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """MEG RDMs (T, pairs) over ``concept_ids`` (train then val), times, and participants."""
    with RDMStore(config.store) as store:
        if config.participant is not None:
            read = store.read(config.time_window, concept_ids, [config.participant])
            return read.values[0], read.times_ms, [config.participant]
        rows = store.participant_indices(config.participants, config.exclude_participants)
        mean = store.mean(
            config.time_window, concept_ids, config.participants, config.exclude_participants
        )
        return mean.values, mean.times_ms, [store.participant_ids[r] for r in rows]


def _pairs_among(rows: np.ndarray, n: int) -> np.ndarray:
    i, j = np.triu_indices(len(rows), k=1)
    return pair_index(rows[i], rows[j], n)


# ---------------------------------------------------------------------------- loss


def _masked_pearson(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pearson r along the last axis over ``mask`` (rows of a, b: (..., n)) -> (...)."""
    weight = mask.to(a.dtype)
    count = weight.sum(-1, keepdim=True).clamp_min(1.0)
    a = torch.where(mask, a, 0.0)
    b = torch.where(mask, b, 0.0)
    ac = (a - (a * weight).sum(-1, keepdim=True) / count) * weight
    bc = (b - (b * weight).sum(-1, keepdim=True) / count) * weight
    return (ac * bc).sum(-1) / (ac.norm(dim=-1) * bc.norm(dim=-1)).clamp_min(1e-12)


def _generalisation(rdms: torch.Tensor) -> torch.Tensor:
    """Temporal generalisation: Pearson r between the RDMs of every two timepoints, (T, T)."""
    centred = rdms - rdms.mean(-1, keepdim=True)
    unit = centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


def meg_loss(
    predicted: torch.Tensor,
    target: torch.Tensor,
    weights: tuple[float, float, float] = (1.0, 0.1, 0.15),
    norms: dict[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The MEG loss between model RDMs and target RDMs, both (T, n_pairs).

    Terms: ``rdm`` = mean over timepoints of (1 - Pearson r); ``mse`` = mean squared error of
    the model's RDM / 2 (1 - Pearson lies in [0, 2]) against the target (rescaled to [0, 1]);
    ``tg`` = 1 - Pearson r between the upper triangles of the two temporal-generalisation
    matrices. NaN target pairs are left out. With ``norms`` each term is divided by its norm.

    Returns
    -------
    total : Tensor (scalar)
    parts : dict term -> float (the raw, unnormalised values)
    """
    mask = ~torch.isnan(target)
    target = torch.nan_to_num(target)
    rdm_term = (1.0 - _masked_pearson(predicted, target, mask)).mean()
    weight = mask.to(predicted.dtype)
    mse_term = (((predicted / 2.0 - target) ** 2) * weight).sum() / weight.sum().clamp_min(1.0)
    complete = mask.all(0)
    n_times = predicted.shape[0]
    if n_times > 2 and int(complete.sum()) >= 3:
        upper = torch.triu_indices(n_times, n_times, offset=1, device=predicted.device)
        tg_model = _generalisation(predicted[:, complete])[upper[0], upper[1]]
        tg_target = _generalisation(target[:, complete])[upper[0], upper[1]]
        tg_term = 1.0 - _masked_pearson(tg_model, tg_target, torch.ones_like(tg_model).bool())
    else:
        tg_term = predicted.new_zeros(())
    terms = {"rdm": rdm_term, "mse": mse_term, "tg": tg_term}
    norms = norms or {}
    total = sum(
        w * terms[name] / max(norms.get(name, 1.0), 1e-12)
        for w, name in zip(weights, LOSS_TERMS, strict=True)
    )
    return total, {name: float(value.detach()) for name, value in terms.items()}


# ---------------------------------------------------------------------------- building


def _behavior_run_chain(run_dir: Path) -> tuple[list[dict], dict[str, torch.Tensor], HeadConfig]:
    from clip_hba.train import run_config

    config = run_config(run_dir)
    tensors = load_tensors(run_dir / WEIGHTS_FILE)
    adapters = {k[len("adapter.") :]: v for k, v in tensors.items() if k.startswith("adapter.")}
    chain = [{"adapter": config.adapter.to_dict(), "source": str(run_dir)}]
    return chain, {f"init.0.{k}": v for k, v in adapters.items()}, config.head


def _apply_chain(backbone: Backbone, chain: list[dict], tensors: dict[str, torch.Tensor]) -> None:
    """Add, load and merge each ancestor run's adapters, in order."""
    for k, link in enumerate(chain):
        prefix = f"init.{k}."
        state = {n[len(prefix) :]: v for n, v in tensors.items() if n.startswith(prefix)}
        add_adapters(backbone, AdapterConfig(**link["adapter"]), seed=0)
        load_adapter_state(backbone, state)
        merge_adapters(backbone)


def _label_features(backbone: Backbone, head: HeadConfig, data_dir: str | None) -> torch.Tensor:
    model = BehaviorModel(backbone, load_spose_labels(data_dir), head).eval()
    with torch.no_grad():
        return model.label_features().detach().clone()


@dataclass
class _Start:
    """What a new run starts from: merged ancestors, label embeddings, initial W and gains."""

    chain: list[dict]
    chain_tensors: dict[str, torch.Tensor]
    label_features: torch.Tensor
    head: dict[str, torch.Tensor] | None  # the parent MEG run's "meg.layer_weights_raw", ...


def _start_point(config: MegFitConfig, backbone: Backbone) -> _Start:
    if config.init_meg is not None:
        run = Path(config.init_meg)
        saved = read_json(run / CONFIG_FILE)
        if saved.get("task") != "meg":
            raise InputError(f"{run} is not a clip-hba MEG run (--init-meg).")
        if saved["fit"]["model"] != config.model:
            raise InputError(
                f"{run} was trained from {saved['fit']['model']}, not from {config.model}."
            )
        tensors = load_tensors(run / WEIGHTS_FILE)
        chain = list(saved["chain"])
        chain_tensors = {k: v for k, v in tensors.items() if k.startswith("init.")}
        own = {k[len("adapter.") :]: v for k, v in tensors.items() if k.startswith("adapter.")}
        if own:
            k = len(chain)
            chain.append({"adapter": saved["fit"]["adapter_resolved"], "source": str(run)})
            chain_tensors.update({f"init.{k}.{n}": v for n, v in own.items()})
        _apply_chain(backbone, chain, chain_tensors)
        return _Start(chain, chain_tensors, tensors["meg.label_features"], tensors)
    if config.init_behavior is not None:
        run = Path(config.init_behavior)
        if read_json(run / CONFIG_FILE).get("task") != "behavior":
            raise InputError(f"{run} is not a clip-hba behaviour run (--init-behavior).")
        chain, chain_tensors, head = _behavior_run_chain(run)
        add_adapters(backbone, AdapterConfig(**chain[0]["adapter"]), seed=0)
        load_adapter_state(backbone, {k[len("init.0.") :]: v for k, v in chain_tensors.items()})
        labels = _label_features(backbone, head, config.data_dir)  # the behaviour model's
        merge_adapters(backbone)
        return _Start(chain, chain_tensors, labels, None)
    return _Start([], {}, _label_features(backbone, HeadConfig(), config.data_dir), None)


def _resolved_adapter(config: MegFitConfig, backbone: Backbone) -> AdapterConfig:
    layers = config.adapter.layers or tuple(range(backbone.concept_tower.n_blocks))
    return dataclasses.replace(config.adapter, layers=layers, label_layers=())


def load_meg_run(run_dir: str | Path, device: str = "auto") -> MegModel:
    """The best model of a MEG run, in eval mode (noise off)."""
    run_dir = Path(run_dir)
    saved = read_json(run_dir / CONFIG_FILE)
    if saved.get("task") != "meg":
        raise InputError(f"{run_dir} is not a clip-hba MEG run.")
    config = MegFitConfig.from_dict(saved["fit"])
    tensors = load_tensors(run_dir / WEIGHTS_FILE)
    backbone = load_backbone(config.model)
    _apply_chain(backbone, saved["chain"], tensors)
    own = {k[len("adapter.") :]: v for k, v in tensors.items() if k.startswith("adapter.")}
    if own:
        add_adapters(backbone, AdapterConfig(**saved["fit"]["adapter_resolved"]), seed=0)
        load_adapter_state(backbone, own)
    curves = NoiseCurves(tensors["meg.beta"].numpy(), tensors["meg.noise"].numpy())
    model = MegModel(
        backbone, tensors["meg.label_features"], np.array(saved["times_ms"]), config.meg, curves
    )
    _load_head(model, tensors)
    return model.to(resolve_device(device)).eval()


def _load_head(model: MegModel, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved layer weights W (and dimension gains, absent in older runs) into ``model``."""
    with torch.no_grad():
        model.weights.raw.copy_(tensors["meg.layer_weights_raw"])
        if "meg.log_gains" in tensors:
            model.log_gains.copy_(tensors["meg.log_gains"])


# ---------------------------------------------------------------------------- the run


@dataclass
class _Run:
    config: MegFitConfig
    run_dir: Path
    model: MegModel
    inputs: ConceptInputs  # train, val, test concepts in that order
    n_train: int
    n_val: int
    target: torch.Tensor  # (T, pairs among train + val), rescaled
    features: torch.Tensor | None  # stage 0 cache: (L, n_concepts, P)
    chain_tensors: dict[str, torch.Tensor]
    generator: torch.Generator
    optimizer: torch.optim.Optimizer | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    log: list[dict] = field(default_factory=list)
    description: dict[str, Any] = field(default_factory=dict)  # config.json besides "fit"


def fit_meg(config: MegFitConfig, *, resume: bool = False, verbose: bool = True) -> MegFitResult:
    """Train a CLIP-HBA-MEG model (group, or one participant); see `MegFitConfig`."""
    run_dir = Path(config.out)
    if resume:
        if not (run_dir / LAST_FILE).is_file():
            raise InputError(f"Nothing to resume in {run_dir}: it holds no {LAST_FILE}.")
        _check_resumable(run_dir, config)
    elif (run_dir / LAST_FILE).exists():
        raise InputError(
            f"{run_dir} already holds a run; use --resume to continue it or another --out."
        )
    run = _build(config, run_dir, verbose)
    if resume:
        _restore(run)
    else:
        _begin(run)
    started = time.perf_counter()
    while run.progress["stage"] <= 1:
        if run.progress["stage"] == 1 and config.stage1_epochs == 0:
            break
        if _stage(run, verbose, started):  # out of time
            break
    _finish(run)
    return MegFitResult(
        run_dir,
        run.progress["best_stage"],
        run.progress["best_val_loss"],
        run.log,
        load_meg_run(run_dir, config.device),
    )


def _build(config: MegFitConfig, run_dir: Path, verbose: bool) -> _Run:
    backbone = load_backbone(config.model)
    start = _start_point(config, backbone)
    with RDMStore(config.store) as store:
        available = list(store.concept_ids)
    present = _concepts_with_inputs(backbone, available, config)
    if config.max_concepts is not None:
        present = present[: config.max_concepts]
    split = meg_split(present, config.seed, config.val_fraction, config.test_fraction)
    if config.init_meg is not None:  # its W and adapters must not have seen our held-out set
        parent = read_json(Path(config.init_meg) / CONFIG_FILE)["split"]["test"]
        if set(parent) != set(split.test_ids):
            raise InputError(
                f"{config.init_meg} holds out other concepts than this run would; use the same "
                "store, --seed, --val-fraction, --test-fraction and --max-concepts as that run."
            )
    ordered = [*split.train_ids, *split.val_ids, *split.test_ids]
    inputs = concept_inputs(
        backbone, ordered, config.inputs, config.data_dir, things_ids_only=False
    )
    values, times, participants = _targets(config, [*split.train_ids, *split.val_ids])
    n_train, n_val = len(split.train_ids), len(split.val_ids)
    n_fit = n_train + n_val
    train_pairs = _pairs_among(np.arange(n_train), n_fit)
    low, high = np.nanmin(values[:, train_pairs]), np.nanmax(values[:, train_pairs])
    if not high > low:
        raise InputError("The training targets are constant; nothing to fit.")
    scaled = (values - low) / (high - low)
    curves = noise_curves(scaled[:, train_pairs], times, config.meg.window)
    device = resolve_device(config.device)
    model = MegModel(backbone, start.label_features, times, config.meg, curves).to(device)
    if start.head is not None:
        layer_raw = start.head["meg.layer_weights_raw"]
        if layer_raw.shape != model.weights.raw.shape:
            raise InputError(
                f"{config.init_meg} has layer weights for {tuple(layer_raw.shape)} "
                f"(times x layers), this run needs {tuple(model.weights.raw.shape)}."
            )
        _load_head(model, start.head)
    for p in model.backbone_model.parameters():
        p.requires_grad = False
    model.eval()
    run = _Run(
        config,
        run_dir,
        model,
        inputs,
        n_train,
        n_val,
        torch.as_tensor(scaled, dtype=torch.float32),
        None,
        start.chain_tensors,
        torch.Generator().manual_seed(config.seed),
    )
    run.progress = {
        "stage": 0,
        "epoch": 0,
        "best_val_loss": float("inf"),
        "best_stage": 0,
        "best_epoch": 0,
        "bad_epochs": 0,
        "norms": None,
    }
    run.description = {
        "clip_hba_version": __version__,
        "task": "meg",
        "base_model": config.model,
        "chain": start.chain,
        "times_ms": times.tolist(),
        "target": {
            "participants": participants,
            "scale": [float(low), float(high)],
            "participant": config.participant,
        },
        "split": {
            "train": list(split.train_ids),
            "val": list(split.val_ids),
            "test": list(split.test_ids),
        },
        "inputs_fingerprint": inputs.fingerprint,
        "n_layers": model.n_layers,
    }
    run.features = _feature_cache(run, verbose)
    return run


def _concepts_with_inputs(backbone: Backbone, available: list[str], config: MegFitConfig) -> list:
    """The store's concepts that have an image (image models) or a THINGS text (text models)."""
    from clip_hba.images import find_images
    from clip_hba.things import load_concepts

    if backbone.kind in ("clip", "vision"):
        if config.inputs.images is None:
            raise InputError("An image backbone needs concept images: give --images.")
        found = find_images(
            config.inputs.images,
            available,
            csv_path=config.inputs.images_csv,
            exemplar=config.inputs.exemplar,
            skip_missing=True,
        )
        with_inputs = set(found.concept_ids)
    else:
        with_inputs = set(load_concepts(config.data_dir).ids)
    present = [c for c in available if c in with_inputs]
    if len(present) < len(available):
        logger.warning(
            "%d of the store's concepts have no inputs and are left out.",
            len(available) - len(present),
        )
    return present


def _feature_cache(run: _Run, verbose: bool) -> torch.Tensor:
    """Every block's pooled feature of every concept with the frozen backbone, (L, N, P)."""
    parts = []
    n = len(run.inputs)
    batches = range(0, n, run.config.batch_size)
    with torch.no_grad():
        for start in tqdm(batches, desc="Layer features", disable=not verbose, leave=False):
            rows = range(start, min(start + run.config.batch_size, n))
            batch = to_device(select_inputs(run.inputs.tensors, rows), run.model.device)
            parts.append(run.model.layer_features(batch))
    return torch.cat(parts, dim=1)


def _begin(run: _Run) -> None:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    fit = run.config.to_dict()
    fit["adapter_resolved"] = _resolved_adapter(run.config, run.model.backbone).to_dict()
    write_json_atomic(run.run_dir / CONFIG_FILE, {**run.description, "fit": fit})
    run.optimizer = _optimizer(run, stage=0)
    record = _validate(run, epoch=0, stage=0, train_loss=None, norms=None)
    run.progress["norms"] = record["val_parts"]
    record = _validate(run, epoch=0, stage=0, train_loss=None, norms=run.progress["norms"])
    run.log.append(record)
    run.progress["best_val_loss"] = record["val_loss"]
    save_tensors(run.run_dir / WEIGHTS_FILE, _weights(run))
    _save_last(run)


def _optimizer(run: _Run, stage: int) -> torch.optim.Optimizer:
    head = [run.model.weights.raw]
    if run.config.meg.dimension_gains:
        head.append(run.model.log_gains)
    groups = [{"params": head, "lr": run.config.stage0_lr}]
    if stage == 1:
        adapters = [p for p in run.model.backbone_model.parameters() if p.requires_grad]
        groups.append({"params": adapters, "lr": run.config.stage1_lr})
    return torch.optim.AdamW(groups, weight_decay=run.config.weight_decay)


def _enter_stage1(run: _Run) -> None:
    """Reload the best stage-0 W and add the DoRA adapters (seeded)."""
    _load_head(run.model, load_tensors(run.run_dir / WEIGHTS_FILE))
    add_adapters(
        run.model.backbone, _resolved_adapter(run.config, run.model.backbone), seed=run.config.seed
    )
    run.model.to(run.model.device).eval()
    run.features = None  # stage 1 recomputes the features: the backbone now changes


def _stage(run: _Run, verbose: bool, started: float) -> bool:
    """Train one stage to its end (then move to the next); True if the time budget ran out."""
    config, progress = run.config, run.progress
    stage = progress["stage"]
    if stage == 1 and run.optimizer is None:
        _enter_stage1(run)
        run.optimizer = _optimizer(run, stage=1)
    max_epochs = config.stage0_epochs if stage == 0 else config.stage1_epochs
    bar = tqdm(
        range(progress["epoch"] + 1, max_epochs + 1),
        desc=f"Stage {stage}",
        disable=not verbose,
        initial=progress["epoch"],
        total=max_epochs,
    )
    with bar:
        for epoch in bar:
            if progress["bad_epochs"] >= config.patience:
                break
            train_loss = _train_epoch(run, stage)
            record = _validate(run, epoch, stage, train_loss, progress["norms"])
            run.log.append(record)
            progress["epoch"] = epoch
            if record["val_loss"] < progress["best_val_loss"]:
                progress.update(
                    best_val_loss=record["val_loss"],
                    best_stage=stage,
                    best_epoch=epoch,
                    bad_epochs=0,
                )
                save_tensors(run.run_dir / WEIGHTS_FILE, _weights(run))
            else:
                progress["bad_epochs"] += 1
            bar.set_postfix(
                train=f"{train_loss:.3f}",
                val=f"{record['val_loss']:.3f}",
                r=f"{record['val_r']:.3f}",
            )
            _save_last(run)
            budget = config.time_budget_s
            if budget is not None and time.perf_counter() - started > budget:
                logger.info("Time budget of %.0f s reached in stage %d.", budget, stage)
                return True
    progress.update(stage=stage + 1, epoch=0, bad_epochs=0)
    run.optimizer = None
    _save_last(run)
    return False


def _batch_embeddings(run: _Run, rows: torch.Tensor, noise: bool) -> torch.Tensor:
    if run.features is not None:
        features = run.features[:, rows]
    else:
        batch = to_device(select_inputs(run.inputs.tensors, rows), run.model.device)
        features = run.model.layer_features(batch)
    generator = run.generator if noise else None
    return run.model.embed_features(features, noise=noise, generator=generator)


def _target_for(run: _Run, rows: torch.Tensor) -> torch.Tensor:
    pairs = _pairs_among(rows.numpy(), run.n_train + run.n_val)
    return run.target[:, pairs].to(run.model.device)


def _train_epoch(run: _Run, stage: int) -> float:
    order = torch.randperm(run.n_train, generator=run.generator)
    total, count = 0.0, 0
    for start in range(0, run.n_train, run.config.batch_size):
        rows = order[start : start + run.config.batch_size]
        if len(rows) < 3:
            continue
        rows = rows.sort().values
        predicted = MegModel.rdms(_batch_embeddings(run, rows, noise=True))
        loss, _ = meg_loss(
            predicted, _target_for(run, rows), run.config.loss_weights, run.progress["norms"]
        )
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.model.weights.project()
        total += loss.item() * len(rows)
        count += len(rows)
    return total / max(count, 1)


def _validate(
    run: _Run, epoch: int, stage: int, train_loss: float | None, norms: dict | None
) -> dict:
    """Validation loss over all validation concepts at once, noise off."""
    rows = torch.arange(run.n_train, run.n_train + run.n_val)
    with torch.no_grad():
        predicted = MegModel.rdms(_batch_embeddings(run, rows, noise=False))
        target = _target_for(run, rows)
        loss, parts = meg_loss(predicted, target, run.config.loss_weights, norms)
    return {
        "stage": stage,
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": float(loss),
        "val_parts": parts,
        "val_r": 1.0 - parts["rdm"],  # mean over timepoints of the validation RDM correlation
    }


def _weights(run: _Run) -> dict[str, torch.Tensor]:
    tensors = dict(run.chain_tensors)
    tensors.update({f"adapter.{k}": v for k, v in adapter_state(run.model.backbone).items()})
    tensors["meg.layer_weights_raw"] = run.model.weights.raw.detach().cpu().clone()
    tensors["meg.log_gains"] = run.model.log_gains.detach().cpu().clone()
    tensors["meg.label_features"] = run.model.label_features.cpu().clone()
    tensors["meg.beta"] = run.model.beta.cpu().clone()
    tensors["meg.noise"] = run.model.noise.cpu().clone()
    return tensors


def _save_last(run: _Run) -> None:
    tensors = _weights(run)
    groups: list = []
    if run.optimizer is not None:
        optimizer_state, groups = optimizer_tensors(run.optimizer)
        tensors.update(optimizer_state)
    tensors["generator_state"] = run.generator.get_state()
    text = "".join(json.dumps(record) + "\n" for record in run.log)
    write_atomic(run.run_dir / LOG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    save_tensors(run.run_dir / LAST_FILE, tensors, {**run.progress, "param_groups": groups})
    write_json_atomic(run.run_dir / STATE_FILE, run.progress)


def _restore(run: _Run) -> None:
    saved = read_json(run.run_dir / CONFIG_FILE)
    if saved["inputs_fingerprint"] != run.description["inputs_fingerprint"]:
        raise InputError(f"Cannot resume {run.run_dir}: the concept inputs have changed.")
    state = load_metadata(run.run_dir / LAST_FILE)
    tensors = load_tensors(run.run_dir / LAST_FILE)
    groups = state.pop("param_groups")
    run.progress = state
    stage = state["stage"]
    if stage == 1 and groups:  # in the middle of stage 1: adapters exist
        _enter_stage1(run)
        own = {k[len("adapter.") :]: v for k, v in tensors.items() if k.startswith("adapter.")}
        load_adapter_state(run.model.backbone, own)
    _load_head(run.model, tensors)
    if groups:
        run.optimizer = _optimizer(run, stage)
        optimizer_from_tensors(run.optimizer, tensors, groups)
    elif stage == 0:
        run.optimizer = _optimizer(run, 0)
    run.generator.set_state(tensors["generator_state"])
    lines = (run.run_dir / LOG_FILE).read_text(encoding="utf-8").splitlines()
    run.log = [json.loads(line) for line in lines if line.strip()]
    logger.info("Resuming %s at stage %d after epoch %d", run.run_dir, stage, state["epoch"])


RESUMABLE_CHANGES = {"stage0_epochs", "stage1_epochs", "patience", "time_budget_s", "out"}


def _check_resumable(run_dir: Path, config: MegFitConfig) -> None:
    # through the dataclass, so that settings added since the run began take their defaults
    saved = json.loads(
        json.dumps(MegFitConfig.from_dict(read_json(run_dir / CONFIG_FILE)["fit"]).to_dict())
    )
    current = json.loads(json.dumps(config.to_dict()))
    changed = sorted(
        k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k]
    )
    if changed:
        raise InputError(
            f"Cannot resume {run_dir} with other settings: {', '.join(changed)} differ."
        )


def _finish(run: _Run) -> None:
    progress = run.progress
    metrics = {
        "best_stage": progress["best_stage"],
        "best_epoch": progress["best_epoch"],
        "best_val_loss": progress["best_val_loss"],
        "initial_val_loss": run.log[0]["val_loss"],
        "initial_val_r": run.log[0]["val_r"],
        "best_val_r": next(
            r["val_r"]
            for r in run.log
            if r["stage"] == progress["best_stage"] and r["epoch"] == progress["best_epoch"]
        ),
        "epochs": {
            s: sum(1 for r in run.log if r["stage"] == s and r["epoch"] > 0) for s in (0, 1)
        },
    }
    if run.config.meg.dimension_gains:  # the best model's, by SPoSE label
        gains = relative_gains(load_tensors(run.run_dir / WEIGHTS_FILE)["meg.log_gains"])
        labels = load_spose_labels(run.config.data_dir)
        metrics["dimension_gains"] = dict(zip(labels, gains.tolist(), strict=True))
    write_json_atomic(run.run_dir / METRICS_FILE, metrics)
