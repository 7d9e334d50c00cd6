"""Importers into the RDM store: the THINGS-MEG release file, NumPy arrays, MNE epochs, BIDS.

Every importer streams: one (participant, timepoint) RDM (or one participant's epochs) is in
memory at a time, and the store is written to a temporary file that is renamed only when
complete. Square RDMs become condensed upper triangles by taking each pair from whichever
triangle holds a number (decoding RDMs fill only one); a pair missing in both stays NaN, and a
pair whose two triangles differ is refused unless ``asymmetry`` says how to condense it
(`clip_hba.rsa.rdms.to_condensed`). Ids and times of ``.npy`` and ``.mat`` files may come from
a sidecar JSON beside them (``X.json``), which `export_things_mat` writes.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm.auto import tqdm

from clip_hba._io import load_npy, read_ids
from clip_hba._validation import InputError, check_option
from clip_hba.data.things import load_concepts
from clip_hba.meg.bids import import_bids
from clip_hba.meg.config import BidsEpoching, EpochsConfig
from clip_hba.meg.epochs import bin_means, import_epochs, time_bins
from clip_hba.meg.writer import StoreWriter, check_out_file
from clip_hba.meg.writer import export_things_mat as export_things_mat  # moved; kept importable
from clip_hba.meg.writer import write_things_mat as write_things_mat
from clip_hba.rsa.methods import ASYMMETRY_POLICIES, Asymmetry
from clip_hba.rsa.rdms import n_conditions, to_condensed

__all__ = [
    "FORMATS",
    "THINGS_MEG_TIMES_MS",
    "guess_format",
    "import_npy",
    "import_rdms",
    "import_things_mat",
    "resolve_times",
]

THINGS_MEG_TIMES_MS = np.arange(-100.0, 1300.0 + 1e-9, 5.0)  # 281 timepoints
FORMATS: tuple[str, ...] = ("auto", "things-mat", "npy", "mne", "bids")
NPY_SHAPES = (
    "(P, T, N, N) or (T, N, N) square RDMs, or (P, T, n_pairs) or (T, n_pairs) condensed upper "
    "triangles with n_pairs = N*(N-1)/2 (P participants, T timepoints, N concepts)"
)


def guess_format(sources: Sequence[str | os.PathLike]) -> str:
    """The import format of ``sources`` from their names: a folder is BIDS, ``.npy``, ``.mat``
    (the THINGS-MEG release) or MNE ``-epo.fif`` files."""
    first = Path(sources[0])
    if first.is_dir():
        return "bids"
    name = first.name.lower()
    if name.endswith(".npy"):
        return "npy"
    if name.endswith(".mat"):
        return "things-mat"
    if name.endswith(("-epo.fif", "_epo.fif", "-epo.fif.gz")):
        return "mne"
    raise InputError(f"Cannot tell the format of {first}: give --format.")


def import_rdms(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    format: str = "auto",
    variable: str | None = None,
    concept_ids: Sequence[str] | str | os.PathLike | None = None,
    participant_ids: Sequence[str] | None = None,
    times_ms: Any = None,
    asymmetry: Asymmetry = "raise",
    inf_as_nan: bool = False,
    epochs: EpochsConfig | None = None,
    concept_column: str | None = None,
    fold_column: str | None = None,
    subjects: Sequence[str] | None = None,
    epoching: BidsEpoching | None = None,
    dtype: str = "float32",
    force: bool = False,
    data_dir: str | os.PathLike | None = None,
    verbose: bool = True,
) -> Path:
    """Import MEG RDMs, or MEG epochs turned into RDMs, into a store (any supported format).

    Parameters
    ----------
    sources : sequence of path
        The release ``.mat`` file, a ``.npy`` array, one ``-epo.fif`` file per participant, or
        a BIDS root folder.
    format : {"auto", "things-mat", "npy", "mne", "bids"}
        ``auto`` guesses from the names (`guess_format`).
    variable, concept_ids, participant_ids, times_ms, asymmetry, inf_as_nan
        things-mat / npy: see `import_things_mat` and `import_npy` (``participant_ids`` also
        names MNE participants).
    epochs : EpochsConfig, optional
        mne / bids: how epochs become RDMs.
    concept_column, fold_column
        mne: metadata columns of the concept id and of the decoding folds.
    subjects, epoching
        bids: the subjects (default all) and how runs are cut into epochs.
    force : bool
        Overwrite an existing ``out``.

    Returns
    -------
    Path of the store.
    """
    check_option("format", format, FORMATS)
    check_option("asymmetry", asymmetry, ASYMMETRY_POLICIES)
    check_out_file(out, force)
    sources = [Path(s) for s in sources]
    if not sources:
        raise InputError("Give at least one source to import.")
    if any(Path(out).resolve() == s.resolve() for s in sources):
        raise InputError(f"--out {out} is one of the sources being imported; give another file.")
    kind = guess_format(sources) if format == "auto" else format
    if kind in ("things-mat", "npy", "bids") and len(sources) != 1:
        raise InputError(f"--format {kind} takes one source, got {len(sources)}.")
    if kind in ("mne", "bids") and (asymmetry != "raise" or inf_as_nan):
        raise InputError(
            f"--asymmetric and --inf-as-nan are for imported RDMs, not {kind} epochs (epochs "
            "with non-finite samples are refused; their RDMs are symmetric)."
        )
    arrays = dict(
        concept_ids=concept_ids,
        participant_ids=participant_ids,
        times_ms=times_ms,
        asymmetry=asymmetry,
        inf_as_nan=inf_as_nan,
        dtype=dtype,
        data_dir=data_dir,
        bin_ms=None if epochs is None else epochs.bin_ms,
        verbose=verbose,
    )
    if kind == "things-mat":
        return import_things_mat(sources[0], out, variable=variable, **arrays)
    if kind == "npy":
        return import_npy(sources[0], out, **arrays)
    if kind == "mne":
        return import_epochs(
            sources,
            out,
            participant_ids=participant_ids,
            config=epochs,
            concept_column=concept_column,
            fold_column=fold_column,
            dtype=dtype,
            data_dir=data_dir,
            verbose=verbose,
        )
    return import_bids(
        sources[0],
        out,
        subjects=subjects,
        epoching=epoching,
        config=epochs,
        dtype=dtype,
        data_dir=data_dir,
        verbose=verbose,
    )


def import_things_mat(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    variable: str | None = None,
    concept_ids: Sequence[str] | str | os.PathLike | None = None,
    participant_ids: Sequence[str] | None = None,
    times_ms: Any = None,
    asymmetry: Asymmetry = "raise",
    inf_as_nan: bool = False,
    dtype: str = "float32",
    data_dir: str | os.PathLike | None = None,
    bin_ms: float | None = None,
    verbose: bool = True,
) -> Path:
    """Import the THINGS-MEG release RDMs (MATLAB v7.3 / HDF5) into a store.

    Arguments not given come from a sidecar JSON beside the file (``X.json`` for ``X.mat``,
    as `export_things_mat` writes it; keys ``variable``, ``concept_ids``, ``times_ms``,
    ``participant_ids``), else from the defaults below.

    Parameters
    ----------
    source : path
        The release file, e.g. ``validation-pairwise_decoding_RDM1854.mat``, whose variable
        reads with h5py as (P, T, N, N) (MATLAB shape (N, N, T, P)).
    out : path
        The store to write (``.h5``).
    variable : str, optional
        Name of the variable in the file (default ``mat``).
    concept_ids : sequence of str or ids file, optional
        Concept of each row; default the 1,854 THINGS concepts in official order.
    participant_ids : sequence of str, optional
        Default ``P1``, ``P2``, ...
    times_ms : array-like or dict, optional
        Time axis (see `resolve_times`); default -100..1300 ms in 5 ms steps.
    asymmetry : {"raise", "average", "upper", "lower"}
        A pair filled in both triangles with two values: refuse (default), or take their mean,
        the upper or the lower triangle's value.
    inf_as_nan : bool
        Store infinite values as missing pairs (NaN) instead of refusing the file.
    dtype : {"float32", "float16"}
    data_dir : path, optional
        THINGS data directory whose concepts are the default ids (default: bundled).
    bin_ms : float, optional
        Average consecutive timepoints into bins of this width (see `time_bins`).
    verbose : bool
        Show a progress bar.

    Returns
    -------
    Path of the store.
    """
    source = Path(source)
    _check_source(source)
    sidecar = _read_sidecar(source.with_suffix(".json"))
    variable = variable or str(sidecar.get("variable") or "mat")
    concept_ids = concept_ids if concept_ids is not None else sidecar.get("concept_ids")
    participant_ids = participant_ids or sidecar.get("participant_ids")
    times_ms = times_ms if times_ms is not None else sidecar.get("times_ms")
    try:
        handle = h5py.File(source, "r")
    except OSError:
        raise InputError(
            f"Cannot read {source} as a MATLAB v7.3 (HDF5) file; save it with -v7.3, or export "
            "the array to .npy and use --format npy."
        ) from None
    with handle:
        if variable not in handle:
            raise InputError(
                f"{source} has no variable {variable!r}; it holds {sorted(handle.keys())}."
            )
        data = handle[variable]
        if data.ndim == 3:  # one participant: (T, N, N)
            n_participants, (n_times, n, n2) = 1, data.shape
        elif data.ndim == 4:
            n_participants, n_times, n, n2 = data.shape
        else:
            raise InputError(
                f"{source}:{variable} must read as (P, T, N, N) or (T, N, N), got {data.shape}."
            )
        if n != n2:
            raise InputError(f"{source}:{variable} holds non-square RDMs: {data.shape}.")
        ids = _concept_ids(concept_ids, n, source, data_dir)
        times = resolve_times(times_ms, n_times, default=THINGS_MEG_TIMES_MS)
        participants = _participant_ids(participant_ids, n_participants)
        kind = str(sidecar.get("kind") or "decoding_accuracy")
        attrs = {"kind": kind, "source": f"things-mat:{source.name}"}
        bins = time_bins(times, bin_ms)
        where = _rdm_name(source, participants, times)

        def row(p: int, t: int) -> np.ndarray:
            return _condense(data[p, t] if data.ndim == 4 else data[t], where(p, t), asymmetry)

        writer = StoreWriter(
            out, ids, participants, bin_means(times, bins), dtype, attrs, inf_as_nan, data_dir
        )
        _write_rows(writer, _binned(row, bins), verbose)
    return Path(out)


def import_npy(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    concept_ids: Sequence[str] | str | os.PathLike | None = None,
    participant_ids: Sequence[str] | None = None,
    times_ms: Any = None,
    asymmetry: Asymmetry = "raise",
    inf_as_nan: bool = False,
    dtype: str = "float32",
    data_dir: str | os.PathLike | None = None,
    bin_ms: float | None = None,
    verbose: bool = True,
) -> Path:
    """Import a ``.npy`` array of RDMs into a store, through a memory map.

    The array has shape (P, T, N, N) or (T, N, N) (square RDMs), or (P, T, n_pairs) or
    (T, n_pairs) (condensed upper triangles); one square RDM needs a time axis, (1, N, N).
    Concept ids, times and participant ids come from the arguments or from a sidecar JSON
    beside the file (``X.json`` for ``X.npy``) with keys ``concept_ids``, ``times_ms`` and
    ``participant_ids``; arguments win. With ``bin_ms`` consecutive timepoints are averaged
    into bins (`time_bins`). ``asymmetry`` and ``inf_as_nan``: see `import_things_mat`;
    ``data_dir``: the THINGS concepts the ids are checked against (`warn_unknown_concepts`).
    """
    source = Path(source)
    data = _load_npy(source)
    sidecar = _read_sidecar(source.with_suffix(".json"))
    concept_ids = concept_ids if concept_ids is not None else sidecar.get("concept_ids")
    participant_ids = participant_ids or sidecar.get("participant_ids")
    times_ms = times_ms if times_ms is not None else sidecar.get("times_ms")
    shape = data.shape
    square = data.ndim in (3, 4) and shape[-1] == shape[-2]  # (T, N, N) wins over (P, T, pairs)
    one = ""
    if data.ndim == 2 and shape[0] == shape[1]:
        one = " One square RDM needs a time axis: save it as (1, N, N)."
    if not _npy_layout_ok(shape, square):
        raise InputError(f"{source} has shape {shape}; accepted are {NPY_SHAPES}.{one}")
    if data.ndim == 2 or (data.ndim == 3 and square):
        data = data[None]
    n_participants, n_times = data.shape[:2]
    n = data.shape[-1] if square else n_conditions(data.shape[-1])
    if concept_ids is None:
        raise InputError(
            f"No concept ids for {source}: give --concept-ids or a sidecar "
            f"{source.with_suffix('.json').name} with 'concept_ids'."
        )
    ids = _concept_ids(
        concept_ids, n, source, hint=one and f" (read as (T, n_pairs) = {shape}).{one}"
    )
    times = resolve_times(times_ms, n_times, default=None, source=source)
    participants = _participant_ids(participant_ids, n_participants)
    attrs = {"kind": str(sidecar.get("kind") or "rdm"), "source": f"npy:{source.name}"}
    where = _rdm_name(source, participants, times)

    def row(p: int, t: int) -> np.ndarray:
        values = np.asarray(data[p, t], dtype=np.float64)
        return _condense(values, where(p, t), asymmetry) if square else values

    bins = time_bins(times, bin_ms)
    writer = StoreWriter(
        out, ids, participants, bin_means(times, bins), dtype, attrs, inf_as_nan, data_dir
    )
    _write_rows(writer, _binned(row, bins), verbose)
    return Path(out)


def _check_source(source: Path) -> None:
    if not source.exists():
        raise InputError(f"No such file: {source}.")
    if source.is_dir():
        raise InputError(f"{source} is a directory, not a file (a BIDS root: --format bids).")


def _load_npy(source: Path) -> np.ndarray:
    """A memory map of a ``.npy`` file of real numbers, or one clear error why not."""
    _check_source(source)
    try:
        data = load_npy(source, mmap_mode="r")
    except OSError as err:
        raise InputError(f"Cannot read {source}: {err.strerror or err}.") from None
    if data.dtype.kind not in "fiu":
        raise InputError(f"{source} holds {data.dtype} values; RDMs must be real numbers.")
    return data


def _npy_layout_ok(shape: tuple[int, ...], square: bool) -> bool:
    if len(shape) == 4 or square:
        return square
    if len(shape) not in (2, 3):
        return False
    try:
        n_conditions(shape[-1])
    except InputError:
        return False
    return True


def _rdm_name(
    source: Path, participants: Sequence[str], times: np.ndarray
) -> Callable[[int, int], str]:
    """The name of one RDM of ``source`` in error messages."""
    return lambda p, t: f"The RDM of participant {participants[p]!r} at {times[t]:g} ms in {source}"


def _binned(
    row: Callable[[int, int], np.ndarray], bins: list[np.ndarray]
) -> Callable[[int, int], np.ndarray]:
    """``row`` over bins: the NaN-aware mean of the RDMs of each bin's timepoints."""

    def mean_row(p: int, b: int) -> np.ndarray:
        rows = bins[b]
        if len(rows) == 1:
            return row(p, int(rows[0]))
        stacked = np.stack([row(p, int(t)) for t in rows])
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a pair NaN at every time
            return np.nanmean(stacked, axis=0)

    return mean_row


