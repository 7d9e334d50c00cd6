"""Input checks used at the public boundary (MNE-style wording).

A wrong type raises `TypeError`; a wrong value raises `InputError` (a `ValueError`). Every
message names the bad value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


class InputError(ValueError):
    """Bad user input: the message names the bad value and, where possible, the fix.

    The command-line interface turns this into one line on stderr and a non-zero exit.
    """


def check_type(name: str, value: Any, types: type | tuple[type, ...], what: str) -> Any:
    """Return ``value`` if it is an instance of ``types``, else raise `TypeError`.

    ``what`` names the allowed types in the message (e.g. ``"an int"``).
    """
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise TypeError(f"{name} must be {what}, but got {type(value).__name__} {value!r}.")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


EXEMPLAR_SETS = ("first", "all")  # image sets of a concept, besides a file-name suffix


def check_exemplar(value: Any) -> str:
    """Return ``value`` if it names a concept's images: ``"first"``, ``"all"`` or a suffix."""
    if not isinstance(value, str):
        raise TypeError(f"exemplar must be a string, but got {type(value).__name__} {value!r}.")
    near_set = value.strip().lower() in EXEMPLAR_SETS and value not in EXEMPLAR_SETS
    if near_set or (value not in EXEMPLAR_SETS and (not value or "/" in value or "\\" in value)):
        raise InputError(
            f"Invalid value for 'exemplar': expected 'first', 'all' or a file-name suffix such "
            f"as '_01b', got {value!r}."
        )
    return value


def check_option(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise `InputError`."""
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise InputError(
            f"Invalid value for {name!r}. Allowed values are {options}, but got {value!r} instead."
        )
    return value


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """Return ``value`` if it lies in the given interval, else raise `InputError`.

    ``low``/``high`` of None leave that side unbounded; ``*_open`` excludes the bound.
    """
    check_type(name, value, (int, float, np.integer, np.floating), "a number")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above or value != value:  # value != value: NaN
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        interval = (
            f"{left}{'-inf' if low is None else f'{low:g}'}, "
            f"{'inf' if high is None else f'{high:g}'}{right}"
        )
        raise InputError(
            f"Invalid value for {name!r}: expected a number in {interval}, but got {value!r}."
        )
    return value


def check_finite(name: str, values: np.ndarray) -> None:
    """Raise `InputError` if ``values`` holds NaN or infinite entries."""
    bad = ~np.isfinite(values)
    if bad.any():
        where = np.argwhere(bad)[0]
        raise InputError(
            f"{name} holds {int(bad.sum())} NaN or infinite value(s); the first is at "
            f"index {tuple(int(i) for i in where)}."
        )


def check_unique_ids(name: str, ids: Sequence[str]) -> None:
    """Raise `InputError` if ``ids`` repeats an id."""
    seen: set[str] = set()
    duplicates = [i for i in ids if i in seen or seen.add(i)]
    if duplicates:
        raise InputError(
            f"{name} repeats {len(duplicates)} concept id(s): {preview(sorted(set(duplicates)))}."
        )


def check_known_ids(name: str, ids: Iterable[str], known: set[str] | dict[str, int]) -> None:
    """Raise `InputError` naming the ids of ``ids`` that are not in ``known``."""
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise InputError(f"{name} holds {len(unknown)} unknown concept id(s): {preview(unknown)}.")


def preview(items: Sequence[Any], n: int = 5) -> str:
    """The first ``n`` items, quoted, and how many more there are."""
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def check_count(name: str, value: int) -> None:
    """Raise unless ``value`` is a positive integer (resamples, permutations)."""
    check_type(name, value, (int, np.integer), "an integer")
    if value < 1:
        raise InputError(f"Invalid value for {name!r}: expected a positive integer, got {value!r}.")


def check_seed(seed: int | None) -> None:
    """Raise unless ``seed`` is None or an integer >= 0."""
    if seed is None:
        return
    check_type("seed", seed, (int, np.integer), "None or an integer")
    if seed < 0:
        raise InputError(
            f"Invalid value for 'seed': expected None or an integer >= 0, got {seed!r}."
        )


def check_level(ci_level: float) -> None:
    """Raise unless ``ci_level`` lies in (0, 1)."""
    if not 0 < ci_level < 1:
        raise InputError(
            f"Invalid value for 'ci_level': expected a number in (0, 1), got {ci_level!r}."
        )
