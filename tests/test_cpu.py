"""numpy's sorts steered to AVX2 on AMD Zen 4 (clip_hba.cpu), before numpy is imported."""

import json
import subprocess
import sys

import pytest

from clip_hba.cpu import is_zen4, use_avx2_sorts

FLAGS = "fpu sse sse2 avx avx2 fma"
ZEN4 = f"vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nflags\t\t: {FLAGS} avx512f\n"


def _cpuinfo(tmp_path, first: str, name: str = "cpuinfo") -> str:
    path = tmp_path / name
    # a second processor that would say otherwise: only the first is read
    path.write_text(first + "\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("vendor", "family", "extra", "expected"),
    [
        ("AuthenticAMD", "25", " avx512f", True),  # Zen 4
        ("AuthenticAMD", "25", "", False),  # Zen 3: family 25 without AVX-512
        ("AuthenticAMD", "26", " avx512f", False),  # Zen 5 compresses to memory fast
        ("GenuineIntel", "6", " avx512f", False),
    ],
)
def test_zen4_is_told_from_its_neighbours(tmp_path, vendor, family, extra, expected):
    text = f"vendor_id\t: {vendor}\ncpu family\t: {family}\nflags\t\t: {FLAGS}{extra}\n"
    assert is_zen4(_cpuinfo(tmp_path, text)) is expected


def test_an_unreadable_cpuinfo_is_not_zen4(tmp_path):
    assert is_zen4(tmp_path / "missing") is False


def test_nothing_is_changed_once_numpy_is_imported(tmp_path):
    import numpy  # noqa: F401  (the kernels are chosen)

    environ: dict[str, str] = {}
    assert use_avx2_sorts(environ, cpuinfo=_cpuinfo(tmp_path, ZEN4)) is None
    assert environ == {}


def _fresh(code: str) -> dict:
    """Run ``code`` in an interpreter where numpy is not yet imported; its last JSON line."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_on_zen4_numpy_imports_with_its_avx512_dispatch_disabled(tmp_path):
    zen4, intel = _cpuinfo(tmp_path, ZEN4), _cpuinfo(tmp_path, "vendor_id\t: GenuineIntel", "i")
    code = f"""
import json, os, sys
from clip_hba.cpu import use_avx2_sorts
chosen = {{}}
other = use_avx2_sorts(chosen, cpuinfo={intel!r})
kept = {{"NPY_DISABLE_CPU_FEATURES": ""}}
opted_out = use_avx2_sorts(kept, cpuinfo={zen4!r})
enabled = {{"NPY_ENABLE_CPU_FEATURES": "X86_V3"}}  # numpy refuses both variables at once
with_enable = use_avx2_sorts(enabled, cpuinfo={zen4!r})
executable, sys.executable = sys.executable, ""  # an embedded Python: no interpreter to ask
no_interpreter = use_avx2_sorts({{}}, cpuinfo={zen4!r})
sys.executable = executable
set_to = use_avx2_sorts(chosen, cpuinfo={zen4!r})
numpy_before = "numpy" in sys.modules
print(json.dumps(dict(other=other, opted_out=opted_out, kept=kept, set_to=set_to,
                      chosen=chosen, numpy_before=numpy_before, with_enable=with_enable,
                      enabled=enabled, no_interpreter=no_interpreter)))
"""
    found = _fresh(code)
    assert found["other"] is None and found["opted_out"] is None
    assert found["with_enable"] is None and found["no_interpreter"] is None
    assert found["kept"] == {"NPY_DISABLE_CPU_FEATURES": ""}  # the user's choice stands
    assert found["enabled"] == {"NPY_ENABLE_CPU_FEATURES": "X86_V3"}
    assert not found["numpy_before"]  # the probe ran numpy elsewhere
    features = found["set_to"]
    if features is None:  # a numpy without AVX-512 kernels (another architecture, a baseline)
        assert found["chosen"] == {}
        return
    names = features.split()
    assert names and all(n == "X86_V4" or n.startswith("AVX512") for n in names)
    assert found["chosen"] == {"NPY_DISABLE_CPU_FEATURES": features}
    check = f"""
