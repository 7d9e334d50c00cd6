"""The 1,854 THINGS concepts and the human behavioural data about them, keyed by concept id.

Everything here is read from a THINGS data directory: the files bundled with the package (see
``data/bundled/NOTICE.md``) by default, or a directory of your own holding files of the same names
(``data_dir=`` or the ``CLIP_HBA_THINGS_DIR`` environment variable).

Row order of every 1,854-row file is the official order of ``unique_id.csv``; ids are attached
to rows as soon as a file is read, and everything downstream joins by id.

Index conventions. Two files index concepts by number rather than by id: ``test_triplets.csv``
and ``triplet48_index.npy``. Their numbers are positions in a list of concepts, and two lists
circulate: the official order and the Python-sorted order of the ids, which differ for 20
concepts (``camera_lens, camera1, camera2`` against ``camera1, camera2, camera_lens``, and the
chicken*, crystal*, hot*, ice*, pepper* groups). The bundled copies use the **sorted** order:
``triplet48_index.npy`` points at ``camera_lens`` in official order where ``words48.mat`` says
"camera", and the SPoSE embedding predicts the 594 test triplets that involve the 20 concepts
at 65.8 % under the sorted reading but 44.9 % under the official one (64.2 % on the rest).
`load_rdm48` checks its index against ``words48`` and so needs no setting;
`load_test_triplets` takes ``index_order`` ("auto": sorted for the bundled file, recognised by
its content wherever it lies; official for any other file).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.resources
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import scipy.io

from clip_hba._validation import InputError, check_known_ids, check_option
from clip_hba.data.embeddings import ConceptEmbedding
from clip_hba.rsa.rdms import RDM

__all__ = [
    "DATA_DIR_ENV",
    "N_CONCEPTS",
    "SPOSE_NAME",
    "ConceptSplit",
    "Concepts",
    "Triplets",
    "bundled_data_dir",
    "check_things_ids",
    "load_concepts",
    "load_rdm48",
    "load_spose",
    "load_spose_labels",
    "load_test_triplets",
    "named_embedding",
    "rescale_minmax",
    "resolve_data_dir",
    "split_concepts",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

DATA_DIR_ENV = "CLIP_HBA_THINGS_DIR"
N_CONCEPTS = 1854
N_HIGH_LEVEL_CATEGORIES = 27  # the first 27 columns of the categories file (Hebart et al. 2019)
IndexOrder = Literal["auto", "unique_id", "sorted_names"]
INDEX_ORDERS: tuple[str, ...] = ("auto", "unique_id", "sorted_names")


# ---------------------------------------------------------------------------- data directory


def bundled_data_dir() -> Path:
    """Folder of the THINGS files shipped with the package."""
    return Path(str(importlib.resources.files("clip_hba") / "data" / "bundled"))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$CLIP_HBA_THINGS_DIR``, else the bundled files."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return bundled_data_dir()
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        raise InputError(f"THINGS data directory {chosen} does not exist or is not a directory.")
    return path


def _readable(load: Callable[..., T]) -> Callable[..., T]:
    """``load(data_dir, ...)``, with a damaged THINGS file reported in one line (a truncated
    .mat or a table cut short raises whatever its reader raises)."""

    @functools.wraps(load)
    def wrapper(data_dir: Path, *args: Any) -> T:
        try:
            return load(data_dir, *args)
        except InputError:
            raise
        except (OSError, ValueError, KeyError, IndexError, scipy.io.matlab.MatReadError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(
                f"A THINGS data file in {data_dir} is damaged or truncated ({reason}); check "
                "--data-dir (or CLIP_HBA_THINGS_DIR), or leave it out for the bundled files."
            ) from None

    return wrapper


def _file(data_dir: Path, name: str) -> Path:
    path = data_dir / name
    if not path.is_file():
        raise InputError(f"THINGS data directory {data_dir} has no file {name}.")
    return path


# sha256 of test_triplets.csv files known to number concepts in Python-sorted id order: the
# copy bundled here (and circulating in public repositories). Any other file is read in the
# official order of THINGS-data.
SORTED_ORDER_TRIPLET_FILES = frozenset(
    {"f2593378408f54fb047b2f9be040e2773be8f24118bc171d46c2c6a6da79afd4"}
)


def _triplet_index_order(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return "sorted_names" if digest in SORTED_ORDER_TRIPLET_FILES else "unique_id"


# ---------------------------------------------------------------------------- concepts


@dataclass(frozen=True, eq=False)  # arrays: compare contents explicitly
class Concepts:
    """The THINGS concepts in official order.

    Attributes
    ----------
    ids : tuple of str, length n_concepts
        ``uniqueID`` strings (``unique_id.csv``), e.g. ``"camera_lens"``.
    words : tuple of str
        The concept words (``"camera lens"``); not unique (``bat`` for ``bat1`` and ``bat2``).
    definitions : tuple of str
    category_names : tuple of str, length n_categories
        The first 27 are the high-level THINGS categories.
    category_matrix : ndarray of bool, shape (n_concepts, n_categories)
    """

    ids: tuple[str, ...]
    words: tuple[str, ...]
    definitions: tuple[str, ...]
    category_names: tuple[str, ...]
    category_matrix: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def _row(self) -> dict[str, int]:
        return {c: k for k, c in enumerate(self.ids)}

    @property
    def high_level_categories(self) -> tuple[str, ...]:
        return self.category_names[:N_HIGH_LEVEL_CATEGORIES]

    def index(self, concept_ids: list[str] | tuple[str, ...]) -> np.ndarray:
        """Official row numbers of ``concept_ids``; `InputError` names any unknown id."""
        check_known_ids("The given ids", concept_ids, self._row)
        return np.array([self._row[c] for c in concept_ids], dtype=np.int64)

    def categories_of(self, concept_id: str) -> tuple[str, ...]:
        """Names of the categories ``concept_id`` belongs to."""
        row = self.category_matrix[self.index([concept_id])[0]]
        return tuple(n for n, member in zip(self.category_names, row, strict=True) if member)


def load_concepts(data_dir: str | os.PathLike | None = None) -> Concepts:
    """The 1,854 concepts with words, definitions and category memberships."""
    return _load_concepts(resolve_data_dir(data_dir))


@functools.lru_cache(maxsize=4)
@_readable
def _load_concepts(data_dir: Path) -> Concepts:
    ids = _read_unique_ids(data_dir)
    table = _read_tsv(_file(data_dir, "things_concepts.tsv"))
    header, rows = table[0], table[1:]
    if [r[header.index("uniqueID")] for r in rows] != list(ids):
        raise InputError(
            "things_concepts.tsv does not list the concepts of unique_id.csv in order."
        )
    words = tuple(r[header.index("Word")] for r in rows)
    definition_col = next(k for k, h in enumerate(header) if h.startswith("Definition"))
    definitions = tuple(r[definition_col] for r in rows)
    names, matrix = _read_categories(data_dir, ids, words)
    return Concepts(ids, words, definitions, names, matrix)


def _read_unique_ids(data_dir: Path) -> tuple[str, ...]:
    lines = _file(data_dir, "unique_id.csv").read_text(encoding="utf-8").split()
    ids = tuple(lines[1:] if lines and lines[0] == "id" else lines)
    if len(ids) != N_CONCEPTS or len(set(ids)) != N_CONCEPTS:
        raise InputError(f"unique_id.csv must list {N_CONCEPTS} distinct ids, got {len(ids)}.")
    return ids


def _read_categories(
    data_dir: Path, ids: tuple[str, ...], words: tuple[str, ...]
) -> tuple[tuple[str, ...], np.ndarray]:
    """Category memberships; the file has words, not ids, so each row's word is checked."""
    table = _read_tsv(_file(data_dir, "Categories_final_20200131.tsv"))
    names = tuple(table[0][2:])
    rows = [r for r in table[1:] if r[0].strip()]  # the last row holds column totals
    if len(rows) != len(ids):
        raise InputError(f"The categories file has {len(rows)} concept rows, expected {len(ids)}.")
    for row, concept_id, word in zip(rows, ids, words, strict=True):
        label = row[0].replace(" ", "_")
        if label not in {concept_id, word.replace(" ", "_")}:
            raise InputError(
                f"The categories file is not in official order: row {row[0]!r} stands where "
                f"{concept_id!r} is expected."
            )
    matrix = np.array([[v.strip() == "1" for v in r[2:]] for r in rows], dtype=bool)
    return names, matrix


