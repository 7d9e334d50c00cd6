"""CLIP-HBA-Behavior training: fit a backbone + head to the SPoSE targets, with early stopping.

One path: load the backbone, add adapters, build the concept inputs, cache the frozen prefix,
then train the suffix with AdamW on the MSE to the min-max rescaled SPoSE embedding, evaluating
the validation loss and the held-out 48-object rho after every epoch. The best epoch is saved
atomically; the last epoch (with optimizer and generator state) lets ``resume`` continue a run
exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clip_hba import __version__
from clip_hba._io import write_atomic, write_json_atomic
from clip_hba._validation import InputError, check_option
from clip_hba.adapters import AdapterConfig, adapter_state, add_adapters, load_adapter_state
from clip_hba.backbones import load_backbone
from clip_hba.cache import PrefixCache
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
from clip_hba.embed import save_embedding
from clip_hba.embeddings import ConceptEmbedding
from clip_hba.evaluate import evaluate_behavior
from clip_hba.inputs import ConceptInputs, InputConfig, concept_inputs
from clip_hba.models import (
    BehaviorModel,
    HeadConfig,
    first_trainable_block,
    select_inputs,
    to_device,
    token_length,
)
from clip_hba.rsa import RDM, compare
from clip_hba.things import load_rdm48, load_spose, rescale_minmax, split_concepts

__all__ = ["BehaviorFitConfig", "FitResult", "fit_behavior", "load_run"]

logger = logging.getLogger(__name__)


@dataclass
class BehaviorFitConfig:
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
    time_budget_s: float | None = None  # stop training after this many seconds (best kept)
    train_dropout: bool = False  # dropout of the trainable blocks (and adapters) while training
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: lr -> 0 over `epochs`
    device: str = "auto"  # "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...

    def __post_init__(self) -> None:
        if Path(self.model).is_dir():  # a local model: absolute, so the run loads from anywhere
            self.model = str(Path(self.model).resolve())
        if isinstance(self.inputs, dict):
            self.inputs = InputConfig(**self.inputs)
        if isinstance(self.adapter, dict):
            self.adapter = AdapterConfig(**self.adapter)
        if isinstance(self.head, dict):
            self.head = HeadConfig(**self.head)
        check_option("cache", self.cache, ("auto", "memory", "disk", "off"))
        check_option("lr_schedule", self.lr_schedule, ("constant", "cosine"))
        for name in ("epochs", "batch_size", "patience"):
            if int(getattr(self, name)) < 1:
                raise InputError(
                    f"Invalid value for {name!r}: expected >= 1, got {getattr(self, name)}."
                )
        if not self.lr > 0:
            raise InputError(f"Invalid value for 'lr': expected > 0, got {self.lr}.")
        if self.max_concepts is not None and self.max_concepts < 4:
            raise InputError(
                f"Invalid value for 'max_concepts': expected >= 4, got {self.max_concepts}."
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> BehaviorFitConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class FitResult:
    """What `fit_behavior` produced."""

    run_dir: Path
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    stopped_early: bool
    log: list[dict]
    model: BehaviorModel = field(repr=False)


# ---------------------------------------------------------------------------- building


def resolve_device(device: str) -> torch.device:
    """``"auto"``: the first CUDA device if there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"Invalid value for 'device': {device!r} is not a torch device.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"Invalid value for 'device': {device!r}, but no CUDA device is available."
        )
    return resolved


def build_model(config: BehaviorFitConfig) -> BehaviorModel:
    """Base model + head + adapters, seeded; equal to the base model at step 0."""
    backbone = load_backbone(config.model)
    labels = load_spose(config.data_dir).dim_labels
    torch.manual_seed(config.seed)
    model = BehaviorModel(backbone, labels, config.head)
    add_adapters(backbone, config.adapter, seed=config.seed)
    return model.to(resolve_device(config.device)).eval()  # peft adds modules in train mode


def load_run(run_dir: str | Path, device: str = "auto") -> BehaviorModel:
    """The best model of a finished (or interrupted) run, in eval mode."""
    config = run_config(run_dir)
    config.device = device
    model = build_model(config)
    _load_weights(model, load_tensors(Path(run_dir) / WEIGHTS_FILE))
    return model.eval()


