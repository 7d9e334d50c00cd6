"""Concept embeddings keyed by concept id, read from .npy, .txt, .csv or .tsv files."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clip_hba._io import read_ids, read_matrix
from clip_hba._validation import InputError, check_finite, check_unique_ids

__all__ = ["ConceptEmbedding", "read_embedding", "read_ids"]


@dataclass(frozen=True, eq=False)  # arrays: compare contents explicitly
class ConceptEmbedding:
    """One row of features per concept, with the concept id of each row.

    Parameters
    ----------
    values : array-like, shape (n_concepts, n_dims)
        Finite values; stored as a read-only float64 copy.
    concept_ids : sequence of str, length n_concepts
        Unique ids (THINGS ``uniqueID`` strings such as ``"camera_lens"``).
    dim_labels : sequence of str, length n_dims, optional
        Names of the columns (e.g. the 66 SPoSE dimension labels).
    """

    values: np.ndarray
    concept_ids: tuple[str, ...]
    dim_labels: tuple[str, ...] | None = None
    _row: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = np.array(self.values, dtype=np.float64)
        ids = tuple(str(c) for c in self.concept_ids)
        if values.ndim != 2:
            raise InputError(
                f"An embedding must be 2-D (n_concepts, n_dims), got shape {values.shape}."
            )
        if values.shape[0] != len(ids):
            raise InputError(
                f"The embedding has {values.shape[0]} rows but {len(ids)} concept ids were given."
            )
        check_unique_ids("The embedding's concept ids", ids)
        check_finite("The embedding", values)
        labels = None if self.dim_labels is None else tuple(self.dim_labels)
        if labels is not None and len(labels) != values.shape[1]:
            raise InputError(
                f"The embedding has {values.shape[1]} columns but {len(labels)} labels."
            )
        values.flags.writeable = False
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "concept_ids", ids)
        object.__setattr__(self, "dim_labels", labels)
        object.__setattr__(self, "_row", {c: k for k, c in enumerate(ids)})

    @property
    def n_concepts(self) -> int:
        return self.values.shape[0]

    @property
    def n_dims(self) -> int:
        return self.values.shape[1]

    def __contains__(self, concept_id: object) -> bool:
        return concept_id in self._row

    def rows(self, concept_ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``concept_ids``; raises `InputError` naming any id not present."""
        missing = [c for c in concept_ids if c not in self._row]
        if missing:
            raise InputError(
                f"The embedding has no row for {len(missing)} concept(s): {missing[:5]}."
            )
        return np.array([self._row[c] for c in concept_ids], dtype=np.int64)

    def select(self, concept_ids: Sequence[str]) -> ConceptEmbedding:
        """The rows of ``concept_ids``, in that order."""
        return ConceptEmbedding(
            self.values[self.rows(concept_ids)], tuple(concept_ids), self.dim_labels
        )


def read_embedding(
    path: str | os.PathLike,
    ids: str | os.PathLike | Sequence[str] | None = None,
    default_ids: Sequence[str] | None = None,
) -> ConceptEmbedding:
    """Read an embedding file with one row per concept.

    Parameters
    ----------
    path : path
        ``.npy`` (2-D numeric array), ``.txt`` (whitespace-separated), ``.csv`` (comma) or
        ``.tsv`` (tab); a non-numeric first line of a text file is taken as a header, and a
        ``concept_id`` column in it gives the ids. ``.npz`` files written by ``clip-hba embed``
        carry their ids (arrays ``embedding`` and ``concept_ids``).
    ids : path or sequence of str, optional
        The concept id of each row (a file with one id per line, see `read_ids`).
    default_ids : sequence of str, optional
        Ids to use when neither ``ids`` nor the file give them; the file must then have exactly
        one row per id (e.g. the 1,854 THINGS concepts in official order).

    Returns
    -------
    ConceptEmbedding
    """
    path = Path(path)
    values, file_ids, labels = _read_with_ids(path)
    if file_ids is not None and ids is not None:
        raise InputError(f"{path} carries its own concept ids; do not give an ids file as well.")
    if file_ids is not None:
        concept_ids = file_ids
    elif ids is not None:
        concept_ids = read_ids(ids) if isinstance(ids, str | os.PathLike) else tuple(ids)
        check_unique_ids(f"The ids of {path}", concept_ids)
    elif default_ids is not None:
        if values.shape[0] != len(default_ids):
            raise InputError(
                f"{path} has {values.shape[0]} rows; without an ids file an embedding must have "
                f"one row per concept ({len(default_ids)}) in official order. Give the id of "
                f"each row with an ids file (--ids)."
            )
        concept_ids = tuple(default_ids)
    else:
        raise InputError(f"No concept ids for the rows of {path}.")
    return ConceptEmbedding(values, concept_ids, labels)


def _read_with_ids(path: Path) -> tuple[np.ndarray, tuple[str, ...] | None, tuple[str, ...] | None]:
    """Values, and the ids and column labels where the file carries them."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path)
    if suffix in {".csv", ".tsv"} and _header(path)[:1] == ["concept_id"]:
        return _read_id_table(path, "," if suffix == ".csv" else "\t")
    values = read_matrix(path, "embedding")
    if values.ndim != 2:
        raise InputError(
            f"Embedding file {path} must hold a 2-D array (n_concepts, n_dims), got shape "
            f"{values.shape}."
        )
    return values, None, None


def _read_npz(path: Path) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...] | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            values = np.asarray(archive["embedding"], dtype=np.float64)
            ids = tuple(str(c) for c in archive["concept_ids"])
            labels = tuple(str(c) for c in archive["labels"]) if "labels" in archive else None
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise InputError(
            f"Cannot read embedding file {path}: expected an .npz with arrays 'embedding' and "
            f"'concept_ids' ({str(err).splitlines()[0] if str(err) else type(err).__name__})."
        ) from None
    return values, ids, labels or None


def _header(path: Path) -> list[str]:
    try:
        with path.open(encoding="utf-8") as handle:
            first = handle.readline()
    except (OSError, UnicodeDecodeError):
        return []
    return [f.strip() for f in first.replace("\t", ",").split(",")]


def _read_id_table(
    path: Path, delimiter: str
) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """A table with a ``concept_id`` column (and optionally ``image_id``) and numeric columns."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter=delimiter))
    header, body = rows[0], [r for r in rows[1:] if r]
    skip = 2 if len(header) > 1 and header[1] == "image_id" else 1
    try:
        values = np.array([[float(v) for v in r[skip:]] for r in body], dtype=np.float64)
    except ValueError as err:
        raise InputError(f"Cannot read embedding file {path}: {err}") from None
    if values.ndim != 2 or values.size == 0:
        raise InputError(f"The embedding file {path} holds no numbers.")
    return values, tuple(r[0] for r in body), tuple(header[skip:])
