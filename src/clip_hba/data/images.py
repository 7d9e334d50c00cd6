"""Concept images: finding the images of each concept, and turning them into normalised tensors.

Two layouts are read: the THINGS layout ``object_images/<concept>/<concept>_01b.jpg`` and any
folder with a CSV of ``image,concept_id`` rows (image paths relative to the folder). Which
images of a concept are used is the ``exemplar``: ``"first"`` (the first file in sorted name
order: ``_01b`` in THINGS where it exists, else ``_01s`` or ``_02s``; a CSV's first row of the
concept), ``"all"`` (every image) or a file-name suffix such as ``"_01b"`` (THINGS layout).

`ImagePixels` reads the normalised pixels of an image list by row from disk, batch by batch
(all 26,107 THINGS images at 224 px would take 16 GB in memory), with an optional seeded
augmentation or a corruption; `fits_in_memory` says when a set is small enough to load once.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from clip_hba._validation import EXEMPLAR_SETS, InputError, check_exemplar, check_option, preview
from clip_hba.data.transforms import augment_image, corrupt_image

__all__ = [
    "EXEMPLAR_SETS",
    "NORMALIZATIONS",
    "ImagePixels",
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
MEMORY_LIMIT_BYTES = 2 * 2**30  # image sets up to this size are loaded once, into memory


@dataclass(frozen=True)
class ImageSet:
    """Image files with the concept id each one shows.

    Attributes
    ----------
    paths : tuple of Path
    concept_ids : tuple of str
        Same length as ``paths``; a concept's images are consecutive (exemplar ``"all"``).
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
    exemplar: str = "first",
    skip_missing: bool = False,
    known_ids: Sequence[str] | None = None,
) -> ImageSet:
    """The images of each concept from a THINGS-layout folder or a folder plus CSV.

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
        ``"first"``: each concept's first image in sorted file-name order (a CSV: its first
        row); ``"all"``: every image; otherwise a file-name suffix (THINGS layout:
        ``<concept><exemplar>.jpg``; concepts without that file count as missing).
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
    check_exemplar(exemplar)
    if csv_path:
        found = _from_csv(root, Path(csv_path), exemplar)
    else:
        found = _from_things_layout(root, exemplar)
        if concept_ids is None and exemplar not in EXEMPLAR_SETS:
            # every concept folder wants the file: one without it is missing, not left out
            concept_ids = _concept_folders(root)
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
    named = "" if exemplar == "first" else f" with --exemplar {exemplar!r}"
    if missing and len(missing) == len(wanted):
        hint = (
            " (a THINGS file-name suffix looks like '_01b')"
            if exemplar not in EXEMPLAR_SETS
            else ""
        )
        raise InputError(
            f"No image for any of the {len(wanted)} concepts in {root}{named}: "
            f"{preview(missing)}{hint}."
        )
    if missing and not skip_missing:
        raise InputError(
            f"No image for {len(missing)} of {len(wanted)} concepts in {root}{named}: "
            f"{preview(missing)} (use --skip-missing to leave them out)."
        )
    if missing:
        logger.warning(
            "Skipping %d concept(s) without an image: %s", len(missing), preview(missing)
        )
    kept = [c for c in wanted if c in found]
    if not kept:
        raise InputError(f"No image of the requested concepts was found in {root}.")
    paths = tuple(path for c in kept for path in found[c])
    return ImageSet(paths, tuple(c for c in kept for _ in found[c]))


def _things_base(root: Path) -> Path:
    return root / "object_images" if (root / "object_images").is_dir() else root


def _concept_folders(root: Path) -> list[str]:
    """The concept folders of a THINGS-layout folder (those holding any image), sorted."""
    folders = sorted(p for p in _things_base(root).iterdir() if p.is_dir())
    return [f.name for f in folders if any(_is_image_file(p) for p in f.iterdir())]


def _from_things_layout(root: Path, exemplar: str) -> dict[str, list[Path]]:
    found = {}
    for folder in sorted(p for p in _things_base(root).iterdir() if p.is_dir()):
        if exemplar in EXEMPLAR_SETS:
            images = sorted(
                (p for p in folder.iterdir() if _is_image_file(p)), key=lambda p: p.name
            )
            matches = images[:1] if exemplar == "first" else images
        else:
            matches = [
                folder / f"{folder.name}{exemplar}{suffix}"
                for suffix in IMAGE_SUFFIXES
                if (folder / f"{folder.name}{exemplar}{suffix}").is_file()
            ][:1]
        if matches:
            found[folder.name] = matches
    return found


def _is_image_file(path: Path) -> bool:
    """An image file by its suffix, not hidden (macOS ``._x.jpg`` files are metadata)."""
    return (
        path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
    )


def _from_csv(root: Path, csv_path: Path, exemplar: str) -> dict[str, list[Path]]:
    try:
        with csv_path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"Cannot read image list {csv_path}: {err}") from None
    if not rows or not {"image", "concept_id"} <= set(rows[0]):
        raise InputError(f"Image list {csv_path} needs a header with columns image,concept_id.")
    found: dict[str, list[Path]] = {}
    listed: dict[Path, tuple[int, str]] = {}  # each file's first row and concept
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        concept, image = row["concept_id"].strip(), (root / row["image"].strip())
        if not image.is_file():
            raise InputError(f"Image list {csv_path} names a missing file: {image}.")
        key = image.resolve()
        if key in listed:
            first, other = listed[key]
            under = "twice" if other == concept else f"under {other!r} and {concept!r}"
            raise InputError(
                f"Image list {csv_path} lists {row['image'].strip()} {under} (rows {first} and "
                f"{number}); each image may appear once, under one concept."
            )
        listed[key] = (number, concept)
        found.setdefault(concept, []).append(image)
    if exemplar == "all":
        return found
    several = [c for c, images in found.items() if len(images) > 1]
    if several and exemplar != "first":
        raise InputError(
            f"Image list {csv_path} gives {len(several)} concept(s) more than one image "
            f"({preview(several)}): choose --exemplar first (each concept's first row) or all."
        )
    return {c: images[:1] for c, images in found.items()}


Transform = Callable[[int, Image.Image], Image.Image]  # (row, RGB image) -> image


def load_pixels(
    paths: Sequence[Path],
    size: int = 224,
    normalization: Normalization = "things",
    transform: Transform | None = None,
    rows: Sequence[int] | None = None,
    corruption: tuple[str, int] | None = None,
) -> torch.Tensor:
    """Images as normalised tensors.

    Each image is converted to RGB, passed through ``transform`` (given the image's row, from
    ``rows``, default 0, 1, ...), resized so that its shorter side is ``size`` (bicubic),
    centre-cropped to ``size`` x ``size``, corrupted (``corruption``: name and severity, at the
    model's resolution as in ImageNet-C) and normalised per channel. Files are decoded on a
    few threads (PIL releases the GIL while decoding and resizing).

    Returns
    -------
    Tensor, shape (n_images, 3, size, size), float32
    """
    check_option("normalization", normalization, tuple(NORMALIZATIONS))
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZATIONS[normalization])
    rows = range(len(paths)) if rows is None else rows
    pixels = torch.empty(len(paths), 3, size, size)

    def load(k: int) -> None:
        square = _square_image(paths[k], size, rows[k], transform, corruption)
        pixels[k] = (square - mean) / std

    if len(paths) < 8:
        for k in range(len(paths)):
            load(k)
    else:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(load, range(len(paths))))
    return pixels


def _square_image(
    path: Path,
    size: int,
    row: int,
    transform: Transform | None,
    corruption: tuple[str, int] | None,
) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if transform is not None:
                image = transform(row, image)
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
    if corruption is not None:  # noise drawn per image (row), never shared between images
        cropped = corrupt_image(cropped, *corruption, seed=row)
    array = np.asarray(cropped, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class ImagePixels:
    """The normalised pixels of a list of images, by row: ``pixels[rows]`` -> (k, 3, size, size).

    Reads the files for each request, as a data loader would; it stands in for a
    ``pixel_values`` tensor in model inputs when a set does not fit in memory
    (`fits_in_memory`), and makes the augmented and corrupted versions of a set.

    Attributes
    ----------
    paths : tuple of Path
    size : int
    normalization : {"things", "clip"}
    augment : bool
        The ``standard`` seeded training augmentation of `clip_hba.data.transforms`, drawn per
        (``seed``, ``epoch``, row): the same seed gives the same images in every batch order.
    seed, epoch : int
    corruption : (str, int), optional
        A corruption of `clip_hba.data.transforms.CORRUPTIONS` and its severity.
    """

    paths: tuple[Path, ...]
    size: int = 224
    normalization: Normalization = "things"
    augment: bool = False
    seed: int = 0
    epoch: int = 0
    corruption: tuple[str, int] | None = None

    def __post_init__(self) -> None:
        check_option("normalization", self.normalization, tuple(NORMALIZATIONS))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def ndim(self) -> int:
        return 4

    @property
    def nbytes(self) -> int:
        return len(self.paths) * 3 * self.size * self.size * 4

    @property
    def fits_in_memory(self) -> bool:
        """Whether the float32 pixels of every image take at most 2 GiB."""
        return self.nbytes <= MEMORY_LIMIT_BYTES

    def __getitem__(self, rows: torch.Tensor | Sequence[int] | range) -> torch.Tensor:
        index = torch.as_tensor(list(rows) if isinstance(rows, range) else rows, dtype=torch.long)
        chosen = index.tolist()
        transform = self._augment if self.augment else None
        paths = [self.paths[k] for k in chosen]
        return load_pixels(paths, self.size, self.normalization, transform, chosen, self.corruption)

    def augmented(self, seed: int, epoch: int) -> ImagePixels:
        """The same images with the ``standard`` augmentation of ``epoch`` (read from disk)."""
        return replace(self, augment=True, seed=seed, epoch=epoch)

    def corrupted(self, corruption: str, severity: int) -> ImagePixels:
        """The same images with a corruption (see `clip_hba.data.transforms.corrupt_image`)."""
        return replace(self, corruption=(corruption, severity))

    def _augment(self, row: int, image: Image.Image) -> Image.Image:
        rng = np.random.default_rng((self.seed, self.epoch, row))
        return augment_image(image, rng, self.size)
