"""The run directory: one owner of its files, its state and its configuration.

A run directory holds ``config.json`` (the resolved configuration with the package version,
base model, its fingerprint and the data fingerprints), ``status.json`` (running, finished or
failed: a run is complete only when it says so), ``adapter.safetensors`` (the best epoch's
trained weights: adapters and heads only, never the base model), ``last.safetensors`` (the last
finished epoch with optimizer and random-generator state, and the progress that ``--resume``
trusts, in one file so they can never disagree; ``state.json`` is a readable copy),
``log.jsonl`` and ``metrics.json``. Nothing is pickled and every file is written atomically.
Nothing outside this module opens these files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from clip_hba import __version__
from clip_hba._io import read_json, write_atomic, write_json_atomic, write_text_atomic
from clip_hba._validation import InputError, check_option
from clip_hba.training.config import BehaviorFitConfig, FitConfig, MegFitConfig, option_name

__all__ = [
    "CONFIG_FILE",
    "LAST_FILE",
    "LOG_FILE",
    "METRICS_FILE",
    "STATE_FILE",
    "STATUSES",
    "STATUS_FILE",
    "TASKS",
    "WEIGHTS_FILE",
    "Checkpoint",
    "RunDir",
    "find_runs",
    "load_metadata",
    "load_tensors",
    "optimizer_from_tensors",
    "optimizer_tensors",
    "save_tensors",
    "strip_prefix",
    "with_prefix",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
WEIGHTS_FILE = "adapter.safetensors"
LAST_FILE = "last.safetensors"
STATE_FILE = "state.json"
LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"
TASKS: dict[str, type[BehaviorFitConfig] | type[MegFitConfig]] = {
    "behavior": BehaviorFitConfig,
    "meg": MegFitConfig,
}
Status = Literal["running", "finished", "failed"]
STATUSES: tuple[str, ...] = ("running", "finished", "failed")


@dataclass(frozen=True)
class Checkpoint:
    """What ``last.safetensors`` and ``log.jsonl`` hold: the state to resume from."""

    tensors: dict[str, torch.Tensor]  # weights, optimizer state, generator states
    metadata: dict[str, Any]  # the progress record and the optimizer's parameter groups
    log: list[dict]  # one record per finished epoch, up to this checkpoint


class RunDir:
    """A run directory (see the module docstring).

    Parameters
    ----------
    path : path
        The directory; it need not exist yet (a run about to start).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._description: dict | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ configuration

    def is_run(self) -> bool:
        """Whether the directory holds a clip-hba run (a config.json with its settings).

        A Hugging Face model folder has a config.json too, without clip-hba's ``fit``.
        """
        if not self.file(CONFIG_FILE).is_file():
            return False
        if self._description is None:
            description = read_json(self.file(CONFIG_FILE))
            if not (isinstance(description, dict) and "fit" in description):
                return False
            self._description = _blocks_from_1(description)
        return True

    @property
    def description(self) -> dict[str, Any]:
        """The whole config.json: what the run is, ``fit`` (its settings) and fingerprints."""
        if not self.is_run():
            raise InputError(f"{self.path} is not a clip-hba run: it holds no run {CONFIG_FILE}.")
        assert self._description is not None
        return self._description

    @property
    def task(self) -> str:
        return self.description.get("task", "behavior")

    def fit_config(self) -> FitConfig:
        """The resolved settings, through the dataclass (settings added later get defaults)."""
        return TASKS[self.task].from_dict(self.description["fit"])

    def expect(self, task: str, option: str) -> RunDir:
        """This run, if it is a run of ``task``; else `InputError` naming ``option``."""
        check_option("task", task, tuple(TASKS))
        names = {"behavior": "behaviour", "meg": "MEG"}
        if not self.is_run():
            raise InputError(f"{self.path} is not a clip-hba run ({option}).")
        if self.task != task:
            raise InputError(
                f"{self.path} is a clip-hba {names.get(self.task, self.task)} run; {option} "
                f"needs a {names[task]} run."
            )
        return self

    def write_description(self, description: dict[str, Any], config: FitConfig) -> None:
        """Write config.json: ``description`` plus the version and ``fit`` (the config)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fit = {**config.to_dict(), **description.pop("fit_extra", {})}
        self._description = {
            "clip_hba_version": __version__,
            "block_numbering": BLOCK_NUMBERING,
            **description,
            "fit": fit,
        }
        write_json_atomic(self.file(CONFIG_FILE), self._description)

    def resumed_config(
        self, config: FitConfig, options_given: Collection[str] | None = None
    ) -> FitConfig:
        """The settings to resume with: the run's own, with the ones the user gave.

        ``options_given`` are the command-line options given (``{"--lr", "--epochs"}``); the
        settings of the others are the run's. Without it (the Python API), the required
        settings and every setting that differs from the config class's default count as given.
        A given setting with another value than the run's is refused, naming its option, unless
        it is free to change (`FitConfig.free_to_change`: the epoch limits, patience, the time
        budget, the device, and the base model's path: `check_same_base` then compares the
        model itself).
        """
        if not self.file(LAST_FILE).is_file():
            raise InputError(f"Nothing to resume in {self.path}: it holds no {LAST_FILE}.")
        cls = type(config)
        # through the dataclass, so that settings added since the run began take their defaults
        saved = _flat(self.fit_config().to_dict())
        current = _flat(config.to_dict())
        if options_given is None:
            required = {name: getattr(config, name) for name in _required_fields(cls)}
            default = _flat(cls(**required).to_dict())  # type: ignore[arg-type]
            given = {k for k, v in current.items() if v != default.get(k)} | set(required)
        else:
            given = {k for k in current if set(option_name(k).split("/")) & set(options_given)}
        free = config.free_to_change()
        merged, changed = dict(saved), []
        for key, value in current.items():
            if key == "out" or key not in saved:
                merged[key] = value
            elif key in given and value != saved[key]:
                merged[key] = value
                if key.split(".")[0] not in free:
                    changed.append(key)
        if changed:
            detail = "; ".join(
                f"{option_name(k)} {saved.get(k)!r} -> {current[k]!r}" for k in changed[:3]
            )
            raise InputError(
                f"Cannot resume {self.path} with other settings ({detail}); leave the option "
                "out to keep the run's setting, or start a new run in another --out."
            )
        return cls.from_dict(_nested(merged))

    def check_same_base(self, fingerprint: str, model: str) -> None:
        """Refuse to resume from another base model than the run's (a copy elsewhere is fine)."""
        saved = self.description.get("base_model_fingerprint")
        if saved is not None and saved != fingerprint:
            raise InputError(
                f"Cannot resume {self.path}: --model {model} is not the model it was trained "
                f"from ({self.description.get('base_model')}); give that model or a copy of it."
            )

    def update_budgets(self, config: FitConfig) -> None:
        """Record a resumed run's new limits (epochs, patience, time budget) in config.json."""
        description = dict(self.description)
        description["fit"] = {
            **description["fit"],
            **{k: v for k, v in config.to_dict().items() if k in config.free_to_change()},
        }
        self._description = description
        write_json_atomic(self.file(CONFIG_FILE), description)

    def check_new(self) -> None:
        """Refuse to start a run where one already is."""
        if self.file(LAST_FILE).exists():
            raise InputError(
                f"{self.path} already holds a run; use --resume to continue it or another --out."
            )

    # ------------------------------------------------------------------ status

    def status(self) -> str:
        """``running``, ``finished`` or ``failed``.

        Runs written before the status was recorded count as finished when their metrics
        after training were written, else as running.
        """
        if self.file(STATUS_FILE).is_file():
            return str(read_json(self.file(STATUS_FILE)).get("status", "running"))
        if not self.file(METRICS_FILE).is_file():
            return "running"
        metrics = read_json(self.file(METRICS_FILE))
        return "finished" if self.task == "meg" or "after" in metrics else "running"

    def mark(self, status: Status, error: str | None = None) -> None:
        """Record the run's status (and, for a failure, its error message)."""
        check_option("status", status, STATUSES)
        record = {"status": status, "clip_hba_version": __version__}
        if error is not None:
            record["error"] = error
        write_json_atomic(self.file(STATUS_FILE), record)

    def require_finished(self, allow_unfinished: bool = False) -> RunDir:
        """This run, if it finished training; else `InputError` naming ``--resume``."""
        status = self.status()
        if status == "finished" or allow_unfinished:
            if status != "finished":
                logger.warning("Using the unfinished run %s (status: %s).", self.path, status)
            return self
        why = {
            "running": "its training was interrupted or is still going",
            "failed": f"its training failed: {self._error()}",
        }.get(status, status)
        raise InputError(
            f"{self.path} is an unfinished run (status: {status}: {why}); finish it with "
            "`--resume`, or pass --allow-unfinished to use its best epoch so far."
        )

    def _error(self) -> str:
        if not self.file(STATUS_FILE).is_file():
            return "unknown error"
        return str(read_json(self.file(STATUS_FILE)).get("error", "unknown error"))

    # ------------------------------------------------------------------ weights and progress

    def weights(self) -> dict[str, torch.Tensor]:
        """The best epoch's trained weights (``adapter.safetensors``)."""
        return load_tensors(self.file(WEIGHTS_FILE))

    def save_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        save_tensors(self.file(WEIGHTS_FILE), tensors)

    def has_checkpoint(self) -> bool:
        return self.file(LAST_FILE).is_file()

    def save_checkpoint(
        self, tensors: dict[str, torch.Tensor], metadata: dict[str, Any], log: Sequence[dict]
    ) -> None:
        """Write ``log.jsonl``, then ``last.safetensors`` and its readable copy ``state.json``."""
        text = "".join(json.dumps(record) + "\n" for record in log)
        write_text_atomic(self.file(LOG_FILE), text)
        # one file holds everything resume needs, so a crash between writes cannot mix epochs
        save_tensors(self.file(LAST_FILE), tensors, {**metadata, "log_length": len(log)})
        readable = {k: v for k, v in metadata.items() if k != "param_groups"}
        write_json_atomic(self.file(STATE_FILE), readable)

    def load_checkpoint(self) -> Checkpoint:
        metadata = load_metadata(self.file(LAST_FILE))
        tensors = load_tensors(self.file(LAST_FILE))
        lines = self.file(LOG_FILE).read_text(encoding="utf-8").splitlines()
        log = [json.loads(line) for line in lines if line.strip()]
        # a crash between the two writes leaves one record more in the log than was saved
        length = metadata.pop("log_length", None)
        return Checkpoint(tensors, metadata, log if length is None else log[:length])

    def read_metrics(self) -> dict[str, Any]:
        return read_json(self.file(METRICS_FILE))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json_atomic(self.file(METRICS_FILE), metrics)

    def predictions_path(self, stage: str) -> Path:
        """Where the behaviour predictions of every concept ``before``/``after`` training go."""
        return self.file(f"predictions_{stage}.npz")


