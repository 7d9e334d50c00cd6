"""Training: the run directory, the shared lifecycle, caches and the trainers.

- `clip_hba.training.config`: `BehaviorFitConfig`, `MegFitConfig` (the runs' settings).
- `clip_hba.training.runs`: the run directory (file names, status, config round trip,
  checkpoints); the only code that opens a run's files.
- `clip_hba.training.load`: a run's model from its settings; `load_run` for any run.
- `clip_hba.training.loop`: the lifecycle both trainers share (epochs, early stopping,
  checkpoints, exact resume) and the typed `Progress` record.
- `clip_hba.training.cache`: the frozen-prefix cache.
- `clip_hba.training.behavior`: CLIP-HBA-Behavior (`fit_behavior`).
- `clip_hba.training.meg_data`, `clip_hba.training.meg`: CLIP-HBA-MEG (`fit_meg`).
- `clip_hba.training.individual`: one MEG model per participant (`fit_individuals`).
"""

from clip_hba._lazy import lazy_names
from clip_hba.training.config import (
    INDIVIDUAL_RANK,
    LOSS_TERMS,
    BehaviorFitConfig,
    FitConfig,
    MegFitConfig,
)

_MODULES = {
    "CONFIG_FILE": "runs",
    "LAST_FILE": "runs",
    "LOG_FILE": "runs",
    "METRICS_FILE": "runs",
    "STATE_FILE": "runs",
    "STATUS_FILE": "runs",
    "WEIGHTS_FILE": "runs",
    "Checkpoint": "runs",
    "RunDir": "runs",
    "find_runs": "runs",
    "LoadedModel": "load",
    "load_behavior_run": "load",
    "load_meg_run": "load",
    "load_run": "load",
    "resolve_device": "load",
    "Progress": "loop",
    "Trainer": "loop",
    "train_epochs": "loop",
    "PrefixCache": "cache",
    "BehaviorTrainer": "behavior",
    "FitResult": "behavior",
    "epoch_lr": "behavior",
    "fit_behavior": "behavior",
    "MegSplit": "meg_data",
    "meg_loss": "meg_data",
    "meg_split": "meg_data",
    "meg_targets": "meg_data",
    "MegFitResult": "meg",
    "MegTrainer": "meg",
    "fit_meg": "meg",
    "INITS": "individual",
    "fit_individuals": "individual",
}
__getattr__ = lazy_names(__name__, _MODULES)
__all__ = [
    "CONFIG_FILE",
    "INDIVIDUAL_RANK",
    "INITS",
    "LAST_FILE",
    "LOG_FILE",
    "LOSS_TERMS",
    "METRICS_FILE",
    "STATE_FILE",
    "STATUS_FILE",
    "WEIGHTS_FILE",
    "BehaviorFitConfig",
    "BehaviorTrainer",
    "Checkpoint",
    "FitConfig",
    "FitResult",
    "LoadedModel",
    "MegFitConfig",
    "MegFitResult",
    "MegSplit",
    "MegTrainer",
    "PrefixCache",
    "Progress",
    "RunDir",
    "Trainer",
    "epoch_lr",
    "find_runs",
    "fit_behavior",
    "fit_individuals",
    "fit_meg",
    "load_behavior_run",
    "load_meg_run",
    "load_run",
    "meg_loss",
    "meg_split",
    "meg_targets",
    "resolve_device",
    "train_epochs",
]