import json, os
os.environ["NPY_DISABLE_CPU_FEATURES"] = {features!r}
import numpy as np
try:
    from numpy._core import _multiarray_umath as m
except ImportError:
    from numpy.core import _multiarray_umath as m
ranks = np.argsort(np.array([3.0, 1.0, 2.0], dtype=np.float32)).tolist()
print(json.dumps(dict(avx512=[f for f in {names!r} if m.__cpu_features__.get(f)], ranks=ranks)))
"""
    found = _fresh(check)
    assert found == {"avx512": [], "ranks": [1, 2, 0]}  # imports, AVX-512 off, sorts right


class _Probe:
    """Stands for ``subprocess.run``: records the calls, answers with ``stdout`` or raises."""

    def __init__(self, stdout: str = "", error: Exception | None = None) -> None:
        self.stdout, self.error, self.calls = stdout, error, 0

    def __call__(self, command, **kwargs):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return subprocess.CompletedProcess(command, 0, stdout=self.stdout, stderr="")


@pytest.fixture
def before_numpy(monkeypatch):
    """As if numpy were not imported yet (restored afterwards)."""
    monkeypatch.delitem(sys.modules, "numpy")
    return monkeypatch


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ("X86_V3 X86_V4 AVX512_ICL AVX512_SPR\n", "X86_V4 AVX512_ICL AVX512_SPR"),
        ("a site hook's line\nAVX512_SKX AVX512_ICL\n", "AVX512_SKX AVX512_ICL"),  # last line
        ("", None),  # numpy before 2.0 prints nothing
        ("X86_V3\n", None),  # no AVX-512 target
    ],
)
def test_the_probe_answer_is_filtered_to_avx512_targets(tmp_path, before_numpy, stdout, expected):
    probe = _Probe(stdout)
    before_numpy.setattr("clip_hba.cpu.subprocess.run", probe)
    environ: dict[str, str] = {}
    assert use_avx2_sorts(environ, cpuinfo=_cpuinfo(tmp_path, ZEN4)) == expected
    assert environ == ({} if expected is None else {"NPY_DISABLE_CPU_FEATURES": expected})
    assert probe.calls == 1


@pytest.mark.parametrize(
    "error",
    [
        subprocess.CalledProcessError(1, "python"),
        subprocess.TimeoutExpired("python", 10),
        OSError("no such file"),
    ],
)
def test_a_probe_that_fails_changes_nothing(tmp_path, before_numpy, error):
    before_numpy.setattr("clip_hba.cpu.subprocess.run", _Probe(error=error))
    environ: dict[str, str] = {}
    assert use_avx2_sorts(environ, cpuinfo=_cpuinfo(tmp_path, ZEN4)) is None
    assert environ == {}


@pytest.mark.parametrize(
    ("executable", "frozen"), [("/opt/blender/blender", False), (sys.executable, True), ("", False)]
)
def test_no_probe_from_an_app_that_embeds_python(tmp_path, before_numpy, executable, frozen):
    probe = _Probe("AVX512_ICL")
    before_numpy.setattr("clip_hba.cpu.subprocess.run", probe)
    before_numpy.setattr(sys, "executable", executable)
    if frozen:
        before_numpy.setattr(sys, "frozen", True, raising=False)
    assert use_avx2_sorts({}, cpuinfo=_cpuinfo(tmp_path, ZEN4)) is None
    assert probe.calls == 0  # (a frozen app's executable would start the app again)


def test_a_cpuinfo_that_is_not_a_path_is_a_type_error():
    with pytest.raises(TypeError, match="cpuinfo must be a path, but got int 0"):
        is_zen4(0)


def test_the_command_line_sets_it_before_numpy_is_imported():
    code = """
import json, sys
import clip_hba.cpu
seen = []
clip_hba.cpu.use_avx2_sorts = lambda: seen.append("numpy" in sys.modules)
import clip_hba.cli
print(json.dumps(dict(seen=seen, numpy_after="numpy" in sys.modules)))
"""
    assert _fresh(code) == {"seen": [False], "numpy_after": True}