def _read_tsv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle, delimiter="\t"))


# ---------------------------------------------------------------------------- SPoSE targets


def load_spose(
    data_dir: str | os.PathLike | None = None,
    rescale: Literal["none", "minmax100"] = "none",
) -> ConceptEmbedding:
    """The SPoSE 66-d behavioural embedding (Hebart et al. 2020) of the 1,854 concepts.

    Parameters
    ----------
    data_dir : path, optional
    rescale : {"none", "minmax100"}
        ``"minmax100"`` maps the global minimum and maximum to 0 and 100, the targets of
        CLIP-HBA-Behavior (see `rescale_minmax`).

    Returns
    -------
    ConceptEmbedding, shape (1854, 66), columns labelled with `load_spose_labels`.
    """
    check_option("rescale", rescale, ("none", "minmax100"))
    directory = resolve_data_dir(data_dir)
    embedding = _load_spose(directory)
    return rescale_minmax(embedding) if rescale == "minmax100" else embedding


SPOSE_NAME = "spose"  # what --embedding takes for the bundled SPoSE embedding


def named_embedding(
    path: str | os.PathLike, data_dir: str | os.PathLike | None = None
) -> ConceptEmbedding | None:
    """The bundled SPoSE embedding if ``path`` is ``"spose"`` (and no file of that name
    exists), else None: `--embedding spose` needs no copy of the file."""
    if str(path) == SPOSE_NAME and not Path(path).exists():
        return load_spose(data_dir)
    return None