def _write_rows(writer: StoreWriter, row: Callable[[int, int], np.ndarray], verbose: bool) -> None:
    """Fill and commit a store with ``row(participant, time)``, one RDM at a time."""
    n_participants, n_times = len(writer.participant_ids), len(writer.times_ms)
    bar = tqdm(total=n_participants * n_times, desc="Importing", unit="RDM", disable=not verbose)
    with writer, bar:
        for p in range(n_participants):
            for t in range(n_times):
                writer.write(p, t, row(p, t))
                bar.update()


def _condense(square: np.ndarray, name: str, asymmetry: Asymmetry) -> np.ndarray:
    """A square RDM of a release or array file, condensed (pairs from either triangle).

    Decoding RDMs may hold anything on the diagonal, so it is not checked.
    """
    return to_condensed(square, name, asymmetry, check_diagonal=False)


def resolve_times(
    times_ms: Any, n_times: int, default: np.ndarray | None, source: Path | None = None
) -> np.ndarray:
    """A time axis in ms of length ``n_times``.

    ``times_ms`` is a sequence of times, a dict ``{"start": ..., "step": ...}``, a string
    ``"start:step"`` (e.g. ``"-100:5"``), or None for ``default``.
    """
    if times_ms is None:
        if default is None:
            where = f" for {source}" if source else ""
            raise InputError(
                f"No time axis{where}: give --times START:STEP (ms) or 'times_ms' in the sidecar."
            )
        times = np.asarray(default, dtype=np.float64)
    elif isinstance(times_ms, str):
        try:
            start, step = (float(v) for v in times_ms.split(":"))
        except ValueError:
            raise InputError(
                f"Invalid time axis {times_ms!r}: expected START:STEP in ms, e.g. -100:5."
            ) from None
        times = start + step * np.arange(n_times)
    elif isinstance(times_ms, dict):
        times = float(times_ms["start"]) + float(times_ms["step"]) * np.arange(n_times)
    else:
        times = np.asarray(times_ms, dtype=np.float64)
    if times.shape != (n_times,):
        raise InputError(f"The time axis has {times.size} timepoints but the data have {n_times}.")
    return times


