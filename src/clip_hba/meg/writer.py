"""Writing an RDM store (row by row into a temporary file, renamed into place when complete),
and exporting one in the THINGS-MEG release format with a sidecar of its axes.

See `clip_hba.meg.store` for the layout. The writer hashes every row as stored, so a store
carries a fingerprint of its content (``content_sha256``) that runs trained on it record. It is
the one place every importer goes through, so it also refuses infinite dissimilarities (or
stores them as NaN when asked) and warns about concept ids that mix THINGS ids with others.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm.auto import tqdm

from clip_hba._io import (
    check_output_file,
    publish,
    refuse_existing,
    temp_path_beside,
    write_atomic,
    write_json_atomic,
)
from clip_hba._validation import InputError, check_option, check_unique_ids, preview
from clip_hba.meg.store import (
    CHUNK_PAIRS,
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    RDMStore,
    unknown_concepts,
)

__all__ = [
    "StoreWriter",
    "check_mat_name",
    "check_out_file",
    "export_things_mat",
    "sidecar_path",
    "warn_unknown_concepts",
    "write_things_mat",
]

logger = logging.getLogger(__name__)


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
    inf_as_nan : bool
        Store infinite dissimilarities as NaN (missing pairs), counted in the ``n_inf_as_nan``
        attribute; by default `commit` refuses data holding any, naming how many and where.
    data_dir : path, optional
        THINGS data directory whose concept ids `warn_unknown_concepts` checks against.

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
        inf_as_nan: bool = False,
        data_dir: str | os.PathLike | None = None,
    ) -> None:
        check_option("dtype", dtype, DTYPES)
        self.path = Path(path)
        self.concept_ids = tuple(str(c) for c in concept_ids)
        self.participant_ids = tuple(str(p) for p in participant_ids)
        self.times_ms = np.asarray(times_ms, dtype=np.float64)
        _check_axes(self.concept_ids, self.participant_ids, self.times_ms)
        warn_unknown_concepts(self.concept_ids, str(self.path), data_dir)
        self.inf_as_nan = inf_as_nan
        self.n_inf = 0  # infinite values seen (stored as NaN with inf_as_nan, else refused)
        self._inf_rdms = 0
        self._first_inf: tuple[int, int, int] | None = None  # participant, time, pair
        n = len(self.concept_ids)
        self.n_pairs = n * (n - 1) // 2
        shape = (len(self.participant_ids), len(self.times_ms), self.n_pairs)
        if self.path.is_dir():
            raise InputError(f"Cannot write the store {self.path}: it is a directory.")
        _check_free_space(self.path, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        self._tmp = temp_path_beside(self.path)
        try:
            self._file = h5py.File(self._tmp, "w")
        except OSError as err:
            self._tmp.unlink(missing_ok=True)
            raise InputError(f"Cannot write the store {self.path}: {err}") from None
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
        values = self._count_inf(participant, time_start, values)
        empty = np.isnan(values).all(axis=1)
        if empty.any():
            t = time_start + int(np.argmax(empty))
            raise InputError(
                f"Participant {self.participant_ids[participant]!r} has no data at "
                f"{self.times_ms[t]:g} ms (every pair is NaN); check the source's variable, "
                "time axis and participants."
            )
        with np.errstate(over="ignore"):  # an overflow is reported by _check_overflow
            stored = values.astype(self._rdm.dtype, copy=False)
        if stored.dtype != values.dtype:
            self._check_overflow(participant, values, stored)
        self._rdm[participant, time_start:stop] = stored
        self._written[participant, time_start:stop] = True
        for t, row in enumerate(stored, start=time_start):
            self._row_digests[(participant, t)] = hashlib.sha256(row.tobytes()).digest()

    def _check_overflow(self, participant: int, values: np.ndarray, stored: np.ndarray) -> None:
        if np.isinf(stored).sum() > np.isinf(values).sum():
            fix = "store them as float32 (--dtype float32)" if stored.itemsize < 4 else "rescale"
            raise InputError(
                f"The dissimilarities of participant {self.participant_ids[participant]!r} "
                f"exceed the range of {stored.dtype} (up to {np.finfo(stored.dtype).max:g}); "
                f"{fix}."
            )

    def _count_inf(self, participant: int, time_start: int, values: np.ndarray) -> np.ndarray:
        """Count infinite values (NaN in their place with ``inf_as_nan``)."""
        inf = np.isinf(values)
        if not inf.any():
            return values
        rows = inf.any(axis=1)
        if self._first_inf is None:
            t = int(np.argmax(rows))
            self._first_inf = (participant, time_start + t, int(np.argmax(inf[t])))
        self.n_inf += int(inf.sum())
        self._inf_rdms += int(rows.sum())
        return np.where(inf, np.nan, values) if self.inf_as_nan else values

    def _refuse_inf(self) -> None:
        p, t, k = self._first_inf or (0, 0, 0)
        i, j = (int(v[k]) for v in np.triu_indices(len(self.concept_ids), k=1))
        self.abort()
        raise InputError(
            f"The data hold {self.n_inf} pair(s) with an infinite dissimilarity in "
            f"{self._inf_rdms} RDM(s), the first for participant {self.participant_ids[p]!r} "
            f"at {self.times_ms[t]:g} ms, pair ({self.concept_ids[i]!r}, "
            f"{self.concept_ids[j]!r}); {self.path} was not written. "
            "Repair the source, or pass --inf-as-nan to store them as missing pairs (NaN)."
        )

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
        if self.n_inf and not self.inf_as_nan:
            self._refuse_inf()
        self._file.attrs["n_inf_as_nan"] = self.n_inf
        content = hashlib.sha256()
        for key in sorted(self._row_digests):
            content.update(self._row_digests[key])
        self._file.attrs["content_sha256"] = content.hexdigest()
        self._file.attrs["complete"] = True
        self._file.close()
        publish(self._tmp, self.path)
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


def check_out_file(out: str | os.PathLike, force: bool, example: str = "store.h5") -> Path:
    """``out`` as a file to write: refused if it is a directory, or exists without ``force``."""
    out = Path(out)
    if out.is_dir():
        raise InputError(
            f"--out {out} is a directory; --out must be the path of the file to write, "
            f"e.g. {out / example}."
        )
    check_output_file(out)
    return refuse_existing(out, force)


def warn_unknown_concepts(
    concept_ids: Sequence[str], where: str, data_dir: str | os.PathLike | None = None
) -> list[str]:
    """Log a warning naming the ids that are not THINGS concepts when most others are.

    Ids that are all THINGS concepts, or mostly not (another stimulus set), pass silently.
    Returns the unknown ids of a mixed set (else an empty list).
    """
    unknown = unknown_concepts(concept_ids, data_dir)
    if unknown:
        logger.warning(
            "%s: %d of its %d concept ids are not THINGS concepts although the others are: "
            "%s. Check them for typos or a wrong --concept-ids file.",
            where,
            len(unknown),
            len(concept_ids),
            preview(unknown),
        )
    return unknown


def _check_free_space(path: Path, n_bytes: int) -> None:
    """Refuse a store that cannot fit: HDF5 may crash, not raise, when the disk fills up."""
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if n_bytes > free:
        raise InputError(
            f"The store {path} needs {n_bytes / 1e9:.2f} GB but its folder has {free / 1e9:.2f} GB "
            "free; free some space, or write it elsewhere (--out)."
        )


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


# ---------------------------------------------------------------------------- release format out


def check_mat_name(out: str | os.PathLike) -> None:
    """Refuse an export name that does not end in ``.mat`` (before any work is done)."""
    if Path(out).suffix.lower() != ".mat":
        raise InputError(f"--out {out}: the export is a MATLAB file; give a name ending in .mat.")


def export_things_mat(
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    variable: str = "mat",
    lower_nan: bool = True,
    force: bool = True,
    verbose: bool = True,
) -> Path:
    """Write a store in the THINGS-MEG release layout: a MATLAB v7.3 file of (N, N, T, P).

    Read with h5py the variable has shape (P, T, N, N); the diagonal is NaN and, with
    ``lower_nan``, so is the lower triangle, as in the released decoding RDMs. Streams one
    (participant, timepoint) matrix at a time; the file is written atomically. Beside it goes
    the sidecar `sidecar_path` (JSON: ``concept_ids``, ``participant_ids``, ``times_ms``,
    ``variable``, ``kind``), which `clip_hba.meg.io.import_things_mat` reads, so an export
    imports back without options. Without ``force`` an existing ``out`` or sidecar is refused.
    """
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,62}", variable):
        raise InputError(
            f"Invalid value for 'variable': {variable!r} is not a MATLAB variable name (a letter, "
            "then letters, digits or _)."
        )
    check_mat_name(out)
    if Path(out).resolve() == Path(store).resolve():
        raise InputError(f"--out {out} is the store being exported; give another file.")
    out = check_out_file(out, force, "rdms.mat")
    sidecar = refuse_existing(sidecar_path(out), force)
    with RDMStore(store) as source:
        n = len(source.concept_ids)
        shape = (len(source.participant_ids), len(source.times_ms), n, n)
        i, j = np.triu_indices(n, k=1)

        def rows():
            for p in range(shape[0]):
                for time_rows, block in source.iter_times(participants=[source.participant_ids[p]]):
                    for t, values in zip(time_rows, block[0], strict=True):
                        square = np.full((n, n), np.nan, dtype=np.float32)
                        square[i, j] = values
                        if not lower_nan:
                            square[j, i] = values
                        yield p, int(t), square

        write_things_mat(out, shape, rows(), variable=variable, verbose=verbose)
        axes = {
            "concept_ids": list(source.concept_ids),
            "participant_ids": list(source.participant_ids),
            "times_ms": source.times_ms.tolist(),
            "variable": variable,
        }
        if source.attrs.get("kind") is not None:
            axes["kind"] = str(source.attrs["kind"])
    write_json_atomic(sidecar, axes)
    return out


def sidecar_path(path: str | os.PathLike) -> Path:
    """The sidecar JSON of an exported file: ``X.json`` beside ``X.mat`` (or ``X.npy``)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        raise InputError(
            f"Cannot export to {path}: its sidecar {path.name} would overwrite it; use .mat."
        )
    return path.with_suffix(".json")


def write_things_mat(
    out: str | os.PathLike,
    shape: tuple[int, int, int, int],
    squares: Any,
    *,
    variable: str = "mat",
    verbose: bool = True,
) -> Path:
    """Write (participant, time, square) items into a MATLAB v7.3 file, variable (P, T, N, N).

    The file carries MATLAB's 512-byte header, so MATLAB loads it as an (N, N, T, P) single array.
    """

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w", userblock_size=512) as handle:
            data = handle.create_dataset(
                variable, shape=shape, dtype="float32", chunks=(1, 1, *shape[2:])
            )
            data.attrs["MATLAB_class"] = np.bytes_("single")
            bar = tqdm(total=shape[0] * shape[1], desc="Writing", unit="RDM", disable=not verbose)
            with bar:
                for p, t, square in squares:
                    data[p, t] = square
                    bar.update()
        header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: clip-hba HDF5 schema 1.00 ."
        with open(tmp, "r+b") as handle:
            handle.write(header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM")

    return write_atomic(out, write)
