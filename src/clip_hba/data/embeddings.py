"""Concept embeddings keyed by concept id: read from and written to files.

`ConceptEmbedding` holds one row per concept (N, D); `StackedEmbedding` holds the same concepts
at several layers or timepoints (M, N, D) with that axis. Both carry their concept ids, and
their files carry them too (``.npz`` from ``clip-hba embed``, ``.csv``/``.tsv`` with a
``concept_id`` column); plain ``.npy``/``.txt`` tables need the ids given beside them.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from clip_hba._io import read_ids, read_matrix, write_npz_atomic, write_text_atomic
from clip_hba._validation import InputError, check_finite, check_option, check_unique_ids
from clip_hba.rsa.rdms import rdm

__all__ = [
    "ConceptEmbedding",
    "ImageEmbedding",
    "StackedEmbedding",
    "check_embedding_out",
    "read_embedding",
    "read_ids",
    "read_stacked_embedding",
    "save_embedding",
    "save_image_embedding",
    "save_stacked_embedding",
]

OUTPUT_SUFFIXES = (".npz", ".csv", ".tsv")


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
    try:
        return ConceptEmbedding(values, concept_ids, labels)
    except InputError as err:  # name the file: a command may read several
        raise InputError(f"{path}: {err}") from None


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


# ---------------------------------------------------------------------------- stacked (M, N, D)


@dataclass(frozen=True, eq=False)  # arrays: compare contents explicitly
class StackedEmbedding:
    """Embeddings of the same concepts at every layer or timepoint of a model.

    Parameters
    ----------
    values : array-like, shape (M, n_concepts, n_dims)
        Stored as a read-only float64 copy.
    concept_ids : sequence of str, length n_concepts
    axis : {"layers", "time"}
        What the first axis counts.
    labels : sequence of str, length M
        Layer names (``block_1`` ...) or time labels (``t=100ms``); default from the axis.
    times_ms : array-like, shape (M,), optional
        Required for ``axis="time"``.
    dim_labels : sequence of str, length n_dims, optional
    """

    values: np.ndarray
    concept_ids: tuple[str, ...]
    axis: Literal["layers", "time"]
    labels: tuple[str, ...] = ()
    times_ms: np.ndarray | None = None
    dim_labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_option("axis", self.axis, ("layers", "time"))
        values = np.array(self.values, dtype=np.float64)
        ids = tuple(str(c) for c in self.concept_ids)
        if values.ndim != 3 or values.shape[1] != len(ids):
            raise InputError(
                f"A stacked embedding must be (M, n_concepts, n_dims) with {len(ids)} concepts, "
                f"got shape {values.shape}."
            )
        check_unique_ids("The embedding's concept ids", ids)
        times = None if self.times_ms is None else np.asarray(self.times_ms, dtype=np.float64)
        if self.axis == "time" and (times is None or times.shape != (len(values),)):
            raise InputError(f"A time-resolved embedding needs one time per row ({len(values)}).")
        labels = tuple(self.labels) or (
            tuple(f"t={t:g}ms" for t in times)
            if self.axis == "time"
            else tuple(f"block_{k + 1}" for k in range(len(values)))
        )
        if len(labels) != len(values):
            raise InputError(f"{len(labels)} labels for {len(values)} {self.axis}.")
        values.flags.writeable = False
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "concept_ids", ids)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "times_ms", times)
        if self.dim_labels is not None:
            object.__setattr__(self, "dim_labels", tuple(self.dim_labels))

    @property
    def n_concepts(self) -> int:
        return self.values.shape[1]


def read_stacked_embedding(path: str | os.PathLike) -> StackedEmbedding | None:
    """The `StackedEmbedding` of an ``.npz`` whose ``embedding`` is 3-D, else None.

    The file says what its first axis is: ``times_ms`` (time-resolved, e.g. ``clip-hba embed``
    of a MEG run) or ``layers`` (layer-wise, ``clip-hba embed --layers``).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "embedding" not in archive or archive["embedding"].ndim != 3:
                return None
            values = np.asarray(archive["embedding"], dtype=np.float64)
            ids = tuple(str(c) for c in archive["concept_ids"])
            if "times_ms" in archive:
                return StackedEmbedding(values, ids, "time", times_ms=archive["times_ms"])
            if "layers" in archive:
                layers = tuple(str(x) for x in archive["layers"])
                return StackedEmbedding(values, ids, "layers", labels=layers)
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise InputError(f"Cannot read embedding file {path}: {err}") from None
    raise InputError(
        f"{path} holds a 3-D embedding but neither 'times_ms' nor 'layers' to say what its "
        "first axis is."
    )


# ---------------------------------------------------------------------------- writers


def save_embedding(
    path: str | os.PathLike,
    embedding: ConceptEmbedding,
    item_ids: Sequence[str],
    with_rdm: bool = False,
) -> Path:
    """Write an embedding with its ids, atomically.

    ``.npz``: arrays ``embedding`` (N, D), ``concept_ids``, ``image_ids``, ``labels`` and, with
    ``with_rdm``, ``rdm`` (condensed 1 - Pearson, N*(N-1)/2). ``.csv``/``.tsv``: one row per
    item, columns ``concept_id``, ``image_id`` and one per label (no RDM).
    """
    return _save_rows(path, embedding, item_ids, with_rdm)


