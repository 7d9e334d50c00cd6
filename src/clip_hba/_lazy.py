"""Public names of a subpackage that load on first use.

Most of clip-hba imports torch, transformers and peft, which takes seconds. A subpackage whose
settings the command line reads (its ``config.py``, light) lists every public name in
``__all__`` but imports the heavy modules only when one of their names is first used, so
``clip-hba --help`` stays fast (scikit-learn loads its submodules the same way).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``names`` (name -> module) lazily."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{names[name]}"), name)

    return __getattr__
