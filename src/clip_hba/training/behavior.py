"""CLIP-HBA-Behavior training: fit a backbone + head to the SPoSE targets, with early stopping.

One path: load the backbone, add adapters, build the concept inputs, cache the frozen prefix,
then train the suffix with AdamW on the MSE to the min-max rescaled SPoSE embedding (plus,
with ``rdm_loss_weight``, the geometry term of `clip_hba.training.losses.rdm_loss` on each
batch), evaluating the validation loss and the held-out 48-object rho after every epoch (the
shared lifecycle of `clip_hba.training.loop`: best epoch saved, every epoch checkpointed, exact
``resume``).

With several images per concept (exemplar ``"all"``) every image is a training sample with its
concept's target, batches are drawn over images, and validation, the held-out rho and the
saved predictions use each concept's mean prediction over its images. With ``augment``
("standard") the training batches are augmented images run through the whole tower (the
frozen-prefix cache serves the unaugmented evaluation passes only).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clip_hba._validation import InputError
from clip_hba.data.embeddings import ConceptEmbedding, save_embedding
from clip_hba.data.things import load_rdm48
from clip_hba.evaluation.behavior import evaluate_behavior
from clip_hba.models.backbones import backbone_fingerprint, first_trainable_block, load_backbone
from clip_hba.models.behavior import BehaviorModel
from clip_hba.models.inputs import (
    select_inputs,
    to_device,
    token_length,
)
from clip_hba.models.precision import autocast, full_precision, grad_scaler
from clip_hba.rsa.comparisons import compare
from clip_hba.rsa.rdms import RDM
from clip_hba.training.behavior_data import rdm_spearman, training_data
from clip_hba.training.cache import PrefixCache
from clip_hba.training.config import BehaviorFitConfig
from clip_hba.training.distributed import (
    Ranks,
    barrier,
    broadcast_parameters,
    gather_rows,
    join,
    launch,
    rank_run_dir,
    reduce_gradients,
)
from clip_hba.training.load import (
    behavior_model,
    behavior_weights,
    load_behavior_run,
    load_behavior_weights,
    resolve_device,
)
from clip_hba.training.loop import (
    Progress,
    begin,
    restore_checkpoint,
    save_checkpoint,
    train_epochs,
    training_run,
)
from clip_hba.training.losses import rdm_loss
from clip_hba.training.runs import RunDir

__all__ = ["BehaviorTrainer", "FitResult", "epoch_lr", "fit_behavior"]

logger = logging.getLogger(__name__)


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


def fit_behavior(
    config: BehaviorFitConfig,
    *,
    resume: bool = False,
    verbose: bool = True,
    options_given: Collection[str] | None = None,
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
    options_given : collection of str, optional
        With ``resume``: the command-line options the user gave; the others take the run's
        settings (see `RunDir.resumed_config`).

    Returns
    -------
    FitResult

    With ``config.devices`` > 1 the run trains in that many processes (`launch`); under
    torchrun or accelerate every process calls this function (`join`). Either way the result
    is the one-process run's, to float rounding.
    """
    run = RunDir(config.out)
    device = resolve_device(config.device)
    ranks = join(device)
    config = begin(run, config, resume, options_given)
    if config.devices > 1 and not ranks.active:
        options = dict(resume=resume, verbose=verbose)
        launch(fit_behavior, (config,), options, config.devices, device)
        return _finished(run)
    barrier(ranks)  # every process has checked the run before rank 0 writes it
    with rank_run_dir(run, ranks, resume) as own_run:
        trainer = BehaviorTrainer(config, verbose and ranks.main, own_run, ranks)
        with training_run(trainer, resume, config.time_budget_s) as deadline:
            outcome = train_epochs(
                trainer,
                config.epochs,
                config.patience,
                desc="Training",
                deadline=deadline,
                verbose=verbose and ranks.main,
            )
            trainer.finish(outcome)
        trainer.close()
    progress = trainer.progress
    return FitResult(
        run.path,
        progress.best_epoch,
        progress.best_val_loss,
        progress.epoch,
        outcome == "stopped_early",
        trainer.log,
        trainer.model,
    )


def _finished(run: RunDir) -> FitResult:
    """The result of a run that other processes trained, from its directory."""
    metrics = run.read_metrics()
    model = load_behavior_run(run, run.fit_config().device)
    log = run.load_checkpoint().log
    return FitResult(
        run.path,
        metrics["best_epoch"],
        metrics["best_val_loss"],
        metrics["epochs_run"],
        metrics["stopped_early"],
        log,
        model,
    )


