"""The training lifecycle shared by every trainer: start or resume, epochs, early stopping.

A trainer (`Trainer`) knows how to run one epoch and what its weights are; this module does the
rest, the same way for CLIP-HBA-Behavior and both stages of CLIP-HBA-MEG:

- `begin`: refuse to overwrite a run, or check that a resumed run keeps its settings;
- `training_run`: start or resume, record the run as running, then finished (or failed, with
  the error, if training raises; a killed run stays "running"; a refused resume changes
  nothing);
- `train_epochs`: epochs until the maximum, early stopping (``patience`` epochs that do not
  improve on the best, by the trainer's `Trainer.improves`) or a safety time limit; the best
  epoch's weights are saved when they improve, and every epoch ends with a checkpoint;
- `save_checkpoint` / `restore_checkpoint`: weights, optimizer, random generators and the
  `Progress` record in one safetensors file, so that a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from tqdm.auto import tqdm

from clip_hba._io import check_output_dir
from clip_hba.training.config import FitConfig
from clip_hba.training.distributed import Ranks, agree
from clip_hba.training.runs import (
    Checkpoint,
    RunDir,
    optimizer_from_tensors,
    optimizer_tensors,
)

__all__ = [
    "Outcome",
    "Progress",
    "Trainer",
    "begin",
    "recording_status",
    "restore_checkpoint",
    "save_checkpoint",
    "train_epochs",
    "training_run",
]

logger = logging.getLogger(__name__)

Outcome = Literal["done", "stopped_early", "out_of_time"]


@dataclass
class Progress:
    """Where a run stands: the last finished epoch and the best one so far."""

    stage: int = 0  # training stage (CLIP-HBA-MEG: 0 = layer weights only, 1 = with adapters)
    epoch: int = 0  # last finished epoch of the stage (0: only the initial evaluation)
    best_val_loss: float = math.inf
    best_val_r: float | None = None  # CLIP-HBA-MEG: the best epoch's validation RSA
    best_stage: int = 0
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the last improvement

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Progress:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class Trainer(Protocol):
    """What `train_epochs` and the checkpoints need from a trainer."""

    config: FitConfig
    run: RunDir
    base_fingerprint: str  # of the base model, before adapters (`backbone_fingerprint`)
    progress: Progress
    log: list[dict]
    optimizer: torch.optim.Optimizer | None
    generator: torch.Generator  # batch order (and noise)
    ranks: Ranks  # this process among the run's processes (one: rank 0 of 1)

    def weights(self) -> dict[str, torch.Tensor]:
        """The trained weights to save (adapters, heads)."""
        ...

    def epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch and validate; the log record, with ``val_loss``."""
        ...

    def improves(self, record: dict[str, Any]) -> bool:
        """Whether an epoch's record beats the best so far (`Progress`)."""
        ...

    def on_best(self, record: dict[str, Any]) -> None:
        """An epoch became the best (after `improves`): note what later epochs compare with."""
        ...

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors a resumed run needs besides `weights` (saved in the checkpoint only)."""
        ...

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        """What the progress bar shows after an epoch."""
        ...

    def state(self) -> dict[str, Any]:
        """JSON-able state to checkpoint besides `Progress` (e.g. loss normalisers)."""
        ...

    def start(self) -> None:
        """Write a new run directory and evaluate the starting point (epoch 0)."""
        ...

    def resume(self) -> None:
        """Restore the state of the run's last checkpoint."""
        ...


def begin(
    run: RunDir, config: FitConfig, resume: bool, options_given: Collection[str] | None = None
) -> FitConfig:
    """The settings to run with; refuses a new run where one exists, an output folder that
    cannot be written, or a resumed run given other settings than its own (`RunDir.resumed_config`).
    """
    check_output_dir(run.path)
    if not resume:
        run.check_new()
        return config
    return run.resumed_config(config, options_given)


@contextlib.contextmanager
def recording_status(run: RunDir) -> Iterator[None]:
    """Mark ``run`` failed (with the error) if the block raises; a killed or interrupted run
    (Ctrl-C, SIGTERM) stays running, which reads as resumable."""
    try:
        yield
    except BaseException as err:
        if run.is_run() and not isinstance(err, (KeyboardInterrupt, SystemExit)):
            run.mark("failed", f"{type(err).__name__}: {err}")
        raise


