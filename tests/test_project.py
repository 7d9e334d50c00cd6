"""Project wiring: the README's commands, CI and the package's bundled files."""

import re
from pathlib import Path

import clip_hba
from clip_hba.data import bundled_data_dir

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_quick_start_has_two_commands_and_ci_runs_the_test_one():
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert commands[0].endswith("clip-hba demo")
    assert commands[1].endswith("pytest")
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci_lines[-1] == commands[1]


def test_bundled_data_travel_with_their_notice():
    data = bundled_data_dir()
    for name in (
        "NOTICE.md",
        "LICENSE_THINGS-data_CC0.txt",
        "unique_id.csv",
        "test_triplets.csv",
        "spose_embedding_66d_sorted.txt",
        "RDM48_triplet.mat",
    ):
        assert (data / name).is_file(), name
    assert "Hebart" in (data / "NOTICE.md").read_text(encoding="utf-8")


def test_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+", clip_hba.__version__)


def test_the_bundled_files_are_packaged():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    folder = bundled_data_dir().relative_to(ROOT / "src" / "clip_hba").as_posix()
    assert f"{folder}/*" in project["tool"]["setuptools"]["package-data"]["clip_hba"]
    for path in project["project"]["license-files"]:
        assert (ROOT / path).is_file(), path