def _table(
    embedding: ConceptEmbedding | ImageEmbedding, item_ids: Sequence[str], suffix: str
) -> str:
    """CSV/TSV text: columns concept_id, image_id and one per label."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="," if suffix == ".csv" else "\t")
    n_dims = embedding.values.shape[1]
    labels = embedding.dim_labels or tuple(f"dim{k}" for k in range(n_dims))
    writer.writerow(["concept_id", "image_id", *labels])
    for concept, item, row in zip(embedding.concept_ids, item_ids, embedding.values, strict=True):
        writer.writerow([concept, item, *(repr(float(v)) for v in row)])
    return buffer.getvalue()


@dataclass(frozen=True, eq=False)
class ImageEmbedding:
    """One row per image, with its image id and the concept it shows (ids may repeat).

    Parameters
    ----------
    values : array-like, shape (n_images, n_dims)
    concept_ids, image_ids : sequence of str, length n_images
    dim_labels : sequence of str, length n_dims, optional
    """

    values: np.ndarray
    concept_ids: tuple[str, ...]
    image_ids: tuple[str, ...]
    dim_labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        values = np.array(self.values, dtype=np.float64)
        if values.ndim != 2 or not len(values) == len(self.concept_ids) == len(self.image_ids):
            raise InputError(
                f"An image embedding must be (n_images, n_dims) with one concept id and image id "
                f"per row, got shape {values.shape}, {len(self.concept_ids)} concept ids and "
                f"{len(self.image_ids)} image ids."
            )
        check_finite("The image embedding", values)
        values.setflags(write=False)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "concept_ids", tuple(map(str, self.concept_ids)))
        object.__setattr__(self, "image_ids", tuple(map(str, self.image_ids)))


def save_image_embedding(path: str | os.PathLike, embedding: ImageEmbedding) -> Path:
    """Write an `ImageEmbedding`, atomically: ``.npz`` (arrays ``embedding``, ``concept_ids``,
    ``image_ids``, ``labels``) or ``.csv``/``.tsv`` (columns ``concept_id``, ``image_id`` and
    one per label)."""
    return _save_rows(path, embedding, embedding.image_ids, with_rdm=False)


def check_embedding_out(
    path: str | os.PathLike, axis: str | None = None, with_rdm: bool = False
) -> Path:
    """Refuse an output path the embedding writers would refuse, before the work is done.

    Parameters
    ----------
    path : path
    axis : {None, "layers", "time"}
        None: one row per concept or image (``.npz``, ``.csv`` or ``.tsv``); otherwise a
        `StackedEmbedding` of that axis (``.npz`` only).
    with_rdm : bool
        The RDM is written too (``.npz`` only; not with layers).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if axis is not None:
        what = "Layer-wise features" if axis == "layers" else "Time-resolved embeddings"
        if suffix != ".npz":
            raise InputError(f"{what} go into an .npz file, got {path}.")
        if with_rdm and axis == "layers":
            raise InputError("--rdm and --layers cannot be combined.")
    elif suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"Cannot write embeddings to {path}: use a .npz, .csv or .tsv file.")
    elif with_rdm and suffix != ".npz":
        raise InputError("An RDM can only be written into a .npz file (--rdm).")
    return path


def _save_rows(
    path: str | os.PathLike,
    embedding: ConceptEmbedding | ImageEmbedding,
    item_ids: Sequence[str],
    with_rdm: bool,
) -> Path:
    """One row per concept or image, as ``.npz`` (with the RDM, if asked) or ``.csv``/``.tsv``."""
    path = check_embedding_out(path, with_rdm=with_rdm)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = {
            "embedding": embedding.values,
            "concept_ids": np.array(embedding.concept_ids),
            "image_ids": np.array(item_ids),
            "labels": np.array(embedding.dim_labels or ()),
        }
        if with_rdm:
            arrays["rdm"] = rdm(embedding.values, "pearson")
        return write_npz_atomic(path, arrays)
    return write_text_atomic(path, _table(embedding, item_ids, suffix))


def save_stacked_embedding(
    path: str | os.PathLike,
    embedding: StackedEmbedding,
    item_ids: Sequence[str],
    with_rdm: bool = False,
) -> Path:
    """Write a `StackedEmbedding` as ``.npz``, atomically.

    Arrays: ``embedding`` (M, N, D), ``concept_ids``, ``image_ids`` and, for layers,
    ``layers`` (``block_1`` ... ``block_L``); for time, ``times_ms`` and ``labels`` (the
    dimension labels) and, with ``with_rdm``, ``rdm`` (M, pairs) of 1 - Pearson.
    """
    path = check_embedding_out(path, embedding.axis, with_rdm)
    arrays = {"embedding": embedding.values}
    if embedding.axis == "time":
        arrays["times_ms"] = embedding.times_ms
    arrays["concept_ids"] = np.array(embedding.concept_ids)
    arrays["image_ids"] = np.array(item_ids)
    if embedding.axis == "layers":
        arrays["layers"] = np.array(embedding.labels)
    else:
        arrays["labels"] = np.array(embedding.dim_labels or ())
        if with_rdm:
            arrays["rdm"] = rdm(embedding.values, "pearson")
    return write_npz_atomic(path, arrays)