@contextlib.contextmanager
def training_run(
    trainer: Trainer, resume: bool, time_budget_s: float | None
) -> Iterator[float | None]:
    """Start (or resume) the trainer's run, give the safety deadline, and mark the run
    finished when the block ends (failed if it raises).

    A resume that is refused (changed inputs) leaves the run's status as it was; a start that
    fails leaves no status, which reads as unfinished.
    """
    if resume:
        trainer.run.check_same_base(trainer.base_fingerprint, trainer.config.model)
        trainer.resume()
        trainer.run.update_budgets(trainer.config)
    else:
        trainer.start()
    trainer.run.mark("running")
    with recording_status(trainer.run):
        yield None if time_budget_s is None else time.perf_counter() + time_budget_s
        trainer.run.mark("finished")


def train_epochs(
    trainer: Trainer,
    max_epochs: int,
    patience: int,
    *,
    desc: str,
    deadline: float | None = None,
    verbose: bool = True,
) -> Outcome:
    """Train from the epoch after ``trainer.progress.epoch`` up to ``max_epochs``.

    Stops early once ``patience`` epochs in a row did not improve (`Trainer.improves`; also
    right away when a resumed run had already stopped), or after the epoch during which
    ``time.perf_counter()`` passed ``deadline`` (a safety limit; the best epoch is kept).
    """
    progress = trainer.progress
    bar = tqdm(
        range(progress.epoch + 1, max_epochs + 1),
        desc=desc,
        disable=not verbose,
        initial=progress.epoch,
        total=max_epochs,
    )
    with bar:
        for epoch in bar:
            if progress.bad_epochs >= patience:
                return "stopped_early"
            record = trainer.epoch(epoch)
            trainer.log.append(record)
            progress.epoch = epoch
            # every process makes rank 0's decisions (the clock, above all, is its own)
            if agree(trainer.improves(record), trainer.ranks):
                progress.best_val_loss = record["val_loss"]
                progress.best_val_r = record.get("val_r")
                progress.best_stage, progress.best_epoch = progress.stage, epoch
                progress.bad_epochs = 0
                trainer.on_best(record)
                trainer.run.save_weights(trainer.weights())
            else:
                progress.bad_epochs += 1
            save_checkpoint(trainer)
            bar.set_postfix(trainer.postfix(record))
            late = deadline is not None and time.perf_counter() > deadline
            if agree(late, trainer.ranks):
                logger.warning(
                    "Time limit reached after epoch %d (stage %d).", epoch, progress.stage
                )
                return "out_of_time"
    return "done"


def save_checkpoint(trainer: Trainer) -> None:
    """The trainer's weights, optimizer, generators and progress as the run's checkpoint."""
    tensors = {**trainer.weights(), **trainer.checkpoint_tensors()}
    groups: list = []
    if trainer.optimizer is not None:
        optimizer_state, groups = optimizer_tensors(trainer.optimizer)
        tensors.update(optimizer_state)
    tensors["generator_state"] = trainer.generator.get_state()
    tensors["torch_rng_state"] = torch.get_rng_state()  # dropout draws from the global generator
    metadata = {**trainer.progress.to_dict(), **trainer.state(), "param_groups": groups}
    trainer.run.save_checkpoint(tensors, metadata, trainer.log)


def restore_checkpoint(trainer: Trainer, checkpoint: Checkpoint) -> dict[str, Any]:
    """Progress, log, generators (and the optimizer, if the trainer has one) from a checkpoint.

    Returns the checkpoint's metadata (for the trainer's own `Trainer.state`).
    """
    metadata = dict(checkpoint.metadata)
    groups = metadata.pop("param_groups", [])
    trainer.progress = Progress.from_dict(metadata)
    trainer.log = list(checkpoint.log)
    if trainer.optimizer is not None and groups:
        optimizer_from_tensors(trainer.optimizer, checkpoint.tensors, groups)
    trainer.generator.set_state(checkpoint.tensors["generator_state"])
    if "torch_rng_state" in checkpoint.tensors:  # runs of older versions did not save it
        torch.set_rng_state(checkpoint.tensors["torch_rng_state"])
    logger.info(
        "Resuming %s at stage %d after epoch %d",
        trainer.run.path,
        trainer.progress.stage,
        trainer.progress.epoch,
    )
    return metadata