BLOCK_NUMBERING = "from 1"  # adapter blocks in config.json: 1 = the first block, -1 = the last


def _blocks_from_1(description: dict[str, Any]) -> dict[str, Any]:
    """A config.json of a run saved when adapter blocks were counted from 0, renumbered."""
    if description.get("block_numbering") == BLOCK_NUMBERING:
        return description
    description = json.loads(json.dumps(description))
    adapters = [description["fit"].get("adapter"), description["fit"].get("adapter_resolved")]
    adapters += [step.get("adapter") for step in description.get("chain", [])]
    for adapter in adapters:
        for key in ("layers", "label_layers"):
            if isinstance(adapter, dict) and adapter.get(key):
                adapter[key] = [i + 1 if i >= 0 else i for i in adapter[key]]
    description["block_numbering"] = BLOCK_NUMBERING
    return description


def _flat(values: dict[str, Any]) -> dict[str, Any]:
    """Settings as ``{"adapter.rank": 32, ...}``, in JSON's types (tuples as lists)."""
    values = json.loads(json.dumps(values))
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            flat[key] = value
    return flat


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in flat.items():
        head, _, sub = key.partition(".")
        if sub:
            values.setdefault(head, {})[sub] = value
        else:
            values[head] = value
    return values


def _required_fields(cls: type) -> set[str]:
    return {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }


