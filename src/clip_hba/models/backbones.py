"""Hugging Face backbones seen as block stacks: inputs -> embeddings -> blocks -> pooled features.

A `Tower` exposes the three stages separately so that frozen leading blocks can be run once and
cached (`Tower.hidden_at`), and training runs only the trainable suffix (`Tower.features_from`).
Four towers cover the backbones of clip-hba: CLIP's vision tower (class token -> post-norm ->
visual projection), CLIP's text tower (end-of-text token -> final norm -> text projection), a
ViT (class token -> final norm; no text tower, so the linear head) and a BERT-style text
encoder such as all-MiniLM-L6-v2 (mean over tokens, as sentence-transformers).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn

from clip_hba._validation import InputError
from clip_hba.models.hub import load_failure, resolve_model_source

__all__ = [
    "Backbone",
    "BertTextTower",
    "ClipTextTower",
    "ClipVisionTower",
    "Tower",
    "VitTower",
    "backbone_fingerprint",
    "first_trainable_block",
    "load_backbone",
]

logger = logging.getLogger(__name__)

Inputs = dict[str, torch.Tensor]  # batch-first tensors, e.g. {"pixel_values": (B, 3, H, W)}


class Tower(nn.Module):
    """A stack of transformer blocks between an input embedding and a pooled output.

    Subclasses define `embed` (inputs -> hidden states entering block 0), `attention_bias`
    (additive mask or None), `pool` (last hidden states -> features) and, where the output
    depends on one token only, `pooled_position`.
    """

    blocks: nn.ModuleList
    hf_config: Any  # the Hugging Face config of the model the tower belongs to
    block_prefix: str  # dotted name of ``blocks`` inside the Hugging Face model
    attention_output: str  # name of the attention output projection inside one block
    feature_dim: int

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def embed(self, inputs: Inputs) -> torch.Tensor:
        raise NotImplementedError

    def attention_bias(self, inputs: Inputs, dtype: torch.dtype) -> torch.Tensor | None:
        raise NotImplementedError

    def pool(self, hidden: torch.Tensor, inputs: Inputs, normed: bool = True) -> torch.Tensor:
        """Pooled features (B, P); ``normed=False`` skips the tower's final norm, if any."""
        raise NotImplementedError

    def pooled_position(self, hidden: torch.Tensor, inputs: Inputs) -> torch.Tensor | None:
        """Index of the one token the pooled output reads, shape (B,), or None (all tokens)."""
        return None

    def hidden_at(self, inputs: Inputs, block: int) -> torch.Tensor:
        """Hidden states entering ``blocks[block]``, shape (B, S, D)."""
        hidden = self.embed(inputs)
        bias = self.attention_bias(inputs, hidden.dtype)
        for layer in self.blocks[:block]:
            hidden = layer(hidden, bias)
        return hidden

    def features_from(
        self, hidden: torch.Tensor, inputs: Inputs, block: int, pooled_only: bool = True
    ) -> torch.Tensor:
        """Pooled features from the hidden states entering ``blocks[block]``, shape (B, P).

        With ``pooled_only`` the last block computes only the token that the pooling reads
        (its query, attention output and MLP), which gives the same features for less work; a
        last block in train mode (dropout) always runs whole.
        """
        bias = self.attention_bias(inputs, hidden.dtype)
        shortcut = pooled_only and not self.blocks[-1].training
        position = self.pooled_position(hidden, inputs) if shortcut else None
        stop = self.n_blocks - 1 if position is not None else self.n_blocks
        for layer in self.blocks[block:stop]:
            hidden = layer(hidden, bias)
        if position is not None and block < self.n_blocks:
            token = _block_at_token(self.blocks[-1], hidden, bias, position)
            rows = torch.arange(len(hidden), device=hidden.device)
            hidden = hidden.index_put((rows, position), token)
        return self.pool(hidden, inputs)

    def layer_features(self, inputs: Inputs, normed: bool = True) -> torch.Tensor:
        """The tower's pooling applied after every block, shape (n_blocks, B, P).

        CLIP: each block's class (or end-of-text) token from the residual stream, through the
        final norm (``normed``) and the projection; ViT: the class token (normed or not);
        BERT-style encoders (no final norm): each block's masked mean over tokens. With
        ``normed`` the last row equals `forward`.
        """
        hidden = self.embed(inputs)
        bias = self.attention_bias(inputs, hidden.dtype)
        features = []
        for layer in self.blocks:
            hidden = layer(hidden, bias)
            features.append(self.pool(hidden, inputs, normed))
        return torch.stack(features)

    def forward(self, inputs: Inputs) -> torch.Tensor:
        """Pooled features of ``inputs`` through every block, shape (B, P)."""
        return self.features_from(self.embed(inputs), inputs, 0, pooled_only=False)