def _concept_ids(
    concept_ids: Sequence[str] | str | os.PathLike | None,
    n: int,
    source: Path,
    data_dir: str | os.PathLike | None = None,
    hint: str = "",
) -> tuple[str, ...]:
    if concept_ids is None:
        official = load_concepts(data_dir).ids
        if n != len(official):
            raise InputError(
                f"{source} holds {n} concepts, not the {len(official)} THINGS concepts: give "
                "their ids (--concept-ids FILE, one per line in row order)."
            )
        return official
    ids = read_ids(concept_ids) if isinstance(concept_ids, str | os.PathLike) else concept_ids
    ids = tuple(str(c) for c in ids)
    if len(ids) != n:
        raise InputError(
            f"{source} holds {n} concepts but {len(ids)} concept ids were given{hint or '.'}"
        )
    return ids


def _participant_ids(participant_ids: Sequence[str] | None, n: int) -> tuple[str, ...]:
    if participant_ids is None:
        return tuple(f"P{k + 1}" for k in range(n))
    ids = tuple(str(p) for p in participant_ids)
    if len(ids) != n:
        raise InputError(f"The data hold {n} participant(s) but {len(ids)} ids were given.")
    return ids


def _read_sidecar(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"Cannot read the sidecar {path}: {err}") from None
    if not isinstance(sidecar, dict):
        raise InputError(f"The sidecar {path} must hold a JSON object.")
    return sidecar
