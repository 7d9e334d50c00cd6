"""Image transforms: seeded training augmentation and the corruptions of robustness tests.

The augmentation works on the PIL image as read (and gives the model's square input); the
corruptions on the resized and cropped input, as ImageNet-C does. Both are written with PIL
and numpy rather than torchvision because torchvision pins one exact torch version per
release (a CPU install of torch would be replaced by a multi-GB CUDA build).

- The ``standard`` augmentation (``--augment standard``): random resized crop (a crop of
  0.5-1 of the area with aspect 3/4-4/3, resized to the model's square input), a horizontal
  flip with probability 0.5, and mild colour jitter (brightness, contrast and saturation each
  scaled by a factor in [0.8, 1.2]), drawn from a generator seeded per (seed, epoch, image),
  so a batch's images never depend on what else is in the batch.
- Corruptions (severity 1-5), after Hendrycks & Dietterich (2019, ImageNet-C) where they define
  one: Gaussian blur, Gaussian noise, JPEG compression, contrast reduction, and a partial to
  full grayscale.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from clip_hba._validation import InputError, check_option

__all__ = [
    "CORRUPTIONS",
    "SEVERITIES",
    "augment_image",
    "corrupt_image",
    "parse_corruptions",
    "parse_severities",
]

SEVERITIES = (1, 2, 3, 4, 5)
# parameter of each corruption at severities 1-5 (ImageNet-C's, where it has the corruption)
_BLUR_SIGMA = (1.0, 2.0, 3.0, 4.0, 6.0)  # pixels, at the model's input size
_NOISE_SD = (0.08, 0.12, 0.18, 0.26, 0.38)  # of the [0, 1] intensity range
_JPEG_QUALITY = (25, 18, 15, 10, 7)
_CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)  # remaining share of the contrast
_GRAY = (0.2, 0.4, 0.6, 0.8, 1.0)  # share of the colour removed
CORRUPTIONS = ("blur", "noise", "jpeg", "grayscale", "contrast")

_CROP_SCALE = (0.5, 1.0)
_CROP_RATIO = (3 / 4, 4 / 3)
_JITTER = 0.2


def augment_image(image: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """The ``standard`` augmentation of one RGB image, drawn from ``rng``: ``size`` x ``size``."""
    image = _random_resized_crop(image, rng).resize((size, size), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(float(rng.uniform(1 - _JITTER, 1 + _JITTER)))
    return image


def _random_resized_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A crop of a random share of the area and aspect ratio (the whole image if none fits)."""
    width, height = image.size
    for _ in range(10):
        area = width * height * rng.uniform(*_CROP_SCALE)
        ratio = np.exp(rng.uniform(np.log(_CROP_RATIO[0]), np.log(_CROP_RATIO[1])))
        w, h = round(np.sqrt(area * ratio)), round(np.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return image.crop((left, top, left + w, top + h))
    return image


def corrupt_image(image: Image.Image, corruption: str, severity: int, seed: int = 0) -> Image.Image:
    """``image`` (RGB) with one corruption at ``severity`` 1-5; the same size and mode.

    Deterministic: the noise is drawn from a generator seeded by ``(severity, seed)``; give
    each image its own ``seed`` (its row) so that images do not share one noise pattern.
    """
    check_option("corruption", corruption, CORRUPTIONS)
    if severity not in SEVERITIES:
        raise InputError(f"Invalid value for 'severity': expected 1-5, got {severity!r}.")
    level = severity - 1
    if corruption == "blur":
        return image.filter(ImageFilter.GaussianBlur(_BLUR_SIGMA[level]))
    if corruption == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=_JPEG_QUALITY[level])
        buffer.seek(0)
        with Image.open(buffer) as compressed:
            return compressed.convert("RGB")
    if corruption == "contrast":
        return ImageEnhance.Contrast(image).enhance(_CONTRAST[level])
    if corruption == "grayscale":
        return ImageEnhance.Color(image).enhance(1.0 - _GRAY[level])
    rng = np.random.default_rng((severity, seed))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    noisy = np.clip(pixels + rng.normal(0.0, _NOISE_SD[level], pixels.shape), 0.0, 1.0)
    return Image.fromarray(np.round(noisy * 255.0).astype(np.uint8), mode="RGB")


def parse_corruptions(text: str) -> tuple[str, ...]:
    """``"blur,noise"`` -> ("blur", "noise"); each one of `CORRUPTIONS`."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise InputError(f"Invalid value for 'corruptions': expected some of {CORRUPTIONS}.")
    for name in names:
        check_option("corruptions", name, CORRUPTIONS)
    if len(set(names)) < len(names):
        raise InputError(f"Invalid value for 'corruptions': {text!r} names one twice.")
    return names


def parse_severities(text: str) -> tuple[int, ...]:
    """``"1-5"``, ``"3"`` or ``"1,3,5"`` -> the severities, each 1-5."""
    try:
        if "-" in text:
            low, high = (int(v) for v in text.split("-"))
            levels: Sequence[int] = range(low, high + 1)
        else:
            levels = [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(
            f"Invalid value for 'severity': expected a range such as 1-5 or a list such as "
            f"1,3,5, got {text!r}."
        ) from None
    if isinstance(levels, range) and levels.stop <= levels.start:
        raise InputError(
            f"Invalid value for 'severity': the range {text!r} runs backwards; give "
            f"{levels.stop - 1}-{levels.start}."
        )
    levels = tuple(levels)
    if not levels or any(v not in SEVERITIES for v in levels) or len(set(levels)) < len(levels):
        raise InputError(
            f"Invalid value for 'severity': expected levels from 1 to 5, each once, got {text!r}."
        )
    return levels