def _block_at_token(
    layer: nn.Module, hidden: torch.Tensor, bias: torch.Tensor | None, position: torch.Tensor
) -> torch.Tensor:
    """Output of a pre-norm CLIP block at one token per sequence, shape (B, D).

    Keys and values still come from every token; the query, attention output, residual and MLP
    are computed for the token at ``position`` only.
    """
    attn = layer.self_attn
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    normed = layer.layer_norm1(hidden)  # (B, S, D)
    batch, length, width = normed.shape
    heads, head_dim = attn.num_heads, attn.head_dim

    def split(x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, H, L, hd)
        return x.view(batch, x.shape[1], heads, head_dim).transpose(1, 2)

    query = split(attn.q_proj(normed[rows, position][:, None]))
    key, value = split(attn.k_proj(normed)), split(attn.v_proj(normed))
    mask = (
        None
        if bias is None
        else bias.expand(batch, 1, length, length)[rows, :, position][:, :, None]
    )
    mixed = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=attn.scale)
    token = hidden[rows, position] + attn.out_proj(mixed.transpose(1, 2).reshape(batch, width))
    return token + layer.mlp(layer.layer_norm2(token))


class ClipVisionTower(Tower):
    """CLIP's image tower: patches + class token -> blocks -> post-norm(class) -> projection."""

    block_prefix = "vision_model.encoder.layers"
    attention_output = "self_attn.out_proj"

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.hf_config = clip.config
        self.vision = clip.vision_model
        self.projection = clip.visual_projection
        self.blocks = self.vision.encoder.layers
        self.feature_dim = self.projection.out_features
        self.image_size = clip.config.vision_config.image_size

    def embed(self, inputs: Inputs) -> torch.Tensor:
        return self.vision.pre_layrnorm(self.vision.embeddings(inputs["pixel_values"]))

    def attention_bias(self, inputs: Inputs, dtype: torch.dtype) -> None:
        return None

    def pooled_position(self, hidden: torch.Tensor, inputs: Inputs) -> torch.Tensor:
        return torch.zeros(len(hidden), dtype=torch.long, device=hidden.device)

    def pool(self, hidden: torch.Tensor, inputs: Inputs, normed: bool = True) -> torch.Tensor:
        token = hidden[:, 0]
        return self.projection(self.vision.post_layernorm(token) if normed else token)


class ClipTextTower(Tower):
    """CLIP's text tower: causal blocks -> final norm at the end-of-text token -> projection."""

    block_prefix = "text_model.encoder.layers"
    attention_output = "self_attn.out_proj"

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.hf_config = clip.config
        self.text = clip.text_model
        self.projection = clip.text_projection
        self.blocks = self.text.encoder.layers
        self.feature_dim = self.projection.out_features
        self.eos_token_id = clip.config.text_config.eos_token_id

    def embed(self, inputs: Inputs) -> torch.Tensor:
        return self.text.embeddings(input_ids=inputs["input_ids"])

    def attention_bias(self, inputs: Inputs, dtype: torch.dtype) -> torch.Tensor:
        length = inputs["input_ids"].shape[1]
        device = inputs["input_ids"].device
        allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
        allowed = allowed & inputs["attention_mask"][:, None, None, :].bool()
        bias = torch.zeros(allowed.shape, dtype=dtype, device=device)
        return bias.masked_fill(~allowed, torch.finfo(dtype).min)

    def pooled_position(self, hidden: torch.Tensor, inputs: Inputs) -> torch.Tensor:
        ids = inputs["input_ids"]
        if self.eos_token_id == 2:  # legacy CLIP configs: the end token has the largest id
            return ids.argmax(dim=-1)
        return (ids == self.eos_token_id).int().argmax(dim=-1)

    def pool(self, hidden: torch.Tensor, inputs: Inputs, normed: bool = True) -> torch.Tensor:
        rows = torch.arange(len(hidden), device=hidden.device)
        token = hidden[rows, self.pooled_position(hidden, inputs)]
        return self.projection(self.text.final_layer_norm(token) if normed else token)


class BertTextTower(Tower):
    """A BERT-style encoder (e.g. all-MiniLM-L6-v2): blocks -> mean over the real tokens."""

    block_prefix = "encoder.layer"
    attention_output = "attention.output.dense"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf_config = model.config
        self.model = model
        self.blocks = model.encoder.layer
        self.feature_dim = model.config.hidden_size

    def embed(self, inputs: Inputs) -> torch.Tensor:
        return self.model.embeddings(
            input_ids=inputs["input_ids"], token_type_ids=inputs.get("token_type_ids")
        )

    def attention_bias(self, inputs: Inputs, dtype: torch.dtype) -> torch.Tensor:
        padding = ~inputs["attention_mask"][:, None, None, :].bool()
        bias = torch.zeros(padding.shape, dtype=dtype, device=padding.device)
        return bias.masked_fill(padding, torch.finfo(dtype).min)

    def pool(self, hidden: torch.Tensor, inputs: Inputs, normed: bool = True) -> torch.Tensor:
        # post-norm blocks: every block's output is already normed, there is no final norm
        weights = inputs["attention_mask"][..., None].to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class VitTower(Tower):
    """A vision transformer (ViT): patches + class token -> blocks -> final norm(class token)."""

    block_prefix = "layers"
    attention_output = "attention.o_proj"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf_config = model.config
        self.model = model
        self.blocks = model.layers
        self.feature_dim = model.config.hidden_size
        self.image_size = model.config.image_size

    def embed(self, inputs: Inputs) -> torch.Tensor:
        return self.model.embeddings(inputs["pixel_values"])

    def attention_bias(self, inputs: Inputs, dtype: torch.dtype) -> None:
        return None

    def pool(self, hidden: torch.Tensor, inputs: Inputs, normed: bool = True) -> torch.Tensor:
        return self.model.layernorm(hidden[:, 0]) if normed else hidden[:, 0]


