"""Mixed precision: the number format forward passes run in, and the loss scaler of fp16.

``fp32`` runs everything in float32 (the default, and bit-identical to runs without the
setting). ``bf16`` and ``fp16`` run the towers under `torch.autocast` (matrix products and
attention in the half format, weights and their optimizer state kept in float32; on CPU and
GPU alike); fp16's narrow range needs the loss scaled before the backward pass
(`grad_scaler`). Losses, RDMs and statistics stay in float32 or float64: outputs leave the
autocast region as float32 (`full_precision`), and the MEG model mixes its layers, injects
noise and computes RDMs in float32 (`float32_region`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from clip_hba._validation import check_option
from clip_hba.models.config import PRECISIONS

__all__ = ["autocast", "float32_region", "full_precision", "grad_scaler"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """Run the block's forward passes in ``precision`` on ``device``.

    Parameters
    ----------
    precision : {"fp32", "bf16", "fp16"}
        ``fp32`` changes nothing.
    device : torch device or str
        Where the model runs (its type picks the autocast backend).

    Examples
    --------
    >>> layer = torch.nn.Linear(4, 4)
    >>> with autocast("bf16", "cpu"):
    ...     layer(torch.ones(2, 4)).dtype
    torch.bfloat16
    """
    check_option("precision", precision, PRECISIONS)
    if precision == "fp32":
        yield
        return
    with torch.autocast(_device_type(device), dtype=_DTYPES[precision]):
        yield


def float32_region(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Turn autocast off inside an autocast region (a computation that must stay float32)."""
    return torch.autocast(_device_type(device), enabled=False)


def full_precision(values: torch.Tensor) -> torch.Tensor:
    """``values`` as float32 if they are in a half format (else unchanged, float64 included)."""
    return values.float() if values.dtype in (torch.float16, torch.bfloat16) else values


def grad_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler:
    """The loss scaler of a training run: active for fp16 only (a pass-through otherwise).

    fp16 gradients of small losses underflow to zero; the scaler multiplies the loss before
    ``backward`` and skips steps whose gradients overflowed. Its state (``state_dict``) goes
    into the run's checkpoints, so that ``--resume`` continues exactly.
    """
    check_option("precision", precision, PRECISIONS)
    return torch.amp.GradScaler(_device_type(device), enabled=precision == "fp16")