@functools.lru_cache(maxsize=4)
@_readable
def _load_spose(data_dir: Path) -> ConceptEmbedding:
    ids = _read_unique_ids(data_dir)
    values = np.loadtxt(_file(data_dir, "spose_embedding_66d_sorted.txt"), ndmin=2)
    labels = load_spose_labels(data_dir)
    if values.shape != (len(ids), len(labels)):
        raise InputError(
            f"The SPoSE file has shape {values.shape}, expected ({len(ids)}, {len(labels)})."
        )
    return ConceptEmbedding(values, ids, labels)


def load_spose_labels(data_dir: str | os.PathLike | None = None) -> tuple[str, ...]:
    """Labels of the 66 SPoSE dimensions, in column order (e.g. ``"metallic/artificial"``)."""
    path = _file(resolve_data_dir(data_dir), "spose_dimension_labels66.txt")
    return tuple(
        line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    )


def rescale_minmax(
    embedding: ConceptEmbedding,
    low: float = 0.0,
    high: float = 100.0,
    reference_ids: Sequence[str] | None = None,
) -> ConceptEmbedding:
    """Map the global minimum of ``embedding`` to ``low`` and its maximum to ``high``.

    One scale for the whole matrix (not per dimension), so the relative sizes of dimensions are
    kept, as in CLIP-HBA. With ``reference_ids`` the minimum and maximum are taken over those
    rows only (e.g. the training concepts), and other rows may fall outside [low, high].
    """
    reference = (
        embedding.values if reference_ids is None else embedding.select(reference_ids).values
    )
    span = reference.max() - reference.min()
    if span == 0:
        raise InputError("Cannot min-max rescale a constant embedding.")
    scaled = low + (embedding.values - reference.min()) * (high - low) / span
    return ConceptEmbedding(scaled, embedding.concept_ids, embedding.dim_labels)


# ---------------------------------------------------------------------------- RDM48 and splits


def load_rdm48(data_dir: str | os.PathLike | None = None) -> RDM:
    """The fully sampled behavioural RDM of 48 concepts (``RDM48_triplet``), with concept ids.

    The ids come from ``triplet48_index.npy``, checked concept by concept against the words of
    ``words48.mat``; the index is read in official order or, if that contradicts the words, in
    Python-sorted order (which is how the bundled copy was written: it maps "camera" to
    ``camera1``, not ``camera_lens``).
    """
    return _load_rdm48(resolve_data_dir(data_dir))


@functools.lru_cache(maxsize=4)
@_readable
def _load_rdm48(data_dir: Path) -> RDM:
    concepts = _load_concepts(data_dir)
    index = np.load(_file(data_dir, "triplet48_index.npy"), allow_pickle=False).astype(np.int64)
    words48 = [
        str(np.squeeze(cell))
        for cell in scipy.io.loadmat(_file(data_dir, "words48.mat"))["words48"].ravel()
    ]
    square = scipy.io.loadmat(_file(data_dir, "RDM48_triplet.mat"))["RDM48_triplet"]
    if not (len(index) == len(words48) == square.shape[0]):
        raise InputError("triplet48_index.npy, words48.mat and RDM48_triplet.mat differ in size.")
    word_of = dict(zip(concepts.ids, concepts.words, strict=True))
    for order in ("unique_id", "sorted_names"):
        ids = [_ordered_ids(concepts.ids, order)[i] for i in index]
        if all(word_of[c] == w for c, w in zip(ids, words48, strict=True)):
            break
    else:
        raise InputError(
            "triplet48_index.npy does not match the words of words48.mat in official or sorted "
            "order."
        )
    logger.debug("RDM48 concept index read in %s order", order)
    return RDM.from_square(square, ids, metric="triplet odd-one-out")


