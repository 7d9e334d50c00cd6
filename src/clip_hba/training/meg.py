"""CLIP-HBA-MEG training: group and individualized models of time-resolved MEG RDMs.

One path. Load the base model and the chain of runs it starts from (a behaviour run, or a MEG
run for individualized models), merging their adapters into the weights, and freeze the label
embeddings. Split the store's concepts (held-out, validation, training), read the targets
(participants' mean or one participant, over a time window) and rescale them to [0, 1] on the
training concepts, from which the noise curves also come. Then:

- stage 0: the backbone is frozen, so every block's pooled feature of every concept is computed
  once; only the layer weights W (and, with ``meg.dimension_gains``, the dimension gains)
  train (AdamW, ``stage0_lr``) until the validation stops improving;
- stage 1: the best stage-0 state is reloaded, DoRA adapters are added to every block (their
  magnitudes frozen with ``freeze_magnitude``), and W (and gains; ``stage0_lr``) and the
  adapters' directions (``stage1_lr``) train together.

The loss is `clip_hba.training.meg_data.meg_loss`, each term divided by its initial
validation value. An epoch is the best only when it raises the validation RSA (mean r from
0 ms of the validation concepts' model and MEG RDMs) above the best so far, reliably (in
``improvement_confidence`` of paired bootstrap resamples), and does not raise the validation
loss; the best starts as epoch 0, so a run never returns a model below its start. Both stages
run the lifecycle of `clip_hba.training.loop`, on one process or several (`distributed`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clip_hba._validation import InputError
from clip_hba.data.things import load_spose_labels
from clip_hba.models.adapters import (
    adapter_state,
    add_adapters,
    freeze_magnitudes,
    load_adapter_state,
)
from clip_hba.models.backbones import backbone_fingerprint, load_backbone
from clip_hba.models.config import AdapterConfig
from clip_hba.models.inputs import (
    concept_inputs,
    map_batches,
    select_inputs,
    to_device,
)
from clip_hba.models.meg import MegModel, relative_gains
from clip_hba.models.precision import autocast, full_precision, grad_scaler
from clip_hba.rsa.rdms import subset_pairs
from clip_hba.training.config import MegFitConfig
from clip_hba.training.distributed import (
    Ranks,
    barrier,
    gather_rows,
    join,
    launch,
    rank_run_dir,
    reduce_gradients,
)
from clip_hba.training.load import (
    load_meg_head,
    load_meg_run,
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
from clip_hba.training.meg_data import (
    meg_loss,
    meg_targets,
    rdm_correlations,
    rsa_gain_confidence,
    run_metrics,
    scaled_targets,
    store_split,
    weighted_terms,
)
from clip_hba.training.meg_start import meg_start
from clip_hba.training.runs import RunDir, strip_prefix, with_prefix

__all__ = ["MegFitResult", "MegTrainer", "fit_meg"]

logger = logging.getLogger(__name__)


@dataclass
class MegFitResult:
    """What `fit_meg` produced."""

    run_dir: Path
    best_stage: int
    best_val_loss: float
    log: list[dict]
    model: MegModel = field(repr=False)


def fit_meg(
    config: MegFitConfig,
    *,
    resume: bool = False,
    allow_unfinished: bool = False,
    verbose: bool = True,
    options_given: Collection[str] | None = None,
) -> MegFitResult:
    """Train a CLIP-HBA-MEG model (group, or one participant); see `MegFitConfig`.

    Parameters
    ----------
    config : MegFitConfig
    resume : bool
        Continue the run in ``config.out`` where it stopped, with its own settings apart from
        those ``options_given`` name (`RunDir.resumed_config`); the result is identical to a
        run that was never interrupted.
    allow_unfinished : bool
        Start from a behaviour or MEG run whose training did not finish.
    verbose : bool
        Show progress bars.

    With ``config.devices`` > 1 the run trains in that many processes, as `fit_behavior`.
    """
    run = RunDir(config.out)
    ranks = join(resolve_device(config.device))
    config = begin(run, config, resume, options_given)
    if config.devices > 1 and not ranks.active:
        options = dict(resume=resume, allow_unfinished=allow_unfinished, verbose=verbose)
        launch(fit_meg, (config,), options, config.devices, resolve_device(config.device))
        metrics = run.read_metrics()
        model = load_meg_run(run, config.device)
        log = run.load_checkpoint().log
        return MegFitResult(run.path, metrics["best_stage"], metrics["best_val_loss"], log, model)
    barrier(ranks)  # every process has checked the run before rank 0 writes it
    verbose = verbose and ranks.main
    with rank_run_dir(run, ranks, resume) as own_run:
        trainer = MegTrainer(config, verbose, allow_unfinished, own_run, ranks)
        with training_run(trainer, resume, config.time_budget_s) as deadline:
            while trainer.progress.stage <= 1:
                if trainer.progress.stage == 1 and config.stage1_epochs == 0:
                    break
                if trainer.train_stage(deadline, verbose) == "out_of_time":
                    trainer.out_of_time = True
                    break
            trainer.finish()
        model = load_meg_run(own_run, config.device)
    progress = trainer.progress
    return MegFitResult(run.path, progress.best_stage, progress.best_val_loss, trainer.log, model)


class MegTrainer:
    """One CLIP-HBA-MEG run: model, concepts, targets, feature cache, optimizer (`Trainer`).

    ``inputs`` hold the training, validation and held-out concepts in that order; ``target``
    (T, pairs) the rescaled MEG RDMs among the training and validation concepts.
    """

    def __init__(
        self,
        config: MegFitConfig,
        verbose: bool = True,
        allow_unfinished: bool = False,
        run: RunDir | None = None,
        ranks: Ranks | None = None,
    ) -> None:
        self.config = config
        self.run = run or RunDir(config.out)
        self.ranks = ranks or Ranks()
        backbone = load_backbone(config.model, allow_random_init=config.allow_random_init)
        self.base_fingerprint = backbone_fingerprint(backbone)  # before any adapter is added
        start = meg_start(config, backbone, self.base_fingerprint, allow_unfinished)
        self.chain_tensors = start.chain_tensors
        split, store_description = store_split(config, backbone)
        targets, participants = meg_targets(config, [*split.train_ids, *split.val_ids])
        times = targets.times_ms
        self.n_train, self.n_val = len(split.train_ids), len(split.val_ids)
        scaled, (low, high), curves = scaled_targets(targets, self.n_train, self.n_val, config)
        del targets  # (1.2 GB at THINGS size) before the images are read
        ordered = [*split.train_ids, *split.val_ids, *split.test_ids]
        self.inputs = concept_inputs(
            backbone, ordered, config.inputs, config.data_dir, things_ids_only=False
        )
        device = resolve_device(config.device)
        self.model = MegModel(backbone, start.label_features, times, config.meg, curves).to(device)
        if start.head is not None:
            self._check_layer_weights(start.head["meg.layer_weights_raw"])
            load_meg_head(self.model, start.head)
        self.model.backbone_model.requires_grad_(False)
        self.model.eval()
        self.target = torch.as_tensor(scaled, dtype=torch.float32)
        # the validation RSA averages the timepoints from 0 ms on (all, if none are)
        after = torch.as_tensor(times >= 0)
        self.rsa_times = after if bool(after.any()) else torch.ones_like(after)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler = grad_scaler(config.precision, device)
        self.progress = Progress()
        self.out_of_time = False  # the safety time limit ended training
        self.log: list[dict] = []
        self.norms: dict[str, float] | None = None  # each loss term's initial validation value
        self.val_rdms: torch.Tensor | None = None  # the last validation's model RDMs
        self.best_val_rdms: torch.Tensor | None = None  # the best epoch's
        self.description = {
            "task": "meg",
            "base_model": config.model,
            "base_model_fingerprint": self.base_fingerprint,
            "store": store_description,
            "chain": start.chain,
            "labels_from": start.labels_from,
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
            "inputs_fingerprint": self.inputs.fingerprint,
            "n_layers": self.model.n_layers,
        }
        self.features: torch.Tensor | None = self._layer_features(verbose)

    # ------------------------------------------------------------------ building

    def _check_layer_weights(self, layer_raw: torch.Tensor) -> None:
        if layer_raw.shape != self.model.weights.raw.shape:
            raise InputError(
                f"{self.config.init_meg} has layer weights for {tuple(layer_raw.shape)} "
                f"(times x layers), this run needs {tuple(self.model.weights.raw.shape)}."
            )

    def _layer_features(self, verbose: bool) -> torch.Tensor:
        """Every block's pooled feature of every concept with the frozen backbone, (L, N, P).

        On several processes each computes its own concepts' and receives the others'.
        """
        rows = torch.arange(len(self.inputs))
        tensors = self.inputs.tensors  # (as they are on one process: pixels may stream)
        if self.ranks.active:
            tensors = select_inputs(tensors, self.ranks.own(rows), trim=False)
        features = map_batches(
            self.model.layer_features,
            tensors,
            self.config.batch_size,
            self.model.device,
            dim=1,
            desc="Layer features" if verbose else None,
            precision=self.config.precision,
        )
        return gather_rows(features, self.ranks.owners(rows), self.ranks, dim=1).to(
            self.model.device
        )

    def resolved_adapter(self) -> AdapterConfig:
        """The stage-1 adapters, with ``layers`` () resolved to every block."""
        layers = self.config.adapter.layers or tuple(range(1, self.model.n_layers + 1))
        return dataclasses.replace(self.config.adapter, layers=layers, label_layers=())

    def optimizer_for(self, stage: int) -> torch.optim.Optimizer:
        """AdamW over W (and gains) at ``stage0_lr``, plus the adapters in stage 1."""
        head = [self.model.weights.raw]
        if self.config.meg.dimension_gains:
            head.append(self.model.log_gains)
        groups = [{"params": head, "lr": self.config.stage0_lr}]
        if stage == 1:
            adapters = [p for p in self.model.backbone_model.parameters() if p.requires_grad]
            groups.append({"params": adapters, "lr": self.config.stage1_lr})
        return torch.optim.AdamW(groups, weight_decay=self.config.weight_decay)

    def enter_stage1(self) -> None:
        """Reload the best stage-0 W and add the DoRA adapters (seeded)."""
        load_meg_head(self.model, self.run.weights())
        add_adapters(self.model.backbone, self.resolved_adapter(), seed=self.config.seed)
        if self.config.freeze_magnitude:
            freeze_magnitudes(self.model.backbone)
        self.model.to(self.model.device).eval()
        self.features = None  # stage 1 recomputes the features: the backbone now changes

    # ------------------------------------------------------------------ the lifecycle

    def start(self) -> None:
        """A new run directory: config, the initial validation (loss norms), checkpoint."""
        fit_extra = {"adapter_resolved": self.resolved_adapter().to_dict()}
        self.run.write_description({**self.description, "fit_extra": fit_extra}, self.config)
        self.optimizer = self.optimizer_for(0)
        self.norms = self.validate(epoch=0, train_loss=None)["val_parts"]
        record = self.validate(epoch=0, train_loss=None)
        self.log.append(record)
        self.progress.best_val_loss = record["val_loss"]
        self.progress.best_val_r = record["val_r"]
        self.on_best(record)
        self.run.save_weights(self.weights())
        save_checkpoint(self)

    def resume(self) -> None:
        if self.run.description["inputs_fingerprint"] != self.description["inputs_fingerprint"]:
            raise InputError(f"Cannot resume {self.run.path}: the concept inputs have changed.")
        checkpoint = self.run.load_checkpoint()
        if checkpoint.metadata.get("best_val_r") is None:
            raise InputError(
                f"Cannot resume {self.run.path}: it was begun by an older version of clip-hba, "
                "whose loss and checkpoint rule differ; start a new run."
            )
        stage, groups = checkpoint.metadata["stage"], checkpoint.metadata["param_groups"]
        if stage == 1 and groups:  # in the middle of stage 1: adapters exist
            self.enter_stage1()
            load_adapter_state(self.model.backbone, strip_prefix("adapter.", checkpoint.tensors))
        load_meg_head(self.model, checkpoint.tensors)
        self.optimizer = self.optimizer_for(stage) if groups or stage == 0 else None
        metadata = restore_checkpoint(self, checkpoint)
        self.norms = metadata["norms"]
        if metadata.get("grad_scaler"):
            self.scaler.load_state_dict(metadata["grad_scaler"])
        # (None in checkpoints of older versions, whose runs compare by the plain rise)
        self.best_val_rdms = checkpoint.tensors.get("val.best_rdms")

    def train_stage(self, deadline: float | None, verbose: bool) -> str:
        """Train the current stage to its end, then move to the next (unless out of time)."""
        stage = self.progress.stage
        if stage == 1 and self.optimizer is None:
            self.enter_stage1()
            self.optimizer = self.optimizer_for(1)
        max_epochs = self.config.stage0_epochs if stage == 0 else self.config.stage1_epochs
        outcome = train_epochs(
            self,
            max_epochs,
            self.config.patience,
            desc=f"Stage {stage}",
            deadline=deadline,
            verbose=verbose,
        )
        if outcome != "out_of_time":
            self.progress.stage, self.progress.epoch, self.progress.bad_epochs = stage + 1, 0, 0
            self.optimizer = None
            save_checkpoint(self)
        return outcome

    def finish(self) -> None:
        """Write the metrics of the best epoch; ``stopped_by_time_budget`` says whether the
        safety time limit ended training (only then do they depend on the machine's speed)."""
        metrics = run_metrics(self.log, self.progress, self.out_of_time)
        if metrics["kept_start"] and self.ranks.main:
            logger.warning(
                "%s: no epoch raised the validation RSA reliably (without raising the loss) "
                "above the starting model's (r = %.4f); the starting model is kept.",
                self.run.path,
                self.log[0]["val_r"],
            )
        if self.config.meg.dimension_gains:  # the best model's, by SPoSE label
            gains = relative_gains(self.run.weights()["meg.log_gains"])
            labels = load_spose_labels(self.config.data_dir)
            metrics["dimension_gains"] = dict(zip(labels, gains.tolist(), strict=True))
        self.run.write_metrics(metrics)

    # ------------------------------------------------------------------ Trainer

    def weights(self) -> dict[str, torch.Tensor]:
        model = self.model
        tensors = dict(self.chain_tensors)
        tensors.update(with_prefix("adapter.", adapter_state(model.backbone)))
        tensors["meg.layer_weights_raw"] = model.weights.raw.detach().cpu().clone()
        tensors["meg.log_gains"] = model.log_gains.detach().cpu().clone()
        tensors["meg.label_features"] = model.label_features.cpu().clone()
        tensors["meg.gate"] = model.gate.cpu().clone()
        tensors["meg.noise"] = model.noise.cpu().clone()
        return tensors

    def state(self) -> dict[str, Any]:
        return {"norms": self.norms, "grad_scaler": self.scaler.state_dict()}  # {} unless fp16

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """The best epoch's validation RDMs (for the paired comparison of later epochs)."""
        if self.best_val_rdms is None:
            return {}
        return {"val.best_rdms": self.best_val_rdms.detach().cpu().contiguous()}

    def epoch(self, epoch: int) -> dict[str, Any]:
        record = self.validate(epoch, self.train_epoch())
        record["gain_confidence"] = self._gain_confidence(record)
        return record

    def improves(self, record: dict[str, Any]) -> bool:
        """A higher validation RSA than the best so far, reliably (``improvement_confidence``
        of the paired bootstrap), and a validation loss no higher than the best's."""
        return record.get("gain_confidence", 1.0) >= max(self.config.improvement_confidence, 1e-12)

    def on_best(self, record: dict[str, Any]) -> None:
        self.best_val_rdms = self.val_rdms

    def _gain_confidence(self, record: dict[str, Any]) -> float:
        """0 unless the RSA rose and the loss did not; then the bootstrap share (or 1)."""
        best_r = self.progress.best_val_r
        if best_r is not None and not record["val_r"] > best_r:  # (NaN is no rise either)
            return 0.0
        if record["val_loss"] > self.progress.best_val_loss:
            return 0.0
        if self.config.improvement_confidence == 0 or self.best_val_rdms is None:
            return 1.0
        rows = torch.arange(self.n_train, self.n_train + self.n_val)
        target = self.targets(rows)
        return rsa_gain_confidence(
            self.val_rdms, self.best_val_rdms.to(target.device), target, self.rsa_times,
            self.n_val, seed=self.config.seed,
        )  # fmt: skip

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {
            "train": f"{record['train_loss']:.3f}",
            "val": f"{record['val_loss']:.3f}",
            "r": f"{record['val_r']:.3f}",
        }

    # ------------------------------------------------------------------ epochs

    def embeddings(self, rows: torch.Tensor, noise: bool) -> torch.Tensor:
        """(T, len(rows), 66) embeddings of input rows, from the feature cache in stage 0."""
        if self.features is not None:
            features = self.features[:, rows]
        else:  # the tower on this process's rows; the rest of the model on the whole batch
            own = self.ranks.own(rows)
            features = self._tower_features(own)  # (L, len(own), P)
            features = gather_rows(features, self.ranks.owners(rows), self.ranks, dim=1)
        generator = self.generator if noise else None
        return self.model.embed_features(features, noise=noise, generator=generator)

    def _tower_features(self, rows: torch.Tensor) -> torch.Tensor:
        """The backbone's layer features of input rows, (L, len(rows), P), in float32."""
        if len(rows) == 0:  # (a process may own none of a batch's rows)
            width = self.model.backbone.concept_tower.feature_dim
            return torch.zeros((self.model.n_layers, 0, width), device=self.model.device)
        batch = to_device(select_inputs(self.inputs.tensors, rows), self.model.device)
        with autocast(self.config.precision, self.model.device):
            return full_precision(self.model.layer_features(batch))

    def targets(self, rows: torch.Tensor) -> torch.Tensor:
        """The rescaled MEG RDMs (T, pairs) among training/validation rows."""
        pairs = subset_pairs(rows.numpy(), self.n_train + self.n_val)
        return self.target[:, pairs].to(self.model.device)

    def train_epoch(self) -> float:
        """One pass over the training concepts in seeded batches; the mean loss."""
        order = torch.randperm(self.n_train, generator=self.generator)
        total, count = 0.0, 0
        for start in range(0, self.n_train, self.config.batch_size):
            rows = order[start : start + self.config.batch_size]
            if len(rows) < 3:
                continue
            rows = rows.sort().values
            predicted = self.model.rdms(self.embeddings(rows, noise=True))
            loss, _ = self._loss(predicted, self.targets(rows))
            self.optimizer.zero_grad(set_to_none=True)
            share = loss / self.ranks.world if self.ranks.active else loss  # summed over ranks
            self.scaler.scale(share).backward()  # (fp32, bf16: the loss as it is)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            reduce_gradients(params, self.ranks)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.model.weights.project()
            total += loss.item() * len(rows)
            count += len(rows)
        return total / max(count, 1)

    def validate(self, epoch: int, train_loss: float | None) -> dict[str, Any]:
        """Validation loss and RSA over all validation concepts at once, noise off."""
        rows = torch.arange(self.n_train, self.n_train + self.n_val)
        with torch.no_grad():
            predicted = self.model.rdms(self.embeddings(rows, noise=False))
            target = self.targets(rows)
            loss, parts = self._loss(predicted, target)
            per_time = rdm_correlations(predicted, target).cpu()
        self.val_rdms = predicted
        return {
            "stage": self.progress.stage,
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": float(loss),
            "val_parts": parts,  # the raw terms; val_terms: as they enter val_loss (sum)
            "val_terms": weighted_terms(parts, self.config.loss_weights, self.norms),
            "val_r": float(per_time[self.rsa_times].mean()),  # mean r from 0 ms on
        }

    def _loss(self, predicted: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        config = self.config
        return meg_loss(
            predicted,
            target,
            config.loss_weights,
            self.norms,
            config.rdm_correlation,
            config.tg_term,
        )
