"""The frozen-prefix cache: hidden states entering the first trainable block, computed once.

While the leading blocks of a tower are frozen and the inputs are fixed, their output never
changes, so training only needs to run the trainable suffix. The cache is keyed by the model
(config, prefix weights), the first trainable block and the content of the inputs, so a changed
model or image gives a new cache instead of stale hidden states.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from clip_hba._io import write_atomic
from clip_hba._validation import InputError, check_option
from clip_hba.models.backbones import Tower
from clip_hba.models.inputs import ConceptInputs, batch_rows, select_inputs, to_device

__all__ = ["PrefixCache", "prefix_key"]

logger = logging.getLogger(__name__)

CacheMode = Literal["auto", "memory", "disk"]
MEMORY_LIMIT_BYTES = 4 * 2**30  # "auto" keeps caches up to this size in memory


def prefix_key(tower: Tower, block: int, inputs: ConceptInputs) -> str:
    """sha256 of what the cached hidden states depend on."""
    digest = hashlib.sha256(f"block={block};inputs={inputs.fingerprint};".encode())
    digest.update(json.dumps(_tower_config(tower), sort_keys=True, default=str).encode())
    for name, param in _prefix_parameters(tower, block):
        digest.update(name.encode() + param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _tower_config(tower: Tower) -> dict:
    return {"tower": type(tower).__name__, "config": tower.hf_config.to_dict()}


def _prefix_parameters(tower: Tower, block: int) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters that the hidden states entering ``block`` depend on (embedding + blocks)."""
    in_blocks = {id(p) for b in tower.blocks[block:] for p in b.parameters()}
    return [(n, p) for n, p in tower.named_parameters() if id(p) not in in_blocks]


class PrefixCache:
    """Hidden states entering block ``block`` for every input row, in memory or on disk (HDF5).

    Parameters
    ----------
    hidden : Tensor or h5py.Dataset, shape (N, S, D)
    block : int
    key : str
    """

    def __init__(self, hidden: torch.Tensor | h5py.Dataset, block: int, key: str) -> None:
        self._hidden = hidden
        self.block = block
        self.key = key

    def close(self) -> None:
        """Close the HDF5 file of a disk cache (a memory cache has nothing to close)."""
        if self.on_disk:
            self._hidden.file.close()

    @property
    def on_disk(self) -> bool:
        return not isinstance(self._hidden, torch.Tensor)

    def __len__(self) -> int:
        return len(self._hidden)

    def hidden(self, rows: torch.Tensor) -> torch.Tensor:
        """Cached hidden states of ``rows``, shape (len(rows), S, D)."""
        if not self.on_disk:
            return self._hidden[rows]
        order = np.argsort(rows.numpy())
        values = self._hidden[np.sort(rows.numpy())]  # h5py reads increasing indices
        out = np.empty_like(values)
        out[order] = values
        return torch.from_numpy(out)

    @classmethod
    def build(
        cls,
        tower: Tower,
        block: int,
        inputs: ConceptInputs,
        *,
        mode: CacheMode = "auto",
        directory: str | os.PathLike | None = None,
        batch_size: int = 32,
        verbose: bool = True,
    ) -> PrefixCache:
        """Compute (or reopen from ``directory``) the hidden states entering ``block``.

        ``mode="auto"`` keeps the cache in memory up to 4 GiB, else on disk in ``directory``.
        A disk cache whose key matches is reused; a partial file is never mistaken for one.
        """
        check_option("cache", mode, ("auto", "memory", "disk"))
        key = prefix_key(tower, block, inputs)
        n = len(inputs)
        with torch.no_grad():
            shape = _hidden_batch(tower, block, inputs, [0]).shape[1:]
        if mode == "auto":
            small = n * shape.numel() * 4 <= MEMORY_LIMIT_BYTES
            mode = "memory" if small or directory is None else "disk"
        if mode == "memory":
            hidden = torch.empty((n, *shape), dtype=torch.float32)
            for rows, values in _prefix_batches(tower, block, inputs, batch_size, verbose):
                hidden[rows] = values
            return cls(hidden, block, key)
        if directory is None:
            raise InputError("A disk cache needs a directory (PrefixCache.build(directory=...)).")
        path = Path(directory) / f"prefix-{key[:20]}.h5"
        if path.is_file():
            handle = h5py.File(path, "r")
            if handle.attrs.get("key") == key and len(handle["hidden"]) == n:
                logger.info("Reusing the frozen-prefix cache %s", path)
                return cls(handle["hidden"], block, key)
            handle.close()
            logger.warning("Rebuilding %s: it was made for another model or inputs.", path)

        def write(tmp: Path) -> None:
            with h5py.File(tmp, "w") as handle:
                data = handle.create_dataset("hidden", (n, *shape), "float32", chunks=(1, *shape))
                for rows, values in _prefix_batches(tower, block, inputs, batch_size, verbose):
                    data[rows.start : rows.stop] = values.numpy()
                handle.attrs["key"] = key  # last: a file without it is never reused

        write_atomic(path, write)
        return cls(h5py.File(path, "r")["hidden"], block, key)


def _hidden_batch(tower: Tower, block: int, inputs: ConceptInputs, rows: list[int]) -> torch.Tensor:
    device = next(tower.parameters()).device
    batch = to_device(select_inputs(inputs.tensors, rows, trim=False), device)
    return tower.hidden_at(batch, block).float().cpu()


def _prefix_batches(
    tower: Tower, block: int, inputs: ConceptInputs, batch_size: int, verbose: bool
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, hidden states entering ``block``) for consecutive batches of inputs, on the CPU."""
    batches = tqdm(
        list(batch_rows(len(inputs), batch_size)),
        desc=f"Caching blocks 0-{block - 1}",
        disable=not verbose,
        leave=False,
    )
    with torch.no_grad():
        for rows in batches:
            yield slice(rows.start, rows.stop), _hidden_batch(tower, block, inputs, list(rows))
