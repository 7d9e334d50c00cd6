"""Models: backbones as block stacks, adapters, inputs, the behaviour and MEG models.

- `clip_hba.models.config`: `InputConfig`, `AdapterConfig`, `HeadConfig`, `MegModelConfig`.
- `clip_hba.models.backbones`: Hugging Face CLIP / ViT / text towers, loading, fingerprints.
- `clip_hba.models.adapters`: DoRA/LoRA through peft, placed by block and module name.
- `clip_hba.models.inputs`: concept inputs (images or texts) and the batched no-grad loop.
- `clip_hba.models.behavior`: `BehaviorModel` (backbone + head -> 66 dimensions).
- `clip_hba.models.meg`: `MegModel` (layer weights over time, noise injection).
- `clip_hba.models.inference`: embeddings of concept inputs, with their ids.
"""

from clip_hba._lazy import lazy_names
from clip_hba.models.config import (
    AdapterConfig,
    HeadConfig,
    InputConfig,
    MegModelConfig,
    absolute_path,
)

_MODULES = {
    "Backbone": "backbones",
    "BertTextTower": "backbones",
    "ClipTextTower": "backbones",
    "ClipVisionTower": "backbones",
    "Inputs": "backbones",
    "Tower": "backbones",
    "VitTower": "backbones",
    "backbone_fingerprint": "backbones",
    "first_trainable_block": "backbones",
    "load_backbone": "backbones",
    "adapter_state": "adapters",
    "add_adapters": "adapters",
    "load_adapter_state": "adapters",
    "merge_adapters": "adapters",
    "resolve_blocks": "adapters",
    "ConceptInputs": "inputs",
    "batch_rows": "inputs",
    "concept_inputs": "inputs",
    "concepts_with_inputs": "inputs",
    "eval_mode": "inputs",
    "map_batches": "inputs",
    "select_inputs": "inputs",
    "to_device": "inputs",
    "token_length": "inputs",
    "BehaviorModel": "behavior",
    "base_model": "behavior",
    "LayerWeights": "meg",
    "MegModel": "meg",
    "NoiseCurves": "meg",
    "noise_curves": "meg",
    "relative_gains": "meg",
    "embed": "inference",
    "embed_layers": "inference",
    "embed_times": "inference",
}
__getattr__ = lazy_names(__name__, _MODULES)
__all__ = [
    "AdapterConfig",
    "Backbone",
    "BehaviorModel",
    "BertTextTower",
    "ClipTextTower",
    "ClipVisionTower",
    "ConceptInputs",
    "HeadConfig",
    "InputConfig",
    "Inputs",
    "LayerWeights",
    "MegModel",
    "MegModelConfig",
    "NoiseCurves",
    "Tower",
    "VitTower",
    "absolute_path",
    "adapter_state",
    "add_adapters",
    "backbone_fingerprint",
    "base_model",
    "batch_rows",
    "concept_inputs",
    "concepts_with_inputs",
    "embed",
    "embed_layers",
    "embed_times",
    "eval_mode",
    "first_trainable_block",
    "load_adapter_state",
    "load_backbone",
    "map_batches",
    "merge_adapters",
    "noise_curves",
    "relative_gains",
    "resolve_blocks",
    "select_inputs",
    "to_device",
    "token_length",
]