def run_config(run_dir: str | Path) -> BehaviorFitConfig:
    """The resolved configuration a run was trained with."""
    return BehaviorFitConfig.from_dict(read_json(Path(run_dir) / CONFIG_FILE)["fit"])


def _weights(model: BehaviorModel) -> dict[str, torch.Tensor]:
    tensors = {f"adapter.{k}": v for k, v in adapter_state(model.backbone).items()}
    if model.linear is not None:
        tensors.update(
            {f"head.{k}": v.detach().clone() for k, v in model.linear.state_dict().items()}
        )
    return tensors


def _load_weights(model: BehaviorModel, tensors: dict[str, torch.Tensor]) -> None:
    adapters = {k[len("adapter.") :]: v for k, v in tensors.items() if k.startswith("adapter.")}
    load_adapter_state(model.backbone, adapters)
    if model.linear is not None:
        model.linear.load_state_dict(
            {k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")}
        )
    model.reset_caches()


# ---------------------------------------------------------------------------- training


class _Batches:
    """Forward passes over concept rows, through the frozen-prefix cache or the whole model."""

    def __init__(
        self, model: BehaviorModel, inputs: ConceptInputs, cache: PrefixCache | None
    ) -> None:
        self.model, self.inputs, self.cache = model, inputs, cache

    def predict(self, rows: torch.Tensor) -> torch.Tensor:
        """Predictions for input rows (on the CPU), shape (len(rows), n_labels), on the device."""
        device = self.model.device
        if self.cache is None:
            return self.model(to_device(select_inputs(self.inputs.tensors, rows), device))
        aux = select_inputs(self.inputs.aux, rows)
        hidden = self.cache.hidden(rows)
        length = token_length(aux)
        if length is not None:
            hidden = hidden[:, :length]
        return self.model.forward_from(hidden.to(device), to_device(aux, device), self.cache.block)

    @torch.no_grad()
    def predict_all(self, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Predictions for many rows, batch by batch, without gradients, on the CPU."""
        parts = [
            self.predict(rows[i : i + batch_size]).cpu() for i in range(0, len(rows), batch_size)
        ]
        return torch.cat(parts)


def fit_behavior(
    config: BehaviorFitConfig, *, resume: bool = False, verbose: bool = True
) -> FitResult:
    """Train a CLIP-HBA-Behavior model; see `BehaviorFitConfig` for every setting.

    Parameters
    ----------
    config : BehaviorFitConfig
    resume : bool
        Continue the run in ``config.out`` from its last finished epoch (its saved config must
        match ``config`` except for ``epochs``, ``patience`` and ``time_budget_s``); the result
        is identical to a run that was never interrupted.
    verbose : bool
        Show progress bars.

    Returns
    -------
    FitResult
    """
    run_dir = Path(config.out)
    if resume:
        _check_resumable(run_dir, config)
    elif (run_dir / LAST_FILE).exists():
        raise InputError(
            f"{run_dir} already holds a run; use --resume to continue it or another --out."
        )
    model = build_model(config)
    inputs, rows, target = _training_data(model, config)
    cache = None
    if config.cache != "off":
        cache = PrefixCache.build(
            model.concept_tower,
            first_trainable_block(model.concept_tower),
            inputs,
            mode=config.cache,
            directory=run_dir / "cache",
            batch_size=config.batch_size,
            verbose=verbose,
        )
    optimizer = torch.optim.AdamW(
        model.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    run = _Run(
        config,
        run_dir,
        _Batches(model, inputs, cache),
        rows,
        target,
        optimizer,
        torch.Generator().manual_seed(config.seed),
    )
    if resume:
        _resume(run)
    else:
        _start(run)
    stopped_early = _run_epochs(run, verbose)
    _finish(run, stopped_early)
    if cache is not None:
        cache.close()
    return FitResult(
        run_dir,
        run.progress["best_epoch"],
        run.progress["best_val_loss"],
        run.progress["epoch"],
        stopped_early,
        run.log,
        model,
    )


@dataclass
class _Run:
    """The state of one training run while it is going on."""

    config: BehaviorFitConfig
    run_dir: Path
    batches: _Batches
    rows: dict[str, torch.Tensor]  # "train", "val", "test" -> input rows
    target: torch.Tensor  # (n_inputs, 66)
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # batch order
    progress: dict[str, Any] = field(
        default_factory=lambda: {
            "epoch": 0,
            "best_val_loss": float("inf"),
            "best_epoch": 0,
            "bad_epochs": 0,
        }
    )
    log: list[dict] = field(default_factory=list)

    @property
    def model(self) -> BehaviorModel:
        return self.batches.model

    def evaluate(self, epoch: int, train_loss: float | None) -> dict:
        return _evaluate_epoch(
            epoch,
            self.batches,
            self.rows,
            self.target,
            self.batches.inputs,
            self.config,
            train_loss,
        )

    def save_last(self) -> None:
        _save_last(
            self.run_dir, self.model, self.optimizer, self.generator, self.progress, self.log
        )


def _start(run: _Run) -> None:
    """A new run directory: config, base weights, metrics before training, epoch-0 evaluation."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    _write_config(run.run_dir, run.config, run.model, run.batches.inputs)
    save_tensors(run.run_dir / WEIGHTS_FILE, _weights(run.model))
    before = _metrics(run.batches, run.batches.inputs, run.config, "before")
    write_json_atomic(run.run_dir / METRICS_FILE, {"before": before})
    run.log.append(run.evaluate(0, train_loss=None))
    run.progress["best_val_loss"] = run.log[0]["val_loss"]
    run.save_last()


def _resume(run: _Run) -> None:
    saved = read_json(run.run_dir / CONFIG_FILE)["inputs_fingerprint"]
    if saved != run.batches.inputs.fingerprint:
        raise InputError(
            f"Cannot resume {run.run_dir}: the concept inputs (images or texts) have changed."
        )
    run.progress, run.log = _restore(run.run_dir, run.model, run.optimizer, run.generator)


def _run_epochs(run: _Run, verbose: bool) -> bool:
    """Train until the epoch budget, early stopping or the time budget; True if stopped early."""
    config, progress = run.config, run.progress
    started = time.perf_counter()
    epochs = tqdm(
        range(progress["epoch"] + 1, config.epochs + 1),
        desc="Training",
        disable=not verbose,
        initial=progress["epoch"],
        total=config.epochs,
    )
    with epochs:
        return _epoch_loop(run, epochs, started)


def _epoch_loop(run: _Run, epochs: tqdm, started: float) -> bool:
    config, progress = run.config, run.progress
    for epoch in epochs:
        if progress["bad_epochs"] >= config.patience:  # also when resuming a stopped run
            return True
        # Frozen blocks always run in eval mode, so the cached prefix is what the model
        # computes; only the trainable blocks may use their dropout (train_dropout).
        _set_dropout(run.model, config.train_dropout)
        for group in run.optimizer.param_groups:
            group["lr"] = epoch_lr(config, epoch)
        train_loss = _train_epoch(
            run.batches,
            run.rows["train"],
            run.target,
            run.optimizer,
            run.generator,
            config.batch_size,
        )
        _set_dropout(run.model, False)
        record = run.evaluate(epoch, train_loss)
        run.log.append(record)
        progress["epoch"] = epoch
        if record["val_loss"] < progress["best_val_loss"]:
            progress.update(best_val_loss=record["val_loss"], best_epoch=epoch, bad_epochs=0)
            save_tensors(run.run_dir / WEIGHTS_FILE, _weights(run.model))
        else:
            progress["bad_epochs"] += 1
        run.save_last()
        epochs.set_postfix(
            train=f"{train_loss:.3g}",
            val=f"{record['val_loss']:.3g}",
            rho48=f"{record['rdm48_spearman'] or float('nan'):.3f}",
            best=progress["best_epoch"],
        )
        budget = config.time_budget_s
        if budget is not None and time.perf_counter() - started > budget:
            logger.info("Time budget of %.0f s reached after epoch %d.", budget, epoch)
            break
    return False


def _finish(run: _Run, stopped_early: bool) -> None:
    """Load the best epoch and write the metrics after training."""
    _load_weights(run.model, load_tensors(run.run_dir / WEIGHTS_FILE))
    metrics = read_json(run.run_dir / METRICS_FILE)
    metrics.update(
        after=_metrics(run.batches, run.batches.inputs, run.config, "after"),
        best_epoch=run.progress["best_epoch"],
        best_val_loss=run.progress["best_val_loss"],
        epochs_run=run.progress["epoch"],
        stopped_early=stopped_early,
    )
    write_json_atomic(run.run_dir / METRICS_FILE, metrics)


def _training_data(
    model: BehaviorModel, config: BehaviorFitConfig
) -> tuple[ConceptInputs, dict[str, torch.Tensor], torch.Tensor]:
    """Inputs of the train, validation and held-out concepts, their rows, and the targets.

    Returns
    -------
    inputs : ConceptInputs
    rows : dict with "train", "val", "test" -> row numbers into ``inputs``
    target : Tensor, shape (len(inputs), 66), SPoSE rescaled to [0, 100] by the minimum and
        maximum of the 1,806 non-held-out concepts (held-out concepts never set the scale)
    """
    split = split_concepts(config.seed, config.val_fraction, config.data_dir)
    train_ids, val_ids = _limit(split.train_ids, split.val_ids, config)
    concept_ids = [*train_ids, *val_ids, *split.test_ids]
    inputs = concept_inputs(model.backbone, concept_ids, config.inputs, config.data_dir)
    groups = {"train": train_ids, "val": val_ids, "test": split.test_ids}
    rows = {name: inputs.rows([c for c in ids if c in inputs]) for name, ids in groups.items()}
    if len(rows["train"]) < 2 or len(rows["val"]) < 1:
        raise InputError("Too few training or validation concepts have inputs.")
    spose = load_spose(config.data_dir)
    scaled = rescale_minmax(spose, reference_ids=[*split.train_ids, *split.val_ids])
    targets = scaled.select(list(inputs.concept_ids))
    return inputs, rows, torch.tensor(targets.values, dtype=torch.float32)


def _limit(
    train_ids: tuple[str, ...], val_ids: tuple[str, ...], config: BehaviorFitConfig
) -> tuple[list, list]:
    if config.max_concepts is None:
        return list(train_ids), list(val_ids)
    n_val = max(1, round(config.max_concepts * config.val_fraction))
    return list(train_ids[: config.max_concepts - n_val]), list(val_ids[:n_val])


def epoch_lr(config: BehaviorFitConfig, epoch: int) -> float:
    """Learning rate of epoch ``epoch`` (1-based): constant, or cosine decay to 0 at the end."""
    if config.lr_schedule == "constant":
        return config.lr
    return config.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / config.epochs))


