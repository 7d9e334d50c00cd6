"""Concept images: finding one image per concept, and turning images into normalised tensors.

Two layouts are read: the THINGS layout ``object_images/<concept>/<concept>_01b.jpg`` (one
exemplar per concept, chosen by its suffix), and any folder with a CSV of ``image,concept_id``
rows (image paths relative to the folder).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from clip_hba._validation import InputError, check_option, preview

__all__ = [
    "NORMALIZATIONS",
    "ImageSet",
    "find_images",
    "load_pixels",
]

logger = logging.getLogger(__name__)

# (mean, std) per RGB channel
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "things": ((0.530, 0.481, 0.419), (0.276, 0.266, 0.282)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
Normalization = Literal["things", "clip"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageSet:
    """Image files with the concept id each one shows.

    Attributes
    ----------
    paths : tuple of Path
    concept_ids : tuple of str
        Same length as ``paths``.
    """

    paths: tuple[Path, ...]
    concept_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_ids(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.paths)


def find_images(
    root: str | os.PathLike,
    concept_ids: Sequence[str] | None = None,
    *,
    csv_path: str | os.PathLike | None = None,
    exemplar: str = "_01b",
    skip_missing: bool = False,
    known_ids: Sequence[str] | None = None,
) -> ImageSet:
    """One image per concept from a THINGS-layout folder or a folder plus CSV.

    Parameters
    ----------
    root : path
        THINGS images (``root/object_images/<concept>/...`` or ``root/<concept>/...``), or the
        folder that the CSV's image paths are relative to.
    concept_ids : sequence of str, optional
        Concepts that need an image, in the order wanted. Default: every concept found.
    csv_path : path, optional
        CSV with columns ``image,concept_id`` (a header row is required). Without it, a file
        ``images.csv`` in ``root`` is used if present, else the THINGS layout.
    exemplar : str
        THINGS layout: the file-name suffix of the exemplar to use (``<concept><exemplar>.jpg``).
    skip_missing : bool
        Leave out concepts without an image (logged with a count) instead of failing.
    known_ids : sequence of str, optional
        If given, every concept id that the CSV names must be one of them (catches typos such
        as ``camera`` for ``camera1``).

    Returns
    -------
    ImageSet
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"Image folder {root} does not exist or is not a directory.")
    if csv_path is None and (root / "images.csv").is_file():
        csv_path = root / "images.csv"
    found = _from_csv(root, Path(csv_path)) if csv_path else _from_things_layout(root, exemplar)
    if csv_path and known_ids is not None:
        known = set(known_ids)
        unknown = [c for c in found if c not in known]
        if unknown:
            raise InputError(
                f"Image list {csv_path} names {len(unknown)} unknown concept id(s): "
                f"{preview(unknown)}."
            )
    wanted = list(found) if concept_ids is None else list(concept_ids)
    missing = [c for c in wanted if c not in found]
    if missing and not skip_missing:
        raise InputError(
            f"No image for {len(missing)} of {len(wanted)} concepts in {root}: {preview(missing)}"
            " (use --skip-missing to leave them out)."
        )
    if missing:
        logger.warning(
            "Skipping %d concept(s) without an image: %s", len(missing), preview(missing)
        )
    kept = [c for c in wanted if c in found]
    if not kept:
        raise InputError(f"No image of the requested concepts was found in {root}.")
    return ImageSet(tuple(found[c] for c in kept), tuple(kept))


def _from_things_layout(root: Path, exemplar: str) -> dict[str, Path]:
    base = root / "object_images" if (root / "object_images").is_dir() else root
    found = {}
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        matches = [
            folder / f"{folder.name}{exemplar}{suffix}"
            for suffix in IMAGE_SUFFIXES
            if (folder / f"{folder.name}{exemplar}{suffix}").is_file()
        ]
        if matches:
            found[folder.name] = matches[0]
    return found


def _from_csv(root: Path, csv_path: Path) -> dict[str, Path]:
    try:
        with csv_path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"Cannot read image list {csv_path}: {err}") from None
    if not rows or not {"image", "concept_id"} <= set(rows[0]):
        raise InputError(f"Image list {csv_path} needs a header with columns image,concept_id.")
    found: dict[str, Path] = {}
    for row in rows:
        concept, image = row["concept_id"].strip(), (root / row["image"].strip())
        if not image.is_file():
            raise InputError(f"Image list {csv_path} names a missing file: {image}.")
        if concept in found:
            raise InputError(
                f"Image list {csv_path} gives concept {concept!r} more than one image; "
                "training uses one image per concept."
            )
        found[concept] = image
    return found


def load_pixels(
    paths: Sequence[Path], size: int = 224, normalization: Normalization = "things"
) -> torch.Tensor:
    """Images as normalised tensors.

    Each image is converted to RGB, resized so that its shorter side is ``size`` (bicubic),
    centre-cropped to ``size`` x ``size`` and normalised per channel.

    Returns
    -------
    Tensor, shape (n_images, 3, size, size), float32
    """
    check_option("normalization", normalization, tuple(NORMALIZATIONS))
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZATIONS[normalization])
    pixels = torch.empty(len(paths), 3, size, size)
    for k, path in enumerate(paths):
        pixels[k] = (_square_image(path, size) - mean) / std
    return pixels


def _square_image(path: Path, size: int) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = size / min(image.size)
            resized = image.resize(
                (max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                Image.Resampling.BICUBIC,
            )
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise InputError(f"Cannot read image {path}: {str(err).splitlines()[0]}") from None
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    array = np.asarray(cropped, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
