"""Writing an RDM store: row by row into a temporary file, renamed into place when complete.

See `clip_hba.meg.store` for the layout. The writer hashes every row as stored, so a store
carries a fingerprint of its content (``content_sha256``) that runs trained on it record.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from clip_hba._validation import InputError, check_option, check_unique_ids, preview
from clip_hba.meg.store import CHUNK_PAIRS, DTYPES, FORMAT, FORMAT_VERSION

__all__ = ["StoreWriter"]


class StoreWriter:
    """Write a store row by row into a temporary file; `commit` renames it into place.

    Parameters
    ----------
    path : path
        Where the finished store goes (``.h5``).
    concept_ids : sequence of str, length N
    participant_ids : sequence of str, length P
    times_ms : array-like, shape (T,), strictly increasing
    dtype : {"float32", "float16"}
    attrs : dict, optional
        Extra file attributes (``kind``, ``source``, ...).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from clip_hba.meg.store import RDMStore
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "store.h5"
    >>> with StoreWriter(out, ["a", "b", "c"], ["p1"], [0.0, 5.0]) as writer:
    ...     writer.write(0, 0, [0.1, 0.2, 0.3])
    ...     writer.write(0, 1, [0.2, 0.3, 0.4])
    >>> with RDMStore(out) as store:
    ...     store.mean().values.shape
    (2, 3)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        concept_ids: Sequence[str],
        participant_ids: Sequence[str],
        times_ms: Any,
        dtype: str = "float32",
        attrs: dict[str, Any] | None = None,
    ) -> None:
        check_option("dtype", dtype, DTYPES)
        self.path = Path(path)
        self.concept_ids = tuple(str(c) for c in concept_ids)
        self.participant_ids = tuple(str(p) for p in participant_ids)
        self.times_ms = np.asarray(times_ms, dtype=np.float64)
        _check_axes(self.concept_ids, self.participant_ids, self.times_ms)
        n = len(self.concept_ids)
        self.n_pairs = n * (n - 1) // 2
        shape = (len(self.participant_ids), len(self.times_ms), self.n_pairs)
        if self.path.is_dir():
            raise InputError(f"Cannot write the store {self.path}: it is a directory.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        os.close(fd)
        self._tmp = Path(tmp)
        self._file = h5py.File(self._tmp, "w")
        self._file.attrs.update(
            {"format": FORMAT, "format_version": FORMAT_VERSION, "complete": False}
        )
        for key, value in (attrs or {}).items():
            self._file.attrs[key] = value
        self._rdm = self._file.create_dataset(
            "rdm",
            shape=shape,
            dtype=dtype,
            chunks=(1, 1, _chunk_pairs(self.n_pairs)),
            fillvalue=np.nan,
        )
        strings = h5py.string_dtype()
        self._file.create_dataset("concept_ids", data=list(self.concept_ids), dtype=strings)
        self._file.create_dataset("participant_ids", data=list(self.participant_ids), dtype=strings)
        self._file.create_dataset("times_ms", data=self.times_ms)
        self._written = np.zeros(shape[:2], dtype=bool)
        self._row_digests: dict[tuple[int, int], bytes] = {}

    def write(self, participant: int, time_index: int, rdm_condensed: Any) -> None:
        """Write one condensed RDM (n_pairs,) of one participant at one timepoint."""
        self.write_block(participant, time_index, np.asarray(rdm_condensed)[None])

    def write_block(self, participant: int, time_start: int, values: Any) -> None:
        """Write consecutive timepoints of one participant, shape (Tb, n_pairs)."""
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != self.n_pairs:
            raise InputError(
                f"Expected RDMs of shape (n_times, {self.n_pairs}) for {len(self.concept_ids)} "
                f"concepts, got {values.shape}."
            )
        stop = time_start + values.shape[0]
        if not 0 <= time_start < stop <= len(self.times_ms):
            raise InputError(
                f"Timepoints {time_start}..{stop - 1} are outside the store's "
                f"{len(self.times_ms)} timepoints."
            )
        empty = np.isnan(values).all(axis=1)
        if empty.any():
            t = time_start + int(np.argmax(empty))
            raise InputError(
                f"Participant {self.participant_ids[participant]!r} has no data at "
                f"{self.times_ms[t]:g} ms (every pair is NaN); check the source's variable, "
                "time axis and participants."
            )
        stored = values.astype(self._rdm.dtype, copy=False)
        self._rdm[participant, time_start:stop] = stored
        self._written[participant, time_start:stop] = True
        for t, row in enumerate(stored, start=time_start):
            self._row_digests[(participant, t)] = hashlib.sha256(row.tobytes()).digest()

    def add_group(self, name: str, arrays: dict[str, Any]) -> None:
        """Store extra named arrays (e.g. a simulation's ground truth) under ``/name``."""
        group = self._file.require_group(name)
        for key, value in arrays.items():
            value = np.asarray(value)
            if value.dtype.kind in "UO":
                group.create_dataset(key, data=value.astype(object), dtype=h5py.string_dtype())
            else:
                group.create_dataset(key, data=value)

    def commit(self) -> Path:
        """Mark the store complete and move it into place (refused if rows are missing)."""
        if not self._written.all():
            p, t = np.argwhere(~self._written)[0]
            self.abort()
            raise InputError(
                f"Store {self.path} was not filled: participant {self.participant_ids[p]!r}, "
                f"timepoint {self.times_ms[t]:g} ms has no data."
            )
        content = hashlib.sha256()
        for key in sorted(self._row_digests):
            content.update(self._row_digests[key])
        self._file.attrs["content_sha256"] = content.hexdigest()
        self._file.attrs["complete"] = True
        self._file.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file."""
        if self._file.id.valid:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _check_axes(
    concept_ids: tuple[str, ...], participant_ids: tuple[str, ...], times_ms: np.ndarray
) -> None:
    if len(concept_ids) < 3:
        raise InputError(f"A store needs at least 3 concepts, got {len(concept_ids)}.")
    check_unique_ids("The store's concepts", concept_ids)
    if not participant_ids:
        raise InputError("A store needs at least one participant.")
    if len(set(participant_ids)) != len(participant_ids):
        raise InputError(f"Participant ids repeat: {preview(list(participant_ids))}.")
    if times_ms.ndim != 1 or times_ms.size == 0 or not np.all(np.isfinite(times_ms)):
        raise InputError(
            f"The time axis must be a non-empty list of finite times in ms, got {times_ms}."
        )
    if np.any(np.diff(times_ms) <= 0):
        k = int(np.argmax(np.diff(times_ms) <= 0))
        raise InputError(
            f"The time axis must be strictly increasing, but {times_ms[k + 1]:g} ms follows "
            f"{times_ms[k]:g} ms."
        )


def _chunk_pairs(n_pairs: int) -> int:
    """Chunk length: a row in equal parts of at most `CHUNK_PAIRS` (no half-empty last chunk)."""
    n_chunks = -(-n_pairs // CHUNK_PAIRS)
    return -(-n_pairs // n_chunks)
