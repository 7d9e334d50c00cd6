"""numpy's sorts on AMD Zen 4: steer them to AVX2 before numpy is imported.

numpy sorts with x86-simd-sort, and on CPUs with AVX-512 it takes that library's AVX-512
path. On AMD Zen 4 (family 25 with AVX-512) that path is several times slower than plain
AVX2: its partition step stores with ``vpcompress`` to memory, which Zen 4 runs in microcode
(numpy/x86-simd-sort#6). Ranking 1.72 M values measured 90 ms there against 12.5 ms with
AVX2 (float32; 132 ms against 28 ms for the packed uint64 keys of `rank_rows`), and `meg rsa`
of one model at THINGS-MEG size 320 s against 206 s. numpy chooses its kernels once, when it
is imported, from the environment variable ``NPY_DISABLE_CPU_FEATURES``; `use_avx2_sorts`
sets it (the command line does so first thing). Zen 4 runs 512-bit instructions as two
256-bit halves, so numpy's other kernels lose little with AVX2.

This module imports neither numpy nor anything of clip_hba, so that it can run first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import MutableMapping
from pathlib import Path

__all__ = ["is_zen4", "use_avx2_sorts"]

ENV = "NPY_DISABLE_CPU_FEATURES"

# in a fresh interpreter: numpy's dispatched AVX-512 targets that are not its baseline (a
# baseline feature cannot be disabled: numpy would refuse to import), named as that numpy
# version names them (X86_V4 from numpy 2.4, AVX512_SKX etc. before)
_PROBE = """
import numpy
try:
    from numpy._core import _multiarray_umath as m
except ImportError:
    from numpy.core import _multiarray_umath as m
print(" ".join(f for f in m.__cpu_dispatch__
               if (f == "X86_V4" or f.startswith("AVX512")) and f not in m.__cpu_baseline__))
"""


def is_zen4(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """Whether the first CPU in ``cpuinfo`` (Linux's format) is an AMD Zen 4 with AVX-512.

    Zen 3 and Zen 4 are both family 25; only Zen 4 has AVX-512. Zen 5 (family 26) stores
    compressed vectors fast and is left alone. False where the file cannot be read.
    """
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
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

    Does nothing where numpy is already imported (its kernels are chosen), where the variable
    is already set (even to ""; the user's choice, and the way to opt out), or on other CPUs.
    The features to disable are asked of numpy in a short-lived interpreter (about 0.2 s, on
    Zen 4 only), so that none of numpy's baseline is named.

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
    if "numpy" in sys.modules or ENV in environ or not is_zen4(cpuinfo):
        return None
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    features = probe.stdout.strip()
    if not features:
        return None
    environ[ENV] = features
    return features
