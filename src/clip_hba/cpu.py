"""numpy's sorts on AMD Zen 4: steer them to AVX2 before numpy is imported.

numpy sorts with x86-simd-sort, and on CPUs with AVX-512 it takes that library's AVX-512
path. On AMD Zen 4 (family 25 with AVX-512) that path is several times slower than plain
AVX2: its partition step stores with ``vpcompress`` to memory, which Zen 4 runs in microcode
(numpy/x86-simd-sort#6). Sorting 1.72 M float32 values measured 90 ms there against 12.5 ms
with AVX2 (132 ms against 28 ms for the packed uint64 keys of `clip_hba.rsa.rank_rows`), and
`meg rsa` of one model at THINGS-MEG size 320 s against 206 s. numpy chooses its kernels
once, when it is imported, from the environment variable ``NPY_DISABLE_CPU_FEATURES``;
`use_avx2_sorts` sets it (the command line does so first thing). That turns off every
AVX-512 kernel of numpy, not only its sorts: some transcendental functions (``exp``, ``log``,
``log1p``, ``expm1``, ``**``) then round differently in the last bit for a few values in a
hundred, so on Zen 4 a seeded ``clip-hba simulate meg`` can differ in the last bit from the
same call of the Python API without the setting. Sorting is unaffected (our keys carry their
positions: no ties to break differently).

This module imports neither numpy nor anything of clip_hba, so that it can run first. It
reads Linux's ``/proc/cpuinfo``; elsewhere it does nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import MutableMapping

__all__ = ["is_zen4", "use_avx2_sorts"]

_DISABLE = "NPY_DISABLE_CPU_FEATURES"
_ENABLE = "NPY_ENABLE_CPU_FEATURES"  # numpy refuses to import with both set

# in a fresh interpreter: numpy's dispatched targets that are not its baseline (a baseline
# feature cannot be disabled: numpy would refuse to import), named as that numpy version
# names them; nothing before numpy 2.0, which has no AVX2 sorts to fall back on
_PROBE = """
import numpy
try:
    from numpy._core import _multiarray_umath as m
except ImportError:
    from numpy.core import _multiarray_umath as m
if int(numpy.__version__.split(".")[0]) >= 2:
    print(" ".join(f for f in m.__cpu_dispatch__ if f not in m.__cpu_baseline__))
"""


def _is_avx512_target(feature: str) -> bool:
    return feature == "X86_V4" or feature.startswith("AVX512")


def is_zen4(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """Whether the first CPU described in ``cpuinfo`` is an AMD Zen 4 with AVX-512.

    Zen 3 and Zen 4 are both family 25; only Zen 4 has AVX-512. Zen 5 (family 26) stores
    compressed vectors fast and is left alone.

    Parameters
    ----------
    cpuinfo : path
        A file in the format of Linux's ``/proc/cpuinfo``.

    Returns
    -------
    bool
        False also where the file cannot be read (macOS, Windows).
    """
    if not isinstance(cpuinfo, str | os.PathLike):  # (an int would be read as a descriptor)
        raise TypeError(f"cpuinfo must be a path, but got {type(cpuinfo).__name__} {cpuinfo!r}")
    fields = {}
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as lines:
            for line in lines:  # the first processor's block, up to its blank line
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return False
    return (
        fields.get("vendor_id") == "AuthenticAMD"
        and fields.get("cpu family") == "25"
        and "avx512f" in fields.get("flags", "").split()
    )


def use_avx2_sorts(
    environ: MutableMapping[str, str] | None = None,
    cpuinfo: str | os.PathLike = "/proc/cpuinfo",
) -> str | None:
    """On AMD Zen 4, set ``NPY_DISABLE_CPU_FEATURES`` so that numpy sorts with AVX2.

    Does nothing where numpy is already imported (its kernels are chosen; ``import torch``
    imports it too), where ``NPY_DISABLE_CPU_FEATURES`` or ``NPY_ENABLE_CPU_FEATURES`` is
    already set (even to ""; the user's choice, and the way to opt out), on other CPUs, with
    numpy before 2.0, and where numpy cannot be asked. The features to disable are asked of
    numpy in a short-lived interpreter (about 0.15 s, on Zen 4 only), so that none of
    numpy's baseline is named; it cannot be asked from a frozen app or one that embeds
    Python (``sys.executable`` is not an interpreter), nor when that interpreter fails or
    takes over 10 s.

    Parameters
    ----------
    environ : mutable mapping, optional
        The environment to set (default ``os.environ``: this process and its children).
    cpuinfo : path
        Where the CPU is described (Linux's ``/proc/cpuinfo``).

    Returns
    -------
    str or None
        The value set, or None where nothing was set.
    """
    environ = os.environ if environ is None else environ
    if "numpy" in sys.modules or _DISABLE in environ or _ENABLE in environ:
        return None
    if not _is_interpreter(sys.executable) or not is_zen4(cpuinfo):
        return None
    # numpy as this process would import it: from its sys.path, not the current directory
    env = {**os.environ, _DISABLE: "", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        probe = subprocess.run(
            [sys.executable, "-P", "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            env=env,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    last = probe.stdout.strip().splitlines()[-1:]  # (a site hook may print before)
    features = " ".join(f for f in (last[0].split() if last else []) if _is_avx512_target(f))
    if not features:
        return None
    environ[_DISABLE] = features
    return features


def _is_interpreter(executable: str | None) -> bool:
    """Whether ``executable`` runs ``-c`` code (not a frozen or a Python-embedding app)."""
    if not executable or getattr(sys, "frozen", False):
        return False
    return os.path.basename(executable).lower().startswith(("python", "pypy"))