class BehaviorTrainer:
    """One CLIP-HBA-Behavior run: model, data, frozen-prefix cache, optimizer (`Trainer`)."""

    def __init__(
        self,
        config: BehaviorFitConfig,
        verbose: bool = True,
        run: RunDir | None = None,
        ranks: Ranks | None = None,
    ) -> None:
        self.config = config
        self.run = run or RunDir(config.out)
        self.ranks = ranks or Ranks()
        backbone = load_backbone(config.model, allow_random_init=config.allow_random_init)
        self.base_fingerprint = backbone_fingerprint(backbone)  # before adapters are added
        self.model = behavior_model(backbone, config)
        broadcast_parameters(self.model.trainable_parameters(), self.ranks)
        if config.augment != "none" and backbone.kind not in ("clip", "vision"):
            raise InputError(
                f"augment {config.augment!r} transforms images: the {backbone.kind} backbone of "
                f"{config.model} reads texts (use --augment none)."
            )
        self.inputs, self.rows, self.target, self.concept_target = training_data(self.model, config)
        self.cache = None
        if config.cache != "off":
            # augmented training batches never read the cache: cache the evaluation rows only
            evaluated = None
            if config.augment != "none":
                evaluated = sorted(torch.cat([self.rows["val"], self.rows["test"]]).tolist())
            if self.ranks.active:  # each process caches the rows it computes
                every = torch.arange(len(self.inputs)) if evaluated is None else evaluated
                evaluated = self.ranks.own(torch.as_tensor(every)).tolist()
            self.cache = PrefixCache.build(
                self.model.concept_tower,
                first_trainable_block(self.model.concept_tower),
                self.inputs,
                mode=config.cache,
                directory=RunDir(config.out).file("cache"),  # (every rank: the run's folder)
                batch_size=config.batch_size,
                verbose=verbose,
                rows=evaluated,
                precision=config.precision,
            )
        self.optimizer = torch.optim.AdamW(
            self.model.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scaler = grad_scaler(config.precision, self.model.device)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.progress = Progress()
        self.log: list[dict] = []

    # ------------------------------------------------------------------ the lifecycle

    def start(self) -> None:
        """A new run directory: config, base weights, metrics before training, epoch 0."""
        self.run.write_description(
            {
                "task": "behavior",
                "base_model": self.config.model,
                "base_model_fingerprint": self.base_fingerprint,
                "backbone_kind": self.model.backbone.kind,
                "labels": list(self.model.labels),
                "n_concepts_with_inputs": len(self.inputs.concepts),
                "n_inputs": len(self.inputs),
                "inputs_fingerprint": self.inputs.fingerprint,
                "concept_images": self._concept_images(),
                "trainable_parameters": sum(p.numel() for p in self.model.trainable_parameters()),
            },
            self.config,
        )
        self.run.save_weights(self.weights())
        self.run.write_metrics({"before": self.metrics("before")})
        self.log.append(self.evaluate(0, train_parts=None))
        self.progress.best_val_loss = self.log[0]["val_loss"]
        save_checkpoint(self)

    def resume(self) -> None:
        if self.run.description["inputs_fingerprint"] != self.inputs.fingerprint:
            raise InputError(
                f"Cannot resume {self.run.path}: the concept inputs (images or texts) have changed."
            )
        checkpoint = self.run.load_checkpoint()
        load_behavior_weights(self.model, checkpoint.tensors)
        metadata = restore_checkpoint(self, checkpoint)
        if metadata.get("grad_scaler"):
            self.scaler.load_state_dict(metadata["grad_scaler"])
        if self.config.epochs < self.progress.epoch:  # "finish now": config.json says so
            self.config = dataclasses.replace(self.config, epochs=self.progress.epoch)
        self.log = self.log[: self.progress.epoch + 1]

    def finish(self, outcome: str) -> None:
        """Load the best epoch and write the metrics after training.

        ``stopped_by_time_budget`` records whether the safety time limit (``time_budget_s``)
        ended training: only then do the metrics depend on the machine's speed.
        """
        load_behavior_weights(self.model, self.run.weights())
        metrics = self.run.read_metrics()
        metrics.update(
            after=self.metrics("after"),
            best_epoch=self.progress.best_epoch,
            best_val_loss=self.progress.best_val_loss,
            epochs_run=self.progress.epoch,
            stopped_early=outcome == "stopped_early",
            stopped_by_time_budget=outcome == "out_of_time",
        )
        self.run.write_metrics(metrics)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    # ------------------------------------------------------------------ Trainer

    def weights(self) -> dict[str, torch.Tensor]:
        return behavior_weights(self.model)

    def state(self) -> dict[str, Any]:
        return {"grad_scaler": self.scaler.state_dict()}  # {} unless fp16

    def epoch(self, epoch: int) -> dict[str, Any]:
        # Frozen blocks always run in eval mode, so the cached prefix is what the model
        # computes; only the trainable blocks may use their dropout (train_dropout).
        self._set_dropout(self.config.train_dropout)
        for group in self.optimizer.param_groups:
            group["lr"] = epoch_lr(self.config, epoch)
        train_parts = self._train_epoch(epoch)
        self._set_dropout(False)
        return self.evaluate(epoch, train_parts)

    def improves(self, record: dict[str, Any]) -> bool:
        """A lower validation loss (the MSE, plus the weighted geometry term) than the best."""
        return record["val_loss"] < self.progress.best_val_loss

    def on_best(self, record: dict[str, Any]) -> None:
        """Nothing to note: the next epochs compare validation losses only."""

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {
            "train": f"{record['train_loss']:.3g}",
            "val_rho": _number(record["val_rdm_spearman"]),
            "val": f"{record['val_loss']:.3g}",
            "rho48": _number(record["rdm48_spearman"]),
            "best": str(self.progress.best_epoch),
        }

    # ------------------------------------------------------------------ forward passes

    def predict(self, rows: torch.Tensor, augment_epoch: int | None = None) -> torch.Tensor:
        """Predictions for input rows (on the CPU), shape (len(rows), n_labels), on the device,
        in float32 (the forward pass in ``precision``).

        ``augment_epoch``: the images of this epoch's augmentation, through the whole tower.
        On several processes each runs the tower on its own rows (`Ranks.own`) and the head
        on the whole batch (`gather_rows`).
        """
        with autocast(self.config.precision, self.model.device):
            if not self.ranks.active:
                return full_precision(self.model.head(self._features(rows, augment_epoch)))
            own = self.ranks.own(rows)
            if len(own):
                features = full_precision(self._features(own, augment_epoch))
            else:  # none of this batch's rows is ours
                width = self.model.concept_tower.feature_dim
                features = torch.zeros((0, width), device=self.model.device)
            features = gather_rows(features, self.ranks.owners(rows), self.ranks)
            return full_precision(self.model.head(features))

    def _features(self, rows: torch.Tensor, augment_epoch: int | None) -> torch.Tensor:
        """The concept tower's features of input rows (B, P), from the cache where it can."""
        device = self.model.device
        tower = self.model.concept_tower
        if augment_epoch is not None:
            pixels = self.inputs.images.augmented(self.config.seed, augment_epoch)
            tensors = {**self.inputs.tensors, "pixel_values": pixels}
            return tower(to_device(select_inputs(tensors, rows), device))
        if self.cache is None or not self.cache.covers(rows):
            return tower(to_device(select_inputs(self.inputs.tensors, rows), device))
        aux = select_inputs(self.inputs.aux, rows)
        hidden = self.cache.hidden(rows)
        length = token_length(aux)
        if length is not None:
            hidden = hidden[:, :length]
        return tower.features_from(hidden.to(device), to_device(aux, device), self.cache.block)

    @torch.no_grad()
    def predict_all(self, rows: torch.Tensor) -> torch.Tensor:
        """Predictions for many rows, batch by batch, without gradients, on the CPU."""
        size = self.config.batch_size
        return torch.cat(
            [self.predict(rows[i : i + size]).cpu() for i in range(0, len(rows), size)]
        )

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training inputs; the sample-weighted mean loss and its terms."""
        train = self.rows["train"]
        order = train[torch.randperm(len(train), generator=self.generator)]
        augment_epoch = epoch if self.config.augment != "none" else None
        weight = self.config.rdm_loss_weight
        totals = {"loss": 0.0, "mse": 0.0, "rdm": 0.0}
        for i in range(0, len(order), self.config.batch_size):
            batch = order[i : i + self.config.batch_size]
            predicted = self.predict(batch, augment_epoch)
            target = self.target[batch].to(self.model.device)
            mse = F.mse_loss(predicted, target)
            if weight > 0:
                geometry = rdm_loss(predicted, target)
                loss = mse + weight * geometry
            else:  # the MSE alone, exactly as without the option; the term is only logged
                loss = mse
                with torch.no_grad():
                    geometry = rdm_loss(predicted.detach(), target)
            self.optimizer.zero_grad(set_to_none=True)
            share = loss / self.ranks.world if self.ranks.active else loss  # summed over ranks
            self.scaler.scale(share).backward()  # (fp32, bf16: the loss as it is)
            reduce_gradients(self.model.trainable_parameters(), self.ranks)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            for name, value in (("loss", loss), ("mse", mse), ("rdm", geometry)):
                totals[name] += value.item() * len(batch)
        return {name: total / len(order) for name, total in totals.items()}

    def _set_dropout(self, active: bool) -> None:
        """Train mode (dropout on) for the blocks from the first trainable one on, or eval mode."""
        model = self.model
        towers = {
            id(t): t for t in (model.concept_tower, model.backbone.label_tower) if t is not None
        }
        for tower in towers.values():
            for block in tower.blocks[first_trainable_block(tower) :]:
                block.train(active)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, epoch: int, train_parts: dict[str, float] | None) -> dict[str, Any]:
        """Validation loss and geometry, and the held-out 48-object rho, of the current weights.

        ``val_loss`` = ``val_mse`` + ``rdm_loss_weight`` x ``val_rdm`` over every validation
        concept at once (each concept's mean prediction over its images);
        ``val_rdm_spearman`` = Spearman rho of the validation concepts' model RDM with their
        target RDM (what the held-out rho measures, on concepts that may guide choices).
        """
        val_ids, val = self.concept_predictions("val")
        val_target = self.concept_target(val_ids)
        val_mse = F.mse_loss(val, val_target).item()
        val_rdm = rdm_loss(val, val_target).item()
        record = {
            "epoch": epoch,
            "train_loss": None if train_parts is None else train_parts["loss"],
            "train_mse": None if train_parts is None else train_parts["mse"],
            "train_rdm": None if train_parts is None else train_parts["rdm"],
            "val_loss": val_mse + self.config.rdm_loss_weight * val_rdm,
            "val_mse": val_mse,
            "val_rdm": val_rdm,
            "val_rdm_spearman": rdm_spearman(val, val_target, val_ids),
            "rdm48_spearman": None,
        }
        if self._n_concepts("test") >= 3:
            test_ids, test = self.concept_predictions("test")
            model_rdm = RDM.from_embedding(ConceptEmbedding(test.double().numpy(), test_ids))
            record["rdm48_spearman"] = compare(
                model_rdm, load_rdm48(self.config.data_dir), "spearman"
            )
        return record

    def _n_concepts(self, split: str) -> int:
        return len({self.inputs.concept_ids[k] for k in self.rows[split].tolist()})

    def concept_predictions(self, split: str | None) -> tuple[tuple[str, ...], torch.Tensor]:
        """Each concept's mean prediction over its inputs, for one split (None: every input)."""
        rows = torch.arange(len(self.inputs)) if split is None else self.rows[split]
        return self.inputs.concept_means(self.predict_all(rows), rows)

    def metrics(self, stage: str) -> dict:
        """`evaluate_behavior` of the predictions for every concept with inputs.

        The predictions (per concept: the mean over its images) are saved as
        ``predictions_<stage>.npz`` in the run directory.
        """
        concept_ids, predictions = self.concept_predictions(None)
        embedding = ConceptEmbedding(predictions.double().numpy(), concept_ids, self.model.labels)
        item_ids = self.inputs.item_ids_of(concept_ids)
        save_embedding(self.run.predictions_path(stage), embedding, item_ids)
        return evaluate_behavior(
            embedding, seed=self.config.seed, data_dir=self.config.data_dir
        ).to_dict()

    def _concept_images(self) -> dict[str, list[str]] | None:
        """Image backbones: the image files of each concept (the exemplar chosen), by concept."""
        if self.inputs.images is None:
            return None
        return {c: self.inputs.items_of(c) for c in self.inputs.concepts}


def _number(value: float | None) -> str:
    return "nan" if value is None else f"{value:.3f}"


def epoch_lr(config: BehaviorFitConfig, epoch: int) -> float:
    """Learning rate of epoch ``epoch`` (1-based): constant, or cosine decay to 0 at the end."""
    if config.lr_schedule == "constant":
        return config.lr
    return config.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / config.epochs))
