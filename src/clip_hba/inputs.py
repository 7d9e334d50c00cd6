"""Model inputs for concepts: one image per concept (CLIP) or its word and definition (text).

`ConceptInputs` keeps the tensors together with the concept id and item id of each row and a
fingerprint of their content, which keys the frozen-prefix cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from clip_hba._validation import InputError
from clip_hba.backbones import Backbone, Inputs
from clip_hba.images import find_images, load_pixels
from clip_hba.things import load_concepts

__all__ = ["ConceptInputs", "InputConfig", "concept_inputs"]


@dataclass
class InputConfig:
    """Where concept inputs come from."""

    images: str | None = None  # image folder (THINGS layout, or with images.csv / images_csv)
    images_csv: str | None = None  # CSV with columns image,concept_id
    exemplar: str = "_01b"  # THINGS layout: <concept><exemplar>.jpg
    skip_missing: bool = False  # leave out concepts without an image instead of failing
    normalization: Literal["things", "clip"] = "things"  # per-channel image mean/std
    text_template: str = "{word}: {definition}"  # text backbones: the text of a concept
    max_text_tokens: int = 64

    def __post_init__(self) -> None:
        try:
            self.text_template.format(word="w", definition="d")
        except (KeyError, IndexError, ValueError):
            raise InputError(
                "Invalid value for 'text_template': it may use {word} and {definition} only, "
                f"got {self.text_template!r}."
            ) from None


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
        if config.images is None:
            raise InputError(
                "An image backbone needs concept images: give an image folder (--images)."
            )
        found = find_images(
            config.images,
            concept_ids,
            csv_path=config.images_csv,
            exemplar=config.exemplar,
            skip_missing=config.skip_missing,
            known_ids=load_concepts(data_dir).ids if things_ids_only else None,
        )
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