@dataclass
class Backbone:
    """A loaded model with the tower that encodes concepts and, if any, the tower for labels.

    Attributes
    ----------
    model : nn.Module
        The Hugging Face model (adapters are injected into it).
    concept_tower : Tower
        Encodes the concept inputs: CLIP's vision tower, or a text encoder.
    label_tower : Tower or None
        Encodes the label prompts of the prompt-cosine head: CLIP's text tower, or the same text
        encoder as ``concept_tower`` (shared weights).
    tokenizer : Any
        Tokenizer of the text tower, or None.
    name_or_path : str
        What was loaded (a hub id or a local directory).
    kind : {"clip", "vision", "text"}
        ``vision`` backbones (ViT) have no text tower and use the linear head.
    """

    model: nn.Module
    concept_tower: Tower
    label_tower: Tower | None
    tokenizer: Any
    name_or_path: str
    kind: str

    @property
    def shared_towers(self) -> bool:
        return self.label_tower is self.concept_tower

    def tokenize(self, texts: list[str], max_length: int = 77) -> Inputs:
        """Token ids and attention mask of ``texts``, padded to the longest, as tensors."""
        if self.tokenizer is None:
            raise InputError(f"The backbone {self.name_or_path} has no tokenizer.")
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        keep = ("input_ids", "attention_mask", "token_type_ids")
        return {k: v for k, v in encoded.items() if k in keep}


def load_backbone(
    name_or_path: str | os.PathLike, *, local_only: bool = False, allow_random_init: bool = False
) -> Backbone:
    """Load a CLIP model, a ViT or a BERT-style text encoder from a hub id or a local directory.

    Parameters
    ----------
    name_or_path : str or path
        E.g. ``"openai/clip-vit-large-patch14"`` or a folder written by ``save_pretrained``.
    local_only : bool
        Never contact the hub (also the case when ``HF_HUB_OFFLINE=1``).
    allow_random_init : bool
        Accept weights that the folder does not provide (Hugging Face initialises them at
        random); by default that is an error, since such a model is not the one named.

    Returns
    -------
    Backbone
        In eval mode, every parameter frozen (adapters are added later).
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars and one-line errors only
    where = resolve_model_source(name_or_path, local_only)
    source, local_only = where.name, where.local_only
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as err:
        raise load_failure(where, err, "model config") from None
    if config.model_type not in {"clip", "vit", "bert", "roberta", "xlm-roberta"}:
        raise InputError(
            f"Unsupported backbone type {config.model_type!r} in {source!r}; expected CLIP, ViT "
            "or a BERT-style text encoder (bert, roberta, xlm-roberta)."
        )
    loader = CLIPModel if config.model_type == "clip" else AutoModel
    try:
        model, info = loader.from_pretrained(
            source, local_files_only=local_only, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise load_failure(where, err, "model weights") from None
    if config.model_type == "clip":
        concept, label, kind = ClipVisionTower(model), ClipTextTower(model), "clip"
    elif config.model_type == "vit":
        concept, label, kind = VitTower(model), None, "vision"
    else:
        concept = label = BertTextTower(model)
        kind = "text"
    if not allow_random_init:
        _check_weights_loaded(source, info)
    tokenizer = None
    if kind != "vision":
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        except (OSError, ValueError, TypeError):
            logger.warning("No tokenizer found in %s; the prompt-cosine head needs one.", source)
    model.eval().requires_grad_(False)
    return Backbone(model, concept, label, tokenizer, source, kind)


def _check_weights_loaded(source: str, info: dict[str, Any]) -> None:
    """Refuse a model some of whose weights were not in its files (initialised at random)."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(
        str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ()
    )
    bad = missing + mismatched
    if bad:
        shown = ", ".join(bad[:3]) + (f", ... ({len(bad) - 3} more)" if len(bad) > 3 else "")
        raise InputError(
            f"{source} does not hold {len(bad)} weight(s) of its model ({shown}): they would be "
            "initialised at random. Check that the folder's weights match its config.json, or "
            "pass --allow-random-init if you mean it."
        )


def first_trainable_block(tower: Tower) -> int:
    """Number of leading blocks (and so the embedding) with no trainable parameter."""
    for k, block in enumerate(tower.blocks):
        if any(p.requires_grad for p in block.parameters()):
            return k
    return tower.n_blocks


def backbone_fingerprint(backbone: Backbone) -> str:
    """sha256 of a backbone's architecture (its config) and every weight, as loaded.

    Call it before adapters are added: it identifies the base model whatever its name (a hub
    id or a local copy), so that a run is never continued or combined with another model.
    """
    config = {
        k: v
        for k, v in backbone.model.config.to_dict().items()
        if not k.startswith("_") and k != "transformers_version"
    }
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(backbone.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
