"""File input and output.

Reading numeric tables and id lists with one clear error for any unreadable file; writing
atomically, so an interrupted run never leaves a half-written file that looks whole.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clip_hba._validation import InputError


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic on POSIX file systems, so readers see either the old file or the new one.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"Cannot write {path}: it is a directory.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise InputError(f"Cannot write {path}: {err.strerror or err}.") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write named arrays as an uncompressed ``.npz`` to ``path`` atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:  # a file object: np.savez would append ".npz" to a path
            np.savez(handle, **arrays)

    return write_atomic(path, write)


def write_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write one array as ``.npy`` to ``path`` atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.save(handle, array)

    return write_atomic(path, write)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; `InputError` if it is missing or damaged."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"Cannot read {path}: {err}") from None


def refuse_existing(path: str | os.PathLike, force: bool) -> Path:
    """``path``, unless it exists and ``force`` is off (then `InputError` naming ``--force``)."""
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path} exists; use --force to overwrite it or choose another --out.")
    return path


def read_ids(path: str | os.PathLike) -> tuple[str, ...]:
    """Read concept ids, one per line (first comma/tab-separated field; header ``id`` skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"Cannot read ids file {path}: {_reason(err)}") from None
    ids = [line.replace("\t", ",").split(",")[0].strip() for line in lines]
    while ids and not ids[-1]:
        ids.pop()
    if ids and ids[0].lower() in {"id", "concept_id", "uniqueid"}:
        ids = ids[1:]
    if not ids:
        raise InputError(f"Ids file {path} holds no ids.")
    if "" in ids:
        # a blank line would shift every later id onto the wrong row
        raise InputError(
            f"Ids file {path} has a blank line among its ids (id number {ids.index('') + 1})."
        )
    return tuple(ids)


def read_matrix(path: Path, what: str) -> np.ndarray:
    """Numeric array from ``.npy`` or a ``.txt``/``.csv``/``.tsv`` table (text: always 2-D)."""
    suffix = path.suffix.lower()
    if suffix not in {".npy", ".txt", ".csv", ".tsv"}:
        raise InputError(
            f"Cannot read {what} file {path}: expected a .npy, .txt, .csv or .tsv file."
        )
    try:
        if suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            values = _read_text_matrix(path, {".txt": None, ".csv": ",", ".tsv": "\t"}[suffix])
    except (OSError, ValueError, UnicodeDecodeError, EOFError) as err:
        raise InputError(f"Cannot read {what} file {path}: {_reason(err)}") from None
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise InputError(
            f"Cannot read {what} file {path}: expected real numbers, got {values.dtype}."
        )
    if values.size == 0:
        raise InputError(f"The {what} file {path} holds no numbers.")
    return values.astype(np.float64)


def _read_text_matrix(path: Path, delimiter: str | None) -> np.ndarray:
    with path.open(encoding="utf-8") as handle:
        first = handle.readline()
    header = 0
    try:
        [float(v) for v in first.replace(",", " ").split()]
    except ValueError:
        header = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty file is reported by the caller
        return np.loadtxt(path, delimiter=delimiter, skiprows=header, ndmin=2)


def _reason(err: BaseException) -> str:
    if isinstance(err, FileNotFoundError):
        return "no such file."
    if isinstance(err, IsADirectoryError):
        return "it is a directory."
    if isinstance(err, UnicodeDecodeError):
        return "it is not a text file."
    if isinstance(err, EOFError):
        return "the file is empty or truncated."
    return str(err).splitlines()[0] if str(err) else type(err).__name__
