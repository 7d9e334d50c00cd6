"""Models of runs: build a run's model from its settings, and load any run (or a base model).

`load_run` takes a behaviour run, a MEG run (group or individualized) or a base model (hub id
or folder) and returns its model with the input settings it expects; unfinished runs are
refused unless asked for. The trainers build their models with the same functions, so a
loaded model is the one that was trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from clip_hba._validation import InputError
from clip_hba.data.things import load_spose_labels
from clip_hba.models.adapters import (
    adapter_state,
    add_adapters,
    load_adapter_state,
    merge_adapters,
)
from clip_hba.models.backbones import Backbone, load_backbone
from clip_hba.models.behavior import BehaviorModel, base_model
from clip_hba.models.config import AdapterConfig, HeadConfig, InputConfig
from clip_hba.models.meg import MegModel, NoiseCurves
from clip_hba.training.config import BehaviorFitConfig, FitConfig
from clip_hba.training.runs import CONFIG_FILE, RunDir, strip_prefix, with_prefix

__all__ = [
    "LoadedModel",
    "apply_chain",
    "behavior_model",
    "behavior_weights",
    "check_same_base",
    "label_features",
    "load_behavior_run",
    "load_behavior_weights",
    "load_meg_head",
    "load_meg_run",
    "load_run",
    "resolve_device",
]


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


# ---------------------------------------------------------------------------- behaviour models


def behavior_model(backbone: Backbone, config: BehaviorFitConfig) -> BehaviorModel:
    """Head + seeded adapters on ``backbone``; equal to the base model at step 0, eval mode."""
    labels = load_spose_labels(config.data_dir)
    torch.manual_seed(config.seed)
    model = BehaviorModel(backbone, labels, config.head)
    add_adapters(backbone, config.adapter, seed=config.seed)
    return model.to(resolve_device(config.device)).eval()  # peft adds modules in train mode


def behavior_weights(model: BehaviorModel) -> dict[str, torch.Tensor]:
    """What a behaviour run saves: adapters (``adapter.*``) and a linear head (``head.*``)."""
    tensors = with_prefix("adapter.", adapter_state(model.backbone))
    if model.linear is not None:
        state = {k: v.detach().clone() for k, v in model.linear.state_dict().items()}
        tensors.update(with_prefix("head.", state))
    return tensors


def load_behavior_weights(model: BehaviorModel, tensors: dict[str, torch.Tensor]) -> None:
    load_adapter_state(model.backbone, strip_prefix("adapter.", tensors))
    if model.linear is not None:
        model.linear.load_state_dict(strip_prefix("head.", tensors))
    model.reset_caches()


def load_behavior_run(
    run: RunDir | str | os.PathLike, device: str = "auto", allow_unfinished: bool = False
) -> BehaviorModel:
    """The best model of a behaviour run, in eval mode."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    run.expect("behavior", "--model").require_finished(allow_unfinished)
    config = run.fit_config()
    config.device = device
    backbone = load_backbone(config.model, allow_random_init=config.allow_random_init)
    model = behavior_model(backbone, config)
    load_behavior_weights(model, run.weights())
    return model.eval()


def label_features(backbone: Backbone, head: HeadConfig, data_dir: str | None) -> torch.Tensor:
    """The label prompts' features of a behaviour model on ``backbone``, (n_labels, P)."""
    model = BehaviorModel(backbone, load_spose_labels(data_dir), head).eval()
    with torch.no_grad():
        return model.label_features().detach().clone()


# ---------------------------------------------------------------------------- MEG models


def apply_chain(backbone: Backbone, chain: list[dict], tensors: dict[str, torch.Tensor]) -> None:
    """Add, load and merge each ancestor run's adapters (``init.<k>.*``), in order."""
    for k, link in enumerate(chain):
        add_adapters(backbone, AdapterConfig(**link["adapter"]), seed=0)
        load_adapter_state(backbone, strip_prefix(f"init.{k}.", tensors))
        merge_adapters(backbone)