@dataclass(frozen=True)
class ConceptSplit:
    """Concept ids for training, validation and held-out testing (all in official order)."""

    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    seed: int
    val_fraction: float


def split_concepts(
    seed: int = 0, val_fraction: float = 0.2, data_dir: str | os.PathLike | None = None
) -> ConceptSplit:
    """Seeded train/validation split of the concepts outside the 48 held-out RDM concepts.

    Parameters
    ----------
    seed : int
    val_fraction : float
        Share of the 1,806 non-held-out concepts used for validation, in (0, 1).

    Returns
    -------
    ConceptSplit
        ``test_ids`` are the 48 concepts of `load_rdm48`, never in train or validation.
    """
    if not 0 < val_fraction < 1:
        raise InputError(
            f"Invalid value for 'val_fraction': expected a number in (0, 1), got {val_fraction!r}."
        )
    directory = resolve_data_dir(data_dir)
    concepts = _load_concepts(directory)
    test_ids = _load_rdm48(directory).concept_ids
    held_out = set(test_ids)
    pool = [c for c in concepts.ids if c not in held_out]
    n_val = round(val_fraction * len(pool))
    chosen = set(np.random.default_rng(seed).permutation(len(pool))[:n_val].tolist())
    val_ids = tuple(c for k, c in enumerate(pool) if k in chosen)
    train_ids = tuple(c for k, c in enumerate(pool) if k not in chosen)
    return ConceptSplit(train_ids, val_ids, tuple(test_ids), seed, val_fraction)


# ---------------------------------------------------------------------------- test triplets


@dataclass(frozen=True, eq=False)  # arrays: compare contents explicitly
class Triplets:
    """Odd-one-out judgements.

    Attributes
    ----------
    concept_ids : ndarray of str, shape (n_triplets, 3)
    odd_one_out : ndarray of int, shape (n_triplets,)
        Position (0, 1 or 2) of the concept chosen as the odd one out.
    subject : ndarray of int, shape (n_triplets,)
    index_order : str
        How the file's concept numbers were read ("unique_id" or "sorted_names").
    """

    concept_ids: np.ndarray
    odd_one_out: np.ndarray
    subject: np.ndarray
    index_order: str

    def __len__(self) -> int:
        return len(self.odd_one_out)


def load_test_triplets(
    data_dir: str | os.PathLike | None = None, index_order: IndexOrder = "auto"
) -> Triplets:
    """The 20,000 held-out odd-one-out judgements of ``test_triplets.csv``.

    Parameters
    ----------
    data_dir : path, optional
    index_order : {"auto", "unique_id", "sorted_names"}
        List that the file's 1-based concept numbers index: the official order, or the
        Python-sorted ids. ``"auto"`` recognises the bundled file by content (sha256; it is read
        as "sorted_names", see the module docstring for the evidence) and reads any other file
        as "unique_id".
    """
    check_option("index_order", index_order, INDEX_ORDERS)
    directory = resolve_data_dir(data_dir)
    if index_order == "auto":
        index_order = _triplet_index_order(_file(directory, "test_triplets.csv"))
    return _load_test_triplets(directory, index_order)


@functools.lru_cache(maxsize=4)
@_readable
def _load_test_triplets(data_dir: Path, index_order: str) -> Triplets:
    path = _file(data_dir, "test_triplets.csv")
    table = np.loadtxt(path, dtype=np.int64, ndmin=2)
    if table.shape[1] < 4:
        raise InputError(f"{path} must have columns i j k choice [subject].")
    numbers = table[:, :3]
    if numbers.min() < 1 or numbers.max() > N_CONCEPTS or not np.isin(table[:, 3], [1, 2, 3]).all():
        raise InputError(
            f"{path} holds concept numbers outside 1..{N_CONCEPTS} or choices outside 1..3."
        )
    ids = np.array(_ordered_ids(_read_unique_ids(data_dir), index_order))
    subject = table[:, 4] if table.shape[1] > 4 else np.full(len(table), -1)
    return Triplets(ids[numbers - 1], table[:, 3] - 1, subject, index_order)


def _ordered_ids(official_ids: tuple[str, ...], order: str) -> tuple[str, ...]:
    return tuple(sorted(official_ids)) if order == "sorted_names" else official_ids


def check_things_ids(
    concept_ids: tuple[str, ...] | list[str], data_dir: str | os.PathLike | None = None
) -> None:
    """Raise `InputError` naming any id that is not a THINGS concept."""
    check_known_ids("The embedding", concept_ids, set(load_concepts(data_dir).ids))
