"""File input and output.

Reading numeric tables and id lists with one clear error for any unreadable file; writing
atomically, so an interrupted run never leaves a half-written file that looks whole.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import socket
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clip_hba._validation import InputError

logger = logging.getLogger(__name__)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic on POSIX file systems, so readers see either the old file or the new one.
    A symbolic link is followed: its target is replaced, the link stays.
    The file gets the permissions of any new file (``0666`` less the umask), not ``mkstemp``'s
    ``0600``; the temporary file is removed if ``write`` fails.
    """
    path = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
    tmp_path = temp_path_beside(path)
    try:
        write(tmp_path)
        publish(tmp_path, path)
    except OSError as err:  # a full disk, a quota, a vanished folder
        raise InputError(f"Cannot write {path}: {err.strerror or err}.") from None
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` if it is a folder or one can be made there; else `InputError` naming ``option``.

    Called before any work starts, so that a run never fails at its first write.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file; give a folder (made if it does not exist).")
    _check_creatable(path, path, option)
    return path


def check_output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` if a file can be written there; else `InputError` naming ``option``."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name.")
    _check_creatable(path.parent, path, option)
    return path


def _check_creatable(folder: Path, path: Path, option: str) -> None:
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"Cannot write {option} {path}: {existing} is a file, not a folder.")
    refused = _refuses_files(existing)
    if refused:
        raise InputError(
            f"Cannot write {option} {path}: the folder {existing} is not writable ({refused})."
        )


def _refuses_files(folder: Path) -> str | None:
    """Why ``folder`` takes no new file, or None. A real try, not `os.access`, which can be
    wrong under ACLs, root squash or read-only mounts (and says yes to root everywhere)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".clip-hba-probe.", dir=folder)
    except OSError as err:
        return err.strerror or str(err)
    os.close(fd)
    os.unlink(probe)
    return None


def temp_path_beside(path: str | os.PathLike) -> Path:
    """A new empty hidden temporary file next to ``path``, for `publish` to move into place.

    Its name (``.NAME.HOST-PID.RANDOM.tmp``) says which process on which machine writes it, so
    that the temporary files of killed processes (which no ``finally`` could remove) are
    recognised: `remove_stale_temp_files` runs first.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"Cannot write {path}: it is a directory.")
    if path.exists() and not path.is_file():  # a device or FIFO: a rename would replace it
        raise InputError(f"Cannot write {path}: it is not a regular file; give a file path.")
    _check_creatable(path.parent, path, "output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(path)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=_TEMP_SUFFIX, dir=path.parent
        )
    except OSError as err:
        raise InputError(f"Cannot write {path}: {err.strerror or err}.") from None
    os.close(fd)
    return Path(tmp)


def publish(tmp_path: Path, path: str | os.PathLike) -> Path:
    """Give ``tmp_path`` a new file's permissions and rename it over ``path`` (atomic)."""
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())
    except OSError:  # file systems without POSIX modes (SMB): they decide
        logger.debug("Could not set the mode of %s.", tmp_path)
    os.replace(tmp_path, path)
    return Path(path)


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files beside ``path`` left by processes of this machine that no
    longer run (a file of another machine sharing the folder is left alone).

    Returns the removed files (each also logged as a warning, with its size).
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?P<host>[^.]*)-(?P<pid>\d+)\.[^.]+\.tmp")
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*{_TEMP_SUFFIX}"):
        match = pattern.fullmatch(candidate.name)
        if match is None or match["host"] != _HOST or _process_runs(int(match["pid"])):
            continue
        try:
            size = candidate.stat().st_size
            candidate.unlink()
        except OSError:  # gone meanwhile, or not ours to remove
            continue
        logger.warning(
            "Removed %s (%s), left by an interrupted write of %s.",
            candidate,
            _size_text(size),
            path.name,
        )
        removed.append(candidate)
    return removed


_TEMP_SUFFIX = ".tmp"
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())  # no dots or dashes in the name


def _process_runs(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _umask() -> int:
    """The process umask, read from /proc where it can be (setting it to read it is not safe
    while other threads create files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _size_text(n_bytes: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes} bytes"


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


NPY_MAGIC = b"\x93NUMPY"


def load_npy(path: str | os.PathLike, mmap_mode: str | None = None) -> np.ndarray:
    """``np.load`` of a ``.npy`` file (never pickles), with one clear error for a file that is
    empty, truncated, not a ``.npy`` file at all, or holds Python objects."""
    path = Path(path)
    with path.open("rb") as handle:  # OSError (missing, a folder) is for the caller to word
        magic = handle.read(len(NPY_MAGIC))
    if len(magic) < len(NPY_MAGIC):
        raise InputError(f"{path} is empty or truncated ({len(magic)} bytes): save it again.")
    if magic != NPY_MAGIC:
        raise InputError(
            f"{path} is not a valid .npy file (it does not start with the NumPy header); "
            "write it with numpy.save."
        )
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (EOFError, ValueError) as err:
        if "object" in str(err).lower() or "pickle" in str(err).lower():
            raise InputError(f"{path} holds Python objects, not numbers.") from None
        raise InputError(f"{path} is empty or truncated ({err}): save it again.") from None


def read_matrix(path: Path, what: str) -> np.ndarray:
    """Numeric array from ``.npy`` or a ``.txt``/``.csv``/``.tsv`` table (text: always 2-D)."""
    suffix = path.suffix.lower()
    if suffix not in {".npy", ".txt", ".csv", ".tsv"}:
        raise InputError(
            f"Cannot read {what} file {path}: expected a .npy, .txt, .csv or .tsv file."
        )
    try:
        if suffix == ".npy":
            values = load_npy(path)
        else:
            values = _read_text_matrix(path, {".txt": None, ".csv": ",", ".tsv": "\t"}[suffix])
    except InputError as err:  # load_npy's, which starts with the path
        raise InputError(
            f"Cannot read {what} file {path}: {'it ' + str(err).removeprefix(f'{path} ')}"
        ) from None
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