def find_runs(folder: str | os.PathLike) -> dict[str, RunDir]:
    """The runs in the sub-folders of ``folder``, by sub-folder name (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    runs = {sub.name: RunDir(sub) for sub in sorted(folder.iterdir()) if sub.is_dir()}
    return {name: run for name, run in runs.items() if run.is_run()}


def with_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with every name preceded by ``prefix`` (e.g. ``"adapter."``)."""
    return {f"{prefix}{name}": value for name, value in tensors.items()}


def strip_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------- safetensors


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None
) -> Path:
    """Write tensors (and JSON-able ``metadata``) to a safetensors file atomically."""
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = None if metadata is None else {"clip_hba": json.dumps(metadata)}
    return write_atomic(path, lambda tmp: save_file(flat, str(tmp), metadata=header))


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file; `InputError` if it is missing or damaged."""
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise InputError(f"Cannot read weights {path}: {err}") from None


def load_metadata(path: str | os.PathLike) -> dict:
    """The ``metadata`` saved with `save_tensors` (empty if none)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (OSError, SafetensorError) as err:
        raise InputError(f"Cannot read weights {path}: {err}") from None
    return json.loads(header.get("clip_hba", "{}"))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """An optimizer's state as flat tensors plus its (JSON-able) parameter groups."""
    state = optimizer.state_dict()
    tensors = {
        f"optimizer.{index}.{name}": torch.as_tensor(value)
        for index, entries in state["state"].items()
        for name, value in entries.items()
    }
    return tensors, state["param_groups"]


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list
) -> None:
    """Restore what `optimizer_tensors` saved."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
