"""Model inputs for concepts, and running a model over them batch by batch.

`concept_inputs` makes the images of each concept (CLIP, ViT: one exemplar, or all of them) or
its word and definition (text encoders); `ConceptInputs` keeps the tensors together with the
concept id and item id of each row and a fingerprint of their content, which keys the
frozen-prefix cache; `ConceptInputs.concept_means` turns per-row outputs into one per concept.
`map_batches` is the one no-grad loop over rows that every inference and cache uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from clip_hba._validation import InputError
from clip_hba.data.images import ImagePixels, ImageSet, find_images
from clip_hba.data.things import load_concepts
from clip_hba.models.backbones import Backbone, Inputs
from clip_hba.models.config import InputConfig
from clip_hba.models.precision import autocast, full_precision

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
    """Input tensors, one row per item (an image, or a concept's text), with ids.

    Attributes
    ----------
    tensors : dict of str to Tensor
        Batch-first model inputs: ``pixel_values`` (a Tensor, or for image sets above 2 GiB the
        `ImagePixels` that reads them by row from disk) or ``input_ids``/``attention_mask``.
    concept_ids : tuple of str
        The concept of each row; a concept with several images has several (consecutive) rows.
    item_ids : tuple of str
        Image file names, or the concept ids for text inputs.
    fingerprint : str
        sha256 of the content the tensors were made from (image bytes, their concepts and the
        preprocessing, or token ids).
    images : ImagePixels, optional
        Image inputs: where the pixels come from (for augmented or corrupted versions).
    """

    tensors: Inputs
    concept_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    fingerprint: str
    images: ImagePixels | None = None
    _rows: dict[str, list[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rows = {}
        for k, concept in enumerate(self.concept_ids):
            self._rows.setdefault(concept, []).append(k)

    def __len__(self) -> int:
        return len(self.concept_ids)

    def __contains__(self, concept_id: object) -> bool:
        return concept_id in self._rows

    @property
    def concepts(self) -> tuple[str, ...]:
        """Every concept once, in the order of its first row."""
        return tuple(self._rows)

    def rows(self, concept_ids: Sequence[str]) -> torch.Tensor:
        """Every row of each of ``concept_ids``, concept by concept."""
        return torch.tensor([k for c in concept_ids for k in self._rows[c]], dtype=torch.long)

    def concept_means(
        self, values: torch.Tensor, rows: torch.Tensor, dim: int = 0
    ) -> tuple[tuple[str, ...], torch.Tensor]:
        """Mean of the outputs of each concept's rows.

        Parameters
        ----------
        values : Tensor
            The outputs of ``rows``, one per row along ``dim``.
        rows : Tensor of int
            The input rows ``values`` belong to.
        dim : int
            The axis of ``values`` that counts rows.

        Returns
        -------
        concept_ids : tuple of str
            The concepts of ``rows``, in the order of their first row there.
        means : Tensor, ``values`` with ``dim`` of length ``len(concept_ids)``
        """
        concepts = [self.concept_ids[k] for k in rows.tolist()]
        order = {c: None for c in concepts}
        position = {c: k for k, c in enumerate(order)}
        if len(position) == len(concepts):
            return tuple(order), values
        group = torch.tensor([position[c] for c in concepts], device=values.device)
        moved = values.movedim(dim, 0)
        sums = moved.new_zeros((len(position), *moved.shape[1:])).index_add_(0, group, moved)
        counts = torch.bincount(group, minlength=len(position)).to(moved.dtype)
        means = sums / counts.view(-1, *([1] * (moved.ndim - 1)))
        return tuple(order), means.movedim(0, dim)

    def with_pixels(self, pixels: ImagePixels) -> ConceptInputs:
        """The same rows and ids with other pixels (e.g. corrupted, read from disk by row),
        fingerprinted as such."""
        digest = hashlib.sha256(f"{self.fingerprint}/{pixels!r}".encode()).hexdigest()
        tensors = {**self.tensors, "pixel_values": pixels}
        return dataclasses.replace(self, tensors=tensors, fingerprint=digest, images=pixels)

    def items_of(self, concept_id: str) -> list[str]:
        """The item ids (image files) of one concept."""
        return [self.item_ids[k] for k in self._rows[concept_id]]

    def item_ids_of(self, concept_ids: Sequence[str]) -> tuple[str, ...]:
        """For each concept, its items' ids joined by ``;`` (the images a mean is over)."""
        return tuple(";".join(self.items_of(c)) for c in concept_ids)

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
        images = ImagePixels(found.paths, size, config.normalization)
        # loaded once when small; a larger set is read from disk batch by batch
        pixels = images[range(len(images))] if images.fits_in_memory else images
        digest = hashlib.sha256(f"{size}/{config.normalization}".encode())
        for path in found.paths:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        if len(set(found.concept_ids)) < len(found):  # several images per concept: which ones
            digest.update("\n".join(found.concept_ids).encode())
        return ConceptInputs(
            {"pixel_values": pixels},
            found.concept_ids,
            found.image_ids,
            digest.hexdigest(),
            images,
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
    precision: str = "fp32",
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
    precision : {"fp32", "bf16", "fp16"}
        Run ``function`` under `autocast`; half-format outputs come back as float32.

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
            with autocast(precision, device):
                parts.append(full_precision(function(batch)).cpu())
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
