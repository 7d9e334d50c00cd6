"""Where a CLIP-HBA-MEG run starts: the base model, a behaviour run or a MEG run.

The ancestors' adapters are merged into the backbone (their weights kept as ``init.<k>.*``
so that any run loads alone), and the label embeddings come from the behaviour model (or the
parent MEG run, or the base model) and stay frozen. With ``init="base"`` a run takes the
behaviour model's label embeddings but keeps the base model's concept tower (the reference
implementation's group model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clip_hba._validation import InputError
from clip_hba.models.adapters import (
    add_adapters,
    load_adapter_state,
    merge_adapters,
    remove_adapters,
)
from clip_hba.models.backbones import Backbone
from clip_hba.models.config import HeadConfig
from clip_hba.training.config import MegFitConfig
from clip_hba.training.load import apply_chain, check_same_base, label_features
from clip_hba.training.runs import RunDir, strip_prefix, with_prefix

__all__ = ["MegStart", "meg_start"]


@dataclass
class MegStart:
    """What a new run starts from: merged ancestors, label embeddings, initial W and gains."""

    chain: list[dict]
    chain_tensors: dict[str, torch.Tensor]
    label_features: torch.Tensor
    head: dict[str, torch.Tensor] | None  # the parent MEG run's "meg.layer_weights_raw", ...
    labels_from: str | None = None  # the run whose label embeddings these are (None: base)


def meg_start(
    config: MegFitConfig, backbone: Backbone, base_fingerprint: str, allow_unfinished: bool
) -> MegStart:
    """Prepare ``backbone`` (in place) as the start of the run ``config`` describes."""
    if config.init_meg is not None:
        parent = RunDir(config.init_meg).expect("meg", "--group-run")
        parent.require_finished(allow_unfinished)
        check_same_base(parent, config.model, base_fingerprint, "--group-run")
        _check_same_features(parent, config)
        saved, tensors = parent.description, parent.weights()
        chain = list(saved["chain"])
        chain_tensors = {k: v for k, v in tensors.items() if k.startswith("init.")}
        own = strip_prefix("adapter.", tensors)
        if own:
            chain.append({"adapter": saved["fit"]["adapter_resolved"], "source": str(parent.path)})
            chain_tensors.update(with_prefix(f"init.{len(chain) - 1}.", own))
        apply_chain(backbone, chain, chain_tensors)
        labels_from = saved.get("labels_from", str(parent.path))
        return MegStart(chain, chain_tensors, tensors["meg.label_features"], tensors, labels_from)
    if config.init_behavior is not None:
        parent = RunDir(config.init_behavior).expect("behavior", "--init-behavior")
        parent.require_finished(allow_unfinished)
        check_same_base(parent, config.model, base_fingerprint, "--init-behavior")
        behavior = parent.fit_config()
        chain = [{"adapter": behavior.adapter.to_dict(), "source": str(parent.path)}]
        adapters = strip_prefix("adapter.", parent.weights())
        add_adapters(backbone, behavior.adapter, seed=0)
        load_adapter_state(backbone, adapters)
        labels = label_features(backbone, behavior.head, config.data_dir)
        if config.init == "base":  # the behaviour model's labels, the base model's tower
            remove_adapters(backbone)
            return MegStart([], {}, labels, None, str(parent.path))
        merge_adapters(backbone)
        return MegStart(chain, with_prefix("init.0.", adapters), labels, None, str(parent.path))
    return MegStart([], {}, label_features(backbone, HeadConfig(), config.data_dir), None)


def _check_same_features(parent: RunDir, config: MegFitConfig) -> None:
    """A child mixes the features its parent's W was fitted on, or refuses."""
    theirs, ours = parent.fit_config().meg.layer_features, config.meg.layer_features
    if theirs != ours:
        raise InputError(
            f"{parent.path} mixes {theirs!r} layer features, this run {ours!r}; give "
            f"--layer-features {theirs}."
        )
