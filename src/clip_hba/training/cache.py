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
from collections.abc import Iterator, Sequence
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
from clip_hba.models.precision import autocast

__all__ = ["PrefixCache", "prefix_key"]

logger = logging.getLogger(__name__)

CacheMode = Literal["auto", "memory", "disk"]
MEMORY_LIMIT_BYTES = 4 * 2**30  # "auto" keeps caches up to this size in memory


def prefix_key(
    tower: Tower,
    block: int,
    inputs: ConceptInputs,
    rows: Sequence[int] | None = None,
    precision: str = "fp32",
) -> str:
    """sha256 of what the cached hidden states depend on (and of the rows cached, if not all,
    and the precision they were computed in, if not fp32: the keys of fp32 caches stay)."""
    digest = hashlib.sha256(f"block={block};inputs={inputs.fingerprint};".encode())
    if precision != "fp32":
        digest.update(f"precision={precision};".encode())
    if rows is not None:
        digest.update(np.asarray(rows, dtype=np.int64).tobytes())
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
    """Hidden states entering block ``block`` for input rows, in memory or on disk (HDF5).

    Parameters
    ----------
    hidden : Tensor or h5py.Dataset, shape (n_cached, S, D)
    block : int
    key : str
    rows : sequence of int, optional
        The input rows cached, in order (default: every row, ``range(n_cached)``).
    """

    def __init__(
        self,
        hidden: torch.Tensor | h5py.Dataset,
        block: int,
        key: str,
        rows: Sequence[int] | None = None,
    ) -> None:
        self._hidden = hidden
        self.block = block
        self.key = key
        self._position = None  # input row -> position in the cache, when only some are cached
        if rows is not None:
            self._position = torch.full((max(rows, default=-1) + 1,), -1, dtype=torch.long)
            self._position[torch.as_tensor(list(rows), dtype=torch.long)] = torch.arange(len(rows))

    def close(self) -> None:
        """Close the HDF5 file of a disk cache (a memory cache has nothing to close)."""
        if self.on_disk:
            self._hidden.file.close()

    @property
    def on_disk(self) -> bool:
        return not isinstance(self._hidden, torch.Tensor)

    def __len__(self) -> int:
        return len(self._hidden)

    def covers(self, rows: torch.Tensor) -> bool:
        """Whether every one of the input ``rows`` is cached."""
        if self._position is None:
            return bool(len(rows) == 0 or int(rows.max()) < len(self))
        inside = rows < len(self._position)
        return bool(inside.all()) and bool((self._position[rows] >= 0).all())

    def hidden(self, rows: torch.Tensor) -> torch.Tensor:
        """Cached hidden states of the input ``rows``, shape (len(rows), S, D)."""
        if self._position is not None:
            rows = self._position[rows]
            if bool((rows < 0).any()):
                raise KeyError("PrefixCache.hidden: some of these rows were not cached.")
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
        rows: Sequence[int] | None = None,
        precision: str = "fp32",
    ) -> PrefixCache:
        """Compute (or reopen from ``directory``) the hidden states entering ``block``.

        ``mode="auto"`` keeps the cache in memory up to 4 GiB, else on disk in ``directory``.
        A disk cache whose key matches is reused; a partial file is never mistaken for one.
        ``rows``: cache only these input rows (e.g. the evaluation rows of an augmented run).
        ``precision``: the format the prefix runs in (`clip_hba.models.precision`); the cache
        holds float32 either way.
        """
        check_option("cache", mode, ("auto", "memory", "disk"))
        rows = None if rows is None else [int(r) for r in rows]
        key = prefix_key(tower, block, inputs, rows, precision)
        cached = list(range(len(inputs))) if rows is None else rows
        n = len(cached)
        with torch.no_grad():
            shape = _hidden_batch(tower, block, inputs, cached[:1], precision).shape[1:]
        if mode == "auto":
            small = n * shape.numel() * 4 <= MEMORY_LIMIT_BYTES
            mode = "memory" if small or directory is None else "disk"
        if mode == "memory":
            hidden = torch.empty((n, *shape), dtype=torch.float32)
            batches = _prefix_batches(tower, block, inputs, cached, batch_size, verbose, precision)
            for part, values in batches:
                hidden[part] = values
            return cls(hidden, block, key, rows)
        if directory is None:
            raise InputError("A disk cache needs a directory (PrefixCache.build(directory=...)).")
        path = Path(directory) / f"prefix-{key[:20]}.h5"
        if path.is_file():
            handle = h5py.File(path, "r")
            if handle.attrs.get("key") == key and len(handle["hidden"]) == n:
                logger.info("Reusing the frozen-prefix cache %s", path)
                return cls(handle["hidden"], block, key, rows)
            handle.close()
            logger.warning("Rebuilding %s: it was made for another model or inputs.", path)

        def write(tmp: Path) -> None:
            with h5py.File(tmp, "w") as handle:
                data = handle.create_dataset("hidden", (n, *shape), "float32", chunks=(1, *shape))
                batches = _prefix_batches(
                    tower, block, inputs, cached, batch_size, verbose, precision
                )
                for part, values in batches:
                    data[part.start : part.stop] = values.numpy()
                handle.attrs["key"] = key  # last: a file without it is never reused

        write_atomic(path, write)
        return cls(h5py.File(path, "r")["hidden"], block, key, rows)


def _hidden_batch(
    tower: Tower, block: int, inputs: ConceptInputs, rows: list[int], precision: str
) -> torch.Tensor:
    device = next(tower.parameters()).device
    batch = to_device(select_inputs(inputs.tensors, rows, trim=False), device)
    with autocast(precision, device):
        return tower.hidden_at(batch, block).float().cpu()


def _prefix_batches(
    tower: Tower,
    block: int,
    inputs: ConceptInputs,
    rows: list[int],
    batch_size: int,
    verbose: bool,
    precision: str = "fp32",
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(positions in ``rows``, hidden states entering ``block``) for consecutive batches of
    ``rows``, on the CPU."""
    batches = tqdm(
        list(batch_rows(len(rows), batch_size)),
        desc="Caching the embeddings" if block == 0 else f"Caching blocks 1-{block}",
        disable=not verbose,
        leave=False,
    )
    with torch.no_grad():
        for part in batches:
            yield (
                slice(part.start, part.stop),
                _hidden_batch(tower, block, inputs, rows[part.start : part.stop], precision),
            )
