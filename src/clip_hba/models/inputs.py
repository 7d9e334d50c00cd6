"""Model inputs for concepts, and running a model over them batch by batch.

`concept_inputs` makes one image per concept (CLIP, ViT) or its word and definition (text
encoders); `ConceptInputs` keeps the tensors together with the concept id and item id of each
row and a fingerprint of their content, which keys the frozen-prefix cache. `map_batches` is
the one no-grad loop over rows that every inference and cache uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from clip_hba._validation import InputError
from clip_hba.data.images import ImageSet, find_images, load_pixels
from clip_hba.data.things import load_concepts
from clip_hba.models.backbones import Backbone, Inputs
from clip_hba.models.config import InputConfig

__all__ = [
    "ConceptInputs",
    "batch_rows",
    "concept_inputs",
    "concepts_with_inputs",
    "eval_mode",
    "map_batches",
    "select_inputs",
    "to_device",
    "token_length",
]


@dataclass
class ConceptInputs:
    """Input tensors, one row per item, with ids.

    Attributes
    ----------
    tensors : dict of str to Tensor
        Batch-first model inputs (``pixel_values`` or ``input_ids``/``attention_mask``).
    concept_ids : tuple of str
    item_ids : tuple of str
        Image file names, or the concept ids for text inputs.
    fingerprint : str
        sha256 of the content the tensors were made from (image bytes and preprocessing, or
        token ids).
    """

    tensors: Inputs
    concept_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    fingerprint: str
    _row: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._row = {c: k for k, c in enumerate(self.concept_ids)}

    def __len__(self) -> int:
        return len(self.concept_ids)

    def __contains__(self, concept_id: object) -> bool:
        return concept_id in self._row

    def rows(self, concept_ids: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self._row[c] for c in concept_ids], dtype=torch.long)

    @property
    def aux(self) -> Inputs:
        """The tensors a tower needs besides its cached hidden states (not the pixels)."""
        return {k: v for k, v in self.tensors.items() if k != "pixel_values"}


def concept_inputs(
    backbone: Backbone,
    concept_ids: Sequence[str] | None,
    config: InputConfig,
    data_dir: str | os.PathLike | None = None,
    things_ids_only: bool = True,
) -> ConceptInputs:
    """Inputs for ``concept_ids``: images for CLIP, word + definition for a text encoder.

    ``concept_ids=None`` takes every image found (CLIP) or every THINGS concept (text). With
    ``things_ids_only`` an image list naming a concept outside THINGS is an error.
    """
    if backbone.kind in ("clip", "vision"):
        known = load_concepts(data_dir).ids if things_ids_only else None
        found = _images(config, concept_ids, config.skip_missing, known)
        size = backbone.concept_tower.image_size
        pixels = load_pixels(found.paths, size, config.normalization)
        digest = hashlib.sha256(f"{size}/{config.normalization}".encode())
        for path in found.paths:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return ConceptInputs(
            {"pixel_values": pixels}, found.concept_ids, found.image_ids, digest.hexdigest()
        )
    concepts = load_concepts(data_dir)
    concept_ids = concepts.ids if concept_ids is None else concept_ids
    rows = concepts.index(list(concept_ids))
    texts = [
        config.text_template.format(word=concepts.words[r], definition=concepts.definitions[r])
        for r in rows
    ]
    tensors = backbone.tokenize(texts, max_length=config.max_text_tokens)
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + tensors[name].numpy().tobytes())
    ids = tuple(concept_ids)
    return ConceptInputs(tensors, ids, ids, digest.hexdigest())


def select_inputs(
    inputs: Inputs, rows: torch.Tensor | np.ndarray | Sequence[int], trim: bool = True
) -> Inputs:
    """The given rows of every input tensor; with ``trim``, without all-padding token columns."""
    index = torch.as_tensor(rows, dtype=torch.long)
    selected = {k: v[index] for k, v in inputs.items()}
    length = token_length(selected) if trim else None
    if length is None:
        return selected
    return {k: v[:, :length] if v.ndim == 2 else v for k, v in selected.items()}


def to_device(inputs: Inputs, device: torch.device | str) -> Inputs:
    """Every input tensor on ``device``."""
    return {k: v.to(device) for k, v in inputs.items()}


def token_length(inputs: Inputs) -> int | None:
    """Number of leading token positions that hold a real token in some row (None: no tokens).

    Padding is masked out of attention and pooling, so dropping columns that are padding in
    every row changes nothing but the work done.
    """
    mask = inputs.get("attention_mask")
    if mask is None or mask.numel() == 0:
        return None
    return int(mask.any(dim=0).nonzero().max()) + 1


def batch_rows(n: int, batch_size: int) -> Iterator[range]:
    """Consecutive row ranges of at most ``batch_size`` covering ``range(n)``."""
    if batch_size < 1:
        raise InputError(f"Invalid value for 'batch_size': expected >= 1, got {batch_size}.")
    for start in range(0, n, batch_size):
        yield range(start, min(start + batch_size, n))


def map_batches(
    function: Callable[[Inputs], torch.Tensor],
    tensors: Inputs,
    batch_size: int,
    device: torch.device | str,
    *,
    dim: int = 0,
    trim: bool = True,
    desc: str | None = None,
) -> torch.Tensor:
    """``function`` over batches of input rows without gradients, concatenated on the CPU.

    Parameters
    ----------
    function : callable
        Inputs of a batch (on ``device``) -> Tensor with the batch along ``dim``.
    tensors : dict of str to Tensor
        Batch-first inputs.
    batch_size : int
    device : torch device
    dim : int
        Axis of the output that counts rows.
    trim : bool
        Drop token columns that are padding in every row of a batch (see `select_inputs`).
    desc : str, optional
        Show a progress bar with this label.

    Returns
    -------
    Tensor, the outputs of every row in order along ``dim``.
    """
    n = len(next(iter(tensors.values())))
    parts = []
    batches = tqdm(list(batch_rows(n, batch_size)), desc=desc, disable=desc is None, leave=False)
    with torch.no_grad():
        for rows in batches:
            batch = to_device(select_inputs(tensors, rows, trim=trim), device)
            parts.append(function(batch).cpu())
    return torch.cat(parts, dim=dim)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` in eval mode (no dropout) and give every submodule its mode back after."""
    modes = {sub: sub.training for sub in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for sub, training in modes.items():
            sub.training = training


def concepts_with_inputs(
    backbone: Backbone,
    concept_ids: Sequence[str],
    config: InputConfig,
    data_dir: str | os.PathLike | None = None,
) -> list[str]:
    """The concepts of ``concept_ids`` that have an image (image models) or a THINGS text."""
    if backbone.kind in ("clip", "vision"):
        with_inputs = set(_images(config, concept_ids, skip_missing=True).concept_ids)
    else:
        with_inputs = set(load_concepts(data_dir).ids)
    return [c for c in concept_ids if c in with_inputs]


def _images(
    config: InputConfig,
    concept_ids: Sequence[str] | None,
    skip_missing: bool,
    known_ids: Sequence[str] | None = None,
) -> ImageSet:
    if config.images is None:
        raise InputError("An image backbone needs concept images: give an image folder (--images).")
    return find_images(
        config.images,
        concept_ids,
        csv_path=config.images_csv,
        exemplar=config.exemplar,
        skip_missing=skip_missing,
        known_ids=known_ids,
    )
