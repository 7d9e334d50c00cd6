"""Output files: permissions that follow the umask, and no temporary file left behind."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from clip_hba._io import _HOST, remove_stale_temp_files, write_json_atomic
from clip_hba.meg import RDMStore
from test_cli import run


@pytest.fixture
def umask():
    """Set the process umask for one test, and restore it after."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path):
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert _mode(write_json_atomic(tmp_path / "a.json", {"x": 1})) == expected


def test_store_run_and_plot_files_are_readable_by_the_group(tmp_path, umask, capsys):
    umask(0o022)
    code, _, _ = run(
        capsys,
        *("simulate", "meg", "--out", str(tmp_path / "sim.h5"), "--concepts", "12"),
        *("--participants", "2", "--tmin", "-20", "--tmax", "40"),
    )
    assert code == 0
    assert _mode(tmp_path / "sim.h5") == 0o644
    code, _, _ = run(
        capsys,
        *("meg", "export", str(tmp_path / "sim.h5"), "--out", str(tmp_path / "sim.mat")),
    )
    assert code == 0
    assert {_mode(tmp_path / "sim.mat"), _mode(tmp_path / "sim.json")} == {0o644}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path, caplog):
    target = tmp_path / "s.h5"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".s.h5.{_HOST}-{int(dead.stdout)}.abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    mine = tmp_path / f".s.h5.{_HOST}-{os.getpid()}.def456.tmp"  # a write in flight
    elsewhere = tmp_path / f".s.h5.otherhost-{int(dead.stdout)}.ghi789.tmp"  # another machine
    other = tmp_path / f".s.h5.5.{_HOST}-{int(dead.stdout)}.xyz.tmp"  # of the file s.h5.5
    for keep in (mine, elsewhere, other):
        keep.write_bytes(b"y")
    assert remove_stale_temp_files(target) == [stale]
    assert not stale.exists() and mine.exists() and elsewhere.exists() and other.exists()
    assert "left by an interrupted write" in caplog.text


def test_import_killed_with_sigkill_leaves_no_temp_file_after_the_next_import(
    tmp_path, capsys, caplog
):
    rng = np.random.default_rng(0)
    values = rng.random((2, 3, 6, 6))
    values = values + values.transpose(0, 1, 3, 2)
    values[..., range(6), range(6)] = 0.0
    np.save(tmp_path / "rdms.npy", values)
    ids = ["aardvark", "abacus", "accordion", "acorn", "airplane", "alligator"]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    # a process that is killed (SIGKILL: no clean-up can run) halfway through writing the store
    killed = textwrap.dedent(
        f"""
        import os, signal
        from clip_hba.meg.writer import StoreWriter
        writer = StoreWriter({str(tmp_path / "s.h5")!r}, {ids!r}, ["p1", "p2"], [0.0, 5.0, 10.0])
        writer.write_block(0, 0, [[0.5] * 15] * 3)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", killed], capture_output=True)
    assert done.returncode == -9
    temp = [p for p in tmp_path.iterdir() if p.name.startswith(".s.h5.")]
    assert len(temp) == 1 and not (tmp_path / "s.h5").exists()
    code, out, err = run(
        capsys,
        *("meg", "import", str(tmp_path / "rdms.npy"), "--out", str(tmp_path / "s.h5")),
        *("--concept-ids", str(tmp_path / "ids.txt"), "--times=0:5", "--quiet"),
    )
    assert code == 0, err
    assert json.loads(out)["participants"] and "left by an interrupted write" in caplog.text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with RDMStore(tmp_path / "s.h5") as store:
        assert store.concept_ids == tuple(ids)


def test_a_failed_import_removes_its_temporary_file(tmp_path, capsys):
    values = np.ones((1, 2, 4, 4))
    values[0, 1, 0, 1] = values[0, 1, 1, 0] = np.inf  # refused at commit, after the writing
    values[..., range(4), range(4)] = 0.0
    np.save(tmp_path / "inf.npy", values)
    (tmp_path / "ids.txt").write_text("aardvark\nabacus\naccordion\nacorn\n")
    code, _, err = run(
        capsys,
        *("meg", "import", str(tmp_path / "inf.npy"), "--out", str(tmp_path / "s.h5")),
        *("--concept-ids", str(tmp_path / "ids.txt"), "--times=0:5", "--quiet"),
    )
    assert code == 2 and "infinite" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.txt", "inf.npy"]


@pytest.mark.parametrize(
    "args",
    [
        ["fit", "behavior", "--model", "m", "--out", "{ro}/run"],
        ["fit", "meg", "--store", "s.h5", "--model", "m", "--out", "{ro}/run"],
        ["meg", "import", "x.npy", "--out", "{ro}/s.h5"],
        ["evaluate", "behavior", "--embedding", "spose", "--out", "{ro}/x.json"],
    ],
)
def test_unwritable_output_folder_is_refused_before_work(tmp_path, capsys, monkeypatch, args):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: make the folder refuse files as for a user
        from clip_hba import _io

        refuses = _io._refuses_files
        monkeypatch.setattr(
            _io,
            "_refuses_files",
            lambda folder: "Permission denied" if folder == read_only else refuses(folder),
        )
    try:
        code, _, err = run(capsys, *(a.format(ro=read_only) for a in args))
    finally:
        read_only.chmod(0o755)
    assert code == 2 and "not writable" in err and len(err.strip().splitlines()) == 1, err


def test_a_symbolic_link_is_followed_and_kept(tmp_path):
    target = tmp_path / "results" / "x.json"
    target.parent.mkdir()
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_json_atomic(link, {"x": 2})
    assert link.is_symlink() and json.loads(target.read_text()) == {"x": 2}
