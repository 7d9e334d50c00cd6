"""The MEG RDM store: participant x time x concept-pair dissimilarities in one HDF5 file.

Layout (h5py), written by `clip_hba.meg.writer.StoreWriter` and read by `RDMStore`::

    /rdm              (P, T, n_pairs) float32 (or float16), condensed upper triangles (i < j),
                      chunked so that one (participant, timepoint) row is read on its own
    /concept_ids      (N,) the concept of each condition, in the order of the triangles
    /participant_ids  (P,)
    /times_ms         (T,) float64
    /ground_truth/... optional (simulated stores): the planted component time courses
    attrs: format, format_version, complete (True once every row is written), kind, source,
           content_sha256 (of every row as stored, in participant-then-time order),
           n_inf_as_nan (infinite source values stored as NaN, ``--inf-as-nan``)

A store is written to a temporary file and renamed when complete, so an interrupted import never
leaves a file that looks whole; `RDMStore` refuses a file without ``complete``. Reads stream row
by row: a time window, a subset of concepts (by id) and of participants, and the (NaN-aware)
mean over participants, never loading more than a batch of timepoints at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from clip_hba._validation import InputError, check_unique_ids, preview
from clip_hba.data.things import load_concepts
from clip_hba.rsa.rdms import RDM, mean_rdm, subset_pairs

__all__ = ["RDMStore", "TimeRDMs", "open_store", "unknown_concepts"]

FORMAT = "clip-hba-rdm-store"
FORMAT_VERSION = 1
DTYPES = ("float32", "float16")
CHUNK_PAIRS = 1 << 20  # at most 4 MB per float32 chunk
READ_BYTES = 64 << 20  # stream reads in batches of timepoints of about this size


@dataclass(frozen=True, eq=False)
class TimeRDMs:
    """Time-resolved condensed RDMs with their axes.

    Attributes
    ----------
    values : ndarray, shape (P, T, n_pairs) or (T, n_pairs)
        Dissimilarities; NaN marks a pair without data.
    concept_ids : tuple of str, length N with N * (N - 1) / 2 == n_pairs
    times_ms : ndarray, shape (T,)
    participant_ids : tuple of str, or None when ``values`` has no participant axis
    """

    values: np.ndarray
    concept_ids: tuple[str, ...]
    times_ms: np.ndarray
    participant_ids: tuple[str, ...] | None = None

    def at(self, time_ms: float, participant: str | None = None) -> RDM:
        """The RDM at the timepoint nearest ``time_ms`` (of one participant, if there are many)."""
        t = int(np.argmin(np.abs(self.times_ms - time_ms)))
        values = self.values
        if self.participant_ids is not None:
            if participant is None:
                raise InputError("These RDMs hold several participants: name one.")
            values = values[_participant_rows(self.participant_ids, [participant])[0]]
        return RDM(np.asarray(values[t], dtype=np.float64), self.concept_ids)


def open_store(path: str | os.PathLike) -> RDMStore:
    """Open a store for reading (use as a context manager to close it)."""
    return RDMStore(path)


class RDMStore:
    """Read access to an RDM store; see the module docstring for the layout.

    Parameters
    ----------
    path : path
        A complete store written by `StoreWriter` (e.g. by ``clip-hba meg import``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"No RDM store at {self.path}.")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError:
            raise InputError(
                f"{self.path} is not an HDF5 RDM store (or it is truncated)."
            ) from None
        try:
            self._check()
        except InputError:
            self._file.close()
            raise
        self._rdm = self._file["rdm"]
        self.concept_ids = _strings(self._file["concept_ids"])
        self.participant_ids = _strings(self._file["participant_ids"])
        self.times_ms = np.asarray(self._file["times_ms"][()], dtype=np.float64)
        self._concept_row = {c: k for k, c in enumerate(self.concept_ids)}

    def _check(self) -> None:
        attrs = self._file.attrs
        if attrs.get("format") != FORMAT:
            raise InputError(f"{self.path} is not a clip-hba RDM store.")
        if not attrs.get("complete", False):
            raise InputError(
                f"{self.path} is incomplete (an interrupted import or simulation); write it again."
            )
        version = int(attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise InputError(
                f"{self.path} has store format {version}; this clip-hba reads up to "
                f"{FORMAT_VERSION}. Upgrade clip-hba."
            )

    # ------------------------------------------------------------------ description

    @property
    def n_pairs(self) -> int:
        return int(self._rdm.shape[2])

    @property
    def dtype(self) -> str:
        return str(self._rdm.dtype)

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in self._file.attrs.items()}

    def __enter__(self) -> RDMStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __repr__(self) -> str:
        return (
            f"RDMStore({str(self.path)!r}: {len(self.participant_ids)} participants, "
            f"{len(self.times_ms)} timepoints, {len(self.concept_ids)} concepts)"
        )

    def info(self, nan_share: bool = True) -> dict[str, Any]:
        """A JSON-able summary: participants, concepts, time axis, dtype and NaN share.

        ``n_inf_as_nan`` counts the infinite source values imported as NaN (part of the NaN
        share); ``unknown_concepts`` (only for a store mixing THINGS concept ids with others)
        names the ids that are not THINGS concepts; ``n_inf`` (with ``nan_share``) counts the
        infinite values a store written before they were refused may hold.
        """
        times = self.times_ms
        summary: dict[str, Any] = {
            "path": str(self.path),
            "participants": list(self.participant_ids),
            "n_participants": len(self.participant_ids),
            "n_concepts": len(self.concept_ids),
            "n_pairs": self.n_pairs,
            "n_times": len(times),
            "times_ms": {
                "start": float(times[0]),
                "stop": float(times[-1]),
                "step": float(np.median(np.diff(times))) if len(times) > 1 else None,
            },
            "dtype": self.dtype,
            "kind": self.attrs.get("kind"),
            "source": self.attrs.get("source"),
            "has_ground_truth": "ground_truth" in self._file,
            "n_inf_as_nan": int(self.attrs.get("n_inf_as_nan", 0)),
        }
        unknown = unknown_concepts(self.concept_ids)
        if unknown:
            summary["unknown_concepts"] = {"n": len(unknown), "first": unknown[:5]}
        if nan_share:
            n_nan, n_inf = self._count_missing()
            summary["nan_share"] = n_nan / self._n_values()
            summary["n_inf"] = n_inf
        return summary

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data: a sha256 of the axes, shape and stored content.

        ``content`` is False for stores written before content hashes were recorded: their
        fingerprint covers the axes and shape only.
        """
        digest = hashlib.sha256()
        axes = [self.concept_ids, self.participant_ids, self.times_ms.tolist(), self.dtype]
        digest.update(json.dumps(axes).encode())
        content = self.attrs.get("content_sha256")
        if content is not None:
            digest.update(str(content).encode())
        return {"sha256": digest.hexdigest(), "content": content is not None}

    def nan_share(self) -> float:
        """Share of NaN entries over the whole store (streamed)."""
        return self._count_missing()[0] / self._n_values()

    def _count_missing(self) -> tuple[int, int]:
        """The NaN and the infinite entries of the whole store (streamed)."""
        n_nan = n_inf = 0
        for p in range(len(self.participant_ids)):
            for start, stop in self._time_batches(range(len(self.times_ms)), self.n_pairs):
                block = self._rdm[p, start:stop]
                n_nan += int(np.isnan(block).sum())
                n_inf += int(np.isinf(block).sum())
        return n_nan, n_inf

    def _n_values(self) -> int:
        return len(self.participant_ids) * len(self.times_ms) * self.n_pairs

    # ------------------------------------------------------------------ selections

    def time_indices(self, window_ms: tuple[float, float] | None = None) -> np.ndarray:
        """Indices of the timepoints within ``window_ms`` = (start, stop), both inclusive."""
        if window_ms is None:
            return np.arange(len(self.times_ms))
        start, stop = (float(v) for v in window_ms)
        if start > stop:
            raise InputError(f"Invalid time window ({start:g}, {stop:g}) ms: start > stop.")
        keep = np.flatnonzero((self.times_ms >= start - 1e-9) & (self.times_ms <= stop + 1e-9))
        if keep.size == 0:
            raise InputError(
                f"The time window ({start:g}, {stop:g}) ms holds no timepoint of {self.path} "
                f"({self.times_ms[0]:g}..{self.times_ms[-1]:g} ms)."
            )
        return keep

    def participant_indices(
        self, participants: Sequence[str] | None = None, exclude: Sequence[str] | None = None
    ) -> np.ndarray:
        """Rows of the named participants (default all), minus ``exclude``."""
        rows = (
            np.arange(len(self.participant_ids))
            if participants is None
            else _participant_rows(self.participant_ids, participants)
        )
        if exclude:
            dropped = set(_participant_rows(self.participant_ids, exclude).tolist())
            rows = np.array([r for r in rows if r not in dropped], dtype=np.int64)
        if rows.size == 0:
            raise InputError("No participants left after the exclusions.")
        return rows

    def pair_selection(self, concept_ids: Sequence[str] | None) -> np.ndarray | None:
        """Positions in the store's pairs of the pairs among ``concept_ids``, in their order.

        ``None`` means every pair in store order.
        """
        if concept_ids is None:
            return None
        concept_ids = list(concept_ids)
        check_unique_ids("The requested concepts", concept_ids)
        missing = [c for c in concept_ids if c not in self._concept_row]
        if missing:
            raise InputError(
                f"{len(missing)} requested concept id(s) are not in {self.path}: "
                f"{preview(missing)}."
            )
        if len(concept_ids) < 2:
            raise InputError(f"Select at least 2 concepts to have a pair, got {len(concept_ids)}.")
        rows = np.array([self._concept_row[c] for c in concept_ids], dtype=np.int64)
        return subset_pairs(rows, len(self.concept_ids))

    # ------------------------------------------------------------------ reads

    def iter_times(
        self,
        window_ms: tuple[float, float] | None = None,
        concept_ids: Sequence[str] | None = None,
        participants: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        batch_bytes: int | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream the data in batches of timepoints (of about ``batch_bytes`` read each,
        default 64 MB).

        Yields
        ------
        time_rows : ndarray of int, shape (Tb,)
            Indices into ``times_ms`` of this batch.
        values : ndarray, shape (P, Tb, n_selected_pairs), float32
        """
        times = self.time_indices(window_ms)
        rows = self.participant_indices(participants, exclude)
        pairs = self.pair_selection(concept_ids)
        if pairs is not None and np.array_equal(pairs, np.arange(self.n_pairs)):
            pairs = None  # every pair in store order: no gathered copy
        for start, stop in self._time_batches(times, self.n_pairs * len(rows), batch_bytes):
            # each participant's rows are read straight into the block (no per-row arrays
            # to stack: at full size that copy cost as much as the read)
            block = np.empty((len(rows), stop - start, self.n_pairs), dtype=self._rdm.dtype)
            for k, p in enumerate(rows):
                self._read_into(block[k], p, times[start:stop])
            if pairs is not None:
                block = block[..., pairs]
            yield times[start:stop], block.astype(np.float32, copy=False)

    def read(
        self,
        window_ms: tuple[float, float] | None = None,
        concept_ids: Sequence[str] | None = None,
        participants: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> TimeRDMs:
        """The selected data, shape (P, T, n_pairs) (read batch by batch)."""
        rows = self.participant_indices(participants, exclude)
        selection = (window_ms, concept_ids, participants, exclude)
        values, times = self._assemble(selection, (len(rows),), lambda block: block)
        return TimeRDMs(
            values,
            self._selected_ids(concept_ids),
            self.times_ms[times],
            tuple(self.participant_ids[r] for r in rows),
        )

    def mean(
        self,
        window_ms: tuple[float, float] | None = None,
        concept_ids: Sequence[str] | None = None,
        participants: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> TimeRDMs:
        """Mean over participants, ignoring NaN (a pair NaN in everyone stays NaN).

        Returns
        -------
        TimeRDMs with ``values`` of shape (T, n_pairs), float32, and ``participant_ids`` None.
        """
        selection = (window_ms, concept_ids, participants, exclude)
        values, times = self._assemble(selection, (), mean_rdm)
        return TimeRDMs(values, self._selected_ids(concept_ids), self.times_ms[times])

    def ground_truth(self) -> dict[str, np.ndarray] | None:
        """The planted truth of a simulated store (arrays by name), or None."""
        if "ground_truth" not in self._file:
            return None
        group = self._file["ground_truth"]
        return {
            name: (_strings(group[name]) if group[name].dtype.kind in "OS" else group[name][()])
            for name in group
        }

    # ------------------------------------------------------------------ internals

    def _assemble(
        self,
        selection: tuple,
        leading: tuple[int, ...],
        reduce: Callable[[np.ndarray], np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """``reduce`` of every streamed block, (*leading, T, n_pairs) float32, and the times."""
        window_ms, concept_ids = selection[:2]
        times = self.time_indices(window_ms)
        pairs = self.pair_selection(concept_ids)
        n_pairs = self.n_pairs if pairs is None else len(pairs)
        values = np.empty((*leading, len(times), n_pairs), dtype=np.float32)
        offset = 0
        for time_rows, block in self.iter_times(*selection):
            values[..., offset : offset + len(time_rows), :] = reduce(block)
            offset += len(time_rows)
        return values, times

    def _selected_ids(self, concept_ids: Sequence[str] | None) -> tuple[str, ...]:
        return self.concept_ids if concept_ids is None else tuple(concept_ids)

    def _read_into(self, out: np.ndarray, participant: int, times: np.ndarray) -> None:
        """Read ``participant``'s rows at ``times`` into ``out`` (len(times), n_pairs)."""
        if times.size and np.all(np.diff(times) == 1):
            selection = np.s_[participant, int(times[0]) : int(times[-1]) + 1]
            self._rdm.read_direct(out, source_sel=selection)
        elif times.size:
            out[...] = self._rdm[participant, times]

    @staticmethod
    def _time_batches(
        times: Sequence[int], row_values: int, batch_bytes: int | None = None
    ) -> Iterator[tuple[int, int]]:
        step = max(1, (batch_bytes or READ_BYTES) // max(1, 4 * row_values))
        for start in range(0, len(times), step):
            yield start, min(start + step, len(times))


# ---------------------------------------------------------------------------- helpers


def unknown_concepts(
    concept_ids: Sequence[str], data_dir: str | os.PathLike | None = None
) -> list[str]:
    """The ids that are not THINGS concepts, when most others are (else an empty list).

    A set of ids that are all THINGS concepts, or mostly not (another stimulus set, whose
    names may include common words that THINGS has too, such as "dog"), is consistent; a
    THINGS set with a few unknown ids usually means typos or a wrong ids file.
    """
    try:
        known = set(load_concepts(data_dir).ids)
    except InputError:  # no usable THINGS files: a warning is not worth failing an import for
        return []
    unknown = [c for c in concept_ids if c not in known]
    return unknown if 0 < len(unknown) < len(concept_ids) / 2 else []


def _participant_rows(participant_ids: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    known = {p: k for k, p in enumerate(participant_ids)}
    unknown = [str(p) for p in wanted if str(p) not in known]
    if unknown:
        raise InputError(
            f"Unknown participant id(s) {preview(unknown)}; the store holds "
            f"{preview(list(participant_ids), 10)}."
        )
    return np.array([known[str(p)] for p in wanted], dtype=np.int64)


def _strings(dataset: h5py.Dataset) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in dataset[()])


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value