def load_meg_head(model: MegModel, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved layer weights W (and dimension gains, absent in older runs) into ``model``."""
    with torch.no_grad():
        model.weights.raw.copy_(tensors["meg.layer_weights_raw"])
        if "meg.log_gains" in tensors:
            model.log_gains.copy_(tensors["meg.log_gains"])


def load_meg_run(
    run: RunDir | str | os.PathLike, device: str = "auto", allow_unfinished: bool = False
) -> MegModel:
    """The best model of a MEG run, in eval mode (noise off)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    run.expect("meg", "--model").require_finished(allow_unfinished)
    saved = run.description
    config = run.fit_config()
    tensors = run.weights()
    backbone = load_backbone(config.model, allow_random_init=config.allow_random_init)
    apply_chain(backbone, saved["chain"], tensors)
    own = strip_prefix("adapter.", tensors)
    if own:
        add_adapters(backbone, AdapterConfig(**saved["fit"]["adapter_resolved"]), seed=0)
        load_adapter_state(backbone, own)
    noise = tensors["meg.noise"].numpy()
    # runs saved before gating existed hold "meg.beta", a scale of the outputs that left their
    # RDMs unchanged: their gate is 1
    gate = tensors["meg.gate"].numpy() if "meg.gate" in tensors else np.ones(len(noise))
    curves = NoiseCurves(gate, noise)
    model = MegModel(
        backbone, tensors["meg.label_features"], np.array(saved["times_ms"]), config.meg, curves
    )
    load_meg_head(model, tensors)
    return model.to(resolve_device(device)).eval()


def check_same_base(parent: RunDir, model: str, fingerprint: str, option: str) -> None:
    """Refuse to start from ``parent`` with a base model other than the one it was trained on.

    Runs record their base model's fingerprint (`backbone_fingerprint`); runs of older
    versions are compared by the model's name or path.
    """
    saved_model = parent.description.get("base_model", parent.description["fit"]["model"])
    saved = parent.description.get("base_model_fingerprint")
    same = saved == fingerprint if saved is not None else saved_model == model
    if not same:
        described = f"{saved_model}" + (f" (fingerprint {saved[:12]})" if saved else "")
        raise InputError(
            f"{parent.path} ({option}) was trained from {described}, not from {model} "
            f"(fingerprint {fingerprint[:12]}); give --model {saved_model}."
        )


# ---------------------------------------------------------------------------- any run


@dataclass
class LoadedModel:
    """A model loaded by `load_run`, with what it expects.

    Attributes
    ----------
    kind : {"base", "behavior", "meg"}
    model : BehaviorModel or MegModel
    inputs : InputConfig
        The input settings the model was trained with (defaults for a base model).
    run : RunDir or None
    config : BehaviorFitConfig, MegFitConfig or None
    """

    kind: Literal["base", "behavior", "meg"]
    model: BehaviorModel | MegModel
    inputs: InputConfig
    run: RunDir | None = None
    config: FitConfig | None = None


def load_run(
    source: str | os.PathLike,
    device: str = "auto",
    *,
    allow_unfinished: bool = False,
    allow_random_init: bool = False,
    data_dir: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load a run directory of ``clip-hba fit`` (any kind), or a base model.

    Parameters
    ----------
    source : path or str
        A run directory (behaviour or MEG), or a hub id / ``save_pretrained`` folder, which
        gets the prompt-cosine head over the SPoSE labels of ``data_dir``.
    device : str
    allow_unfinished : bool
        Accept a run whose training did not finish (its best epoch so far).
    allow_random_init : bool
        A base model: accept weights missing from its files.

    Returns
    -------
    LoadedModel
    """
    run = RunDir(source)
    if not run.is_run():
        if run.has_checkpoint():
            raise InputError(f"{source} holds a damaged run: its {CONFIG_FILE} is missing.")
        model = base_model(source, data_dir, resolve_device(device), allow_random_init)
        return LoadedModel("base", model, InputConfig())
    config = run.fit_config()
    if run.task == "meg":
        meg = load_meg_run(run, device, allow_unfinished)
        return LoadedModel("meg", meg, config.inputs, run, config)
    behavior = load_behavior_run(run, device, allow_unfinished)
    return LoadedModel("behavior", behavior, config.inputs, run, config)
