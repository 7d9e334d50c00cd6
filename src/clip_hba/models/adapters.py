"""DoRA / LoRA adapters through peft, placed by block number and module name."""

from __future__ import annotations

import logging

import torch
from peft import (
    LoraConfig,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)

from clip_hba._validation import InputError
from clip_hba.models.backbones import Backbone, Tower
from clip_hba.models.config import AdapterConfig

__all__ = [
    "adapter_state",
    "add_adapters",
    "freeze_magnitudes",
    "load_adapter_state",
    "merge_adapters",
    "remove_adapters",
    "resolve_blocks",
]

logger = logging.getLogger(__name__)


def resolve_blocks(tower: Tower, layers: tuple[int, ...], name: str = "layers") -> list[int]:
    """Python indices (from 0, sorted) of the blocks ``layers`` names, counted from 1 (-1 =
    the last), as everywhere in clip-hba's options and outputs; `InputError` if out of range.
    """
    n = tower.n_blocks
    bad = [i for i in layers if not (-n <= i <= n and i != 0)]
    if bad:
        raise InputError(
            f"Invalid value for {name!r}: the tower has blocks 1..{n} (or -{n}..-1 from the end), "
            f"but got {bad}."
        )
    return sorted({i - 1 if i > 0 else i % n for i in layers})


def target_module_names(backbone: Backbone, config: AdapterConfig) -> list[str]:
    """Dotted names of the modules that receive adapters."""
    placements = [(backbone.concept_tower, config.layers, "layers")]
    if backbone.label_tower is not None and not backbone.shared_towers:
        placements.append((backbone.label_tower, config.label_layers, "label_layers"))
    names = []
    for tower, layers, option in placements:
        modules = config.modules or (tower.attention_output,)
        for block in resolve_blocks(tower, layers, option):
            names += [f"{tower.block_prefix}.{block}.{module}" for module in modules]
    existing = {n for n, _ in backbone.model.named_modules()}
    missing = [n for n in names if n not in existing]
    if missing:
        raise InputError(
            f"No module named {missing[0]!r} in {backbone.name_or_path} ({len(missing)} of "
            f"{len(names)} adapter targets missing); check 'modules' = {config.modules}."
        )
    return names


def add_adapters(backbone: Backbone, config: AdapterConfig, seed: int = 0) -> list[str]:
    """Inject adapters into ``backbone.model`` in place; only they are trainable afterwards.

    The low-rank factors start as ``B = 0`` (so the model equals the base model at step 0) and a
    seeded random ``A``. Returns the names of the adapted modules.
    """
    names = target_module_names(backbone, config)
    if not names:
        return names
    peft_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        use_dora=config.use_dora,
        lora_dropout=config.dropout,
        target_modules=names,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(peft_config, backbone.model)
    for param_name, param in backbone.model.named_parameters():
        param.requires_grad = "lora_" in param_name
    logger.info(
        "Adapters (%s, rank %d) on %s",
        "DoRA" if config.use_dora else "LoRA",
        config.rank,
        ", ".join(names),
    )
    return names


def adapter_state(backbone: Backbone) -> dict[str, torch.Tensor]:
    """The adapter weights only (what training changed), as a flat tensor mapping."""
    if not hasattr(backbone.model, "peft_config"):
        return {}
    state = get_peft_model_state_dict(backbone.model)
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def load_adapter_state(backbone: Backbone, state: dict[str, torch.Tensor]) -> None:
    """Load weights saved by `adapter_state` into a backbone given the same adapters."""
    if not state:
        return
    result = set_peft_model_state_dict(backbone.model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise InputError(f"Adapter weights do not fit this model: unexpected {unexpected[:3]}.")


def merge_adapters(backbone: Backbone) -> int:
    """Fold every adapter into its base weight and remove it; the backbone is frozen after.

    Used to start a run from another run's fine-tuned weights: the merged model computes what
    the adapted one did, and new adapters can then be added on top. Returns how many merged.
    """
    return _strip_adapters(backbone, merge=True)


def remove_adapters(backbone: Backbone) -> int:
    """Remove every adapter without merging (the base weights again); frozen after."""
    return _strip_adapters(backbone, merge=False)


def freeze_magnitudes(backbone: Backbone) -> int:
    """Stop DoRA's magnitude vectors from training (only the directions train); how many."""
    frozen = 0
    for name, param in backbone.model.named_parameters():
        if "lora_magnitude_vector" in name:
            param.requires_grad = False
            frozen += 1
    return frozen


def _strip_adapters(backbone: Backbone, merge: bool) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = backbone.model
    stripped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            if merge:
                module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
            stripped += 1
    if hasattr(model, "peft_config"):
        del model.peft_config
    for param in model.parameters():
        param.requires_grad = False
    return stripped