def _set_dropout(model: BehaviorModel, active: bool) -> None:
    """Train mode (dropout on) for the blocks from the first trainable one on, or eval mode."""
    towers = {id(t): t for t in (model.concept_tower, model.backbone.label_tower) if t is not None}
    for tower in towers.values():
        for block in tower.blocks[first_trainable_block(tower) :]:
            block.train(active)


def _train_epoch(
    batches: _Batches,
    rows: torch.Tensor,
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    batch_size: int,
) -> float:
    order = rows[torch.randperm(len(rows), generator=generator)]
    total = 0.0
    for i in range(0, len(order), batch_size):
        batch = order[i : i + batch_size]
        loss = F.mse_loss(batches.predict(batch), target[batch].to(batches.model.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(order)


def _evaluate_epoch(
    epoch: int,
    batches: _Batches,
    rows: dict[str, torch.Tensor],
    target: torch.Tensor,
    inputs: ConceptInputs,
    config: BehaviorFitConfig,
    train_loss: float | None,
) -> dict:
    val = batches.predict_all(rows["val"], config.batch_size)
    record = {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": F.mse_loss(val, target[rows["val"]]).item(),
        "rdm48_spearman": None,
    }
    if len(rows["test"]) >= 3:
        test = batches.predict_all(rows["test"], config.batch_size).double().numpy()
        ids = [inputs.concept_ids[k] for k in rows["test"].tolist()]
        model_rdm = RDM.from_embedding(ConceptEmbedding(test, ids))
        record["rdm48_spearman"] = compare(model_rdm, load_rdm48(config.data_dir), "spearman")
    return record


# ---------------------------------------------------------------------------- run directory


def _write_config(
    run_dir: Path, config: BehaviorFitConfig, model: BehaviorModel, inputs: ConceptInputs
) -> None:
    description = {
        "clip_hba_version": __version__,
        "task": "behavior",
        "base_model": config.model,
        "backbone_kind": model.backbone.kind,
        "labels": list(model.labels),
        "n_concepts_with_inputs": len(inputs),
        "inputs_fingerprint": inputs.fingerprint,
        "trainable_parameters": sum(p.numel() for p in model.trainable_parameters()),
        "fit": config.to_dict(),
    }
    write_json_atomic(run_dir / CONFIG_FILE, description)


def _save_last(
    run_dir: Path,
    model: BehaviorModel,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    progress: dict,
    log: list[dict],
) -> None:
    tensors, groups = optimizer_tensors(optimizer)
    tensors.update(_weights(model))
    tensors["generator_state"] = generator.get_state()
    tensors["torch_rng_state"] = torch.get_rng_state()  # dropout draws from the global generator
    text = "".join(json.dumps(record) + "\n" for record in log)
    write_atomic(run_dir / LOG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    # one file holds everything resume needs, so a crash between writes cannot mix epochs
    save_tensors(run_dir / LAST_FILE, tensors, {**progress, "param_groups": groups})
    write_json_atomic(run_dir / STATE_FILE, progress)  # a readable copy for people


def _restore(
    run_dir: Path,
    model: BehaviorModel,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> tuple[dict, list[dict]]:
    state = load_metadata(run_dir / LAST_FILE)
    tensors = load_tensors(run_dir / LAST_FILE)
    _load_weights(model, tensors)
    optimizer_from_tensors(optimizer, tensors, state.pop("param_groups"))
    generator.set_state(tensors["generator_state"])
    torch.set_rng_state(tensors["torch_rng_state"])
    lines = (run_dir / LOG_FILE).read_text(encoding="utf-8").splitlines()
    log = [json.loads(line) for line in lines if line.strip()][: state["epoch"] + 1]
    logger.info("Resuming %s after epoch %d", run_dir, state["epoch"])
    return state, log


RESUMABLE_CHANGES = {"epochs", "patience", "time_budget_s"}


def _check_resumable(run_dir: Path, config: BehaviorFitConfig) -> None:
    if not (run_dir / LAST_FILE).is_file():
        raise InputError(f"Nothing to resume in {run_dir}: it holds no {LAST_FILE}.")
    saved = read_json(run_dir / CONFIG_FILE)["fit"]
    current = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as saved
    free = RESUMABLE_CHANGES - ({"epochs"} if config.lr_schedule == "cosine" else set())
    free = free | {"out"}  # the run directory itself (given as run/ or ./run)
    changed = sorted(k for k in current if k not in free and saved.get(k) != current[k])
    if changed:
        raise InputError(
            f"Cannot resume {run_dir} with other settings: {', '.join(changed)} differ."
        )


def _metrics(
    batches: _Batches, inputs: ConceptInputs, config: BehaviorFitConfig, stage: str
) -> dict:
    """`evaluate_behavior` of the predictions for every concept with inputs.

    The predictions are saved as ``predictions_<stage>.npz`` in the run directory.
    """
    predictions = batches.predict_all(torch.arange(len(inputs)), config.batch_size)
    embedding = ConceptEmbedding(
        predictions.double().numpy(), inputs.concept_ids, batches.model.labels
    )
    save_embedding(Path(config.out) / f"predictions_{stage}.npz", embedding, inputs.item_ids)
    return evaluate_behavior(embedding, seed=config.seed, data_dir=config.data_dir).to_dict()
