"""`meg import|info|export` and `rsa compare` on the inputs a new user tries: bad .npy files,
directories as --out, infinite values, asymmetric squares, mixed ids, export round trips."""

import json

import numpy as np
import pytest

from clip_hba.meg import RDMStore
from clip_hba.rsa import to_square
from test_cli import assert_one_line_error, run

IDS = ["aardvark", "abacus", "accordion", "acorn"]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from clip_hba.meg import SimulationConfig, simulate_meg

    root = tmp_path_factory.mktemp("climeginputs")
    config = SimulationConfig(n_concepts=12, n_participants=2, tmin_ms=-20, tmax_ms=40)
    return simulate_meg(root / "sim.h5", config, verbose=False)


@pytest.fixture
def ids_file(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(IDS) + "\n")
    return path


def squares(rng, n_times=2):
    """(T, 4, 4) symmetric RDMs over the four ``IDS``."""
    return np.stack([to_square(rng.uniform(40, 90, 6)) for _ in range(n_times)])


def import_args(source, out, ids_file, *extra):
    return ["meg", "import", str(source), "--out", str(out), "--concept-ids", str(ids_file),
            "--times=0:5", "--quiet", *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "is empty or truncated"),
        (bytes(range(256)), "is not a valid .npy file"),
    ],
    ids=["empty", "random-bytes"],
)
def test_unreadable_npy_is_one_line_error(capsys, tmp_path, ids_file, content, fragment):
    (tmp_path / "bad.npy").write_bytes(content)
    code, out, err = run(capsys, *import_args(tmp_path / "bad.npy", tmp_path / "s.h5", ids_file))
    assert_one_line_error(code, out, err, "bad.npy", fragment)
    assert "aborted" not in err and "allow_pickle" not in err


def test_one_square_rdm_is_told_the_accepted_shapes(capsys, tmp_path, ids_file, rng):
    np.save(tmp_path / "one.npy", to_square(rng.random(40 * 39 // 2)))  # (40, 40)
    result = run(capsys, *import_args(tmp_path / "one.npy", tmp_path / "s.h5", ids_file))
    assert_one_line_error(*result, "shape (40, 40)", "accepted are (P, T, N, N)", "(1, N, N)")


@pytest.mark.parametrize("force", [False, True])
def test_directory_out_is_refused_up_front(capsys, tmp_path, ids_file, rng, force):
    np.save(tmp_path / "rdms.npy", squares(rng))
    (tmp_path / "dir").mkdir()
    extra = ["--force"] if force else []
    result = run(capsys, *import_args(tmp_path / "rdms.npy", tmp_path / "dir", ids_file, *extra))
    assert_one_line_error(*result, "is a directory", "--out must be the path of the file")
    assert "--force" not in result[2]


def test_infinite_values_are_refused_unless_asked(capsys, tmp_path, ids_file, rng):
    data = squares(rng, 3)
    data[2, 0, 1] = data[2, 1, 0] = np.inf
    np.save(tmp_path / "inf.npy", data)
    out = tmp_path / "s.h5"
    result = run(capsys, *import_args(tmp_path / "inf.npy", out, ids_file))
    assert_one_line_error(
        *result,
        "1 pair(s) with an infinite dissimilarity in 1 RDM(s)",
        "participant 'P1' at 10 ms",
        "--inf-as-nan",
    )
    code, stdout, _ = run(capsys, *import_args(tmp_path / "inf.npy", out, ids_file, "--inf-as-nan"))
    assert code == 0 and json.loads(stdout)["n_inf_as_nan"] == 1
    code, stdout, err = run(capsys, "meg", "info", str(out), "--no-quality")
    info = json.loads(stdout)
    assert code == 0 and "RuntimeWarning" not in err
    assert info["n_inf_as_nan"] == 1 and info["n_inf"] == 0
    assert info["nan_share"] == pytest.approx(1 / 18)  # one pair of 6 x 3 RDMs


def test_asymmetric_squares_need_the_asymmetric_option(capsys, tmp_path, ids_file, rng):
    data = squares(rng)
    data[1, 3, 2] += 5.0
    np.save(tmp_path / "asym.npy", data)
    out = tmp_path / "s.h5"
    result = run(capsys, *import_args(tmp_path / "asym.npy", out, ids_file))
    assert_one_line_error(
        *result, "at 5 ms", "not symmetric: [2, 3]", "a difference of 5", "--asymmetric"
    )
    for policy, expected in (("upper", data[1, 2, 3]), ("lower", data[1, 3, 2])):
        code, _, _ = run(
            capsys, *import_args(tmp_path / "asym.npy", out, ids_file, "--asymmetric", policy)
        )
        assert code == 0
        with RDMStore(out) as store:
            assert store.read().values[0, 1, 5] == pytest.approx(expected)
        out.unlink()
    result = run(capsys, *import_args(tmp_path / "asym.npy", out, ids_file, "--asymmetric", "mean"))
    assert result[0] == 2 and "mean" in result[2]


def test_rsa_compare_takes_the_asymmetric_option(capsys, tmp_path, rng):
    square = to_square(rng.random(45))
    asymmetric = square.copy()
    asymmetric[0, 1] += 1
    np.save(tmp_path / "a.npy", asymmetric)
    np.save(tmp_path / "b.npy", square)
    args = ["rsa", "compare", str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]
    assert_one_line_error(*run(capsys, *args), "not symmetric", "--asymmetric")
    stats = ["--n-bootstrap", "0", "--n-permutations", "0"]
    code, out, _ = run(capsys, *args, *stats, "--asymmetric", "lower")
    assert code == 0 and json.loads(out)["value"] == pytest.approx(1.0)
    code, out, _ = run(capsys, *args, *stats, "--asymmetric", "upper")
    assert code == 0 and json.loads(out)["value"] < 1.0


def test_mixed_concept_ids_warn(capsys, caplog, tmp_path, rng):
    np.save(tmp_path / "rdms.npy", squares(rng))
    ids = tmp_path / "mixed.txt"
    ids.write_text("aardvark\nabacus\nmy_thing\nacorn\n")
    out = tmp_path / "s.h5"
    with caplog.at_level("WARNING"):
        code, stdout, _ = run(capsys, *import_args(tmp_path / "rdms.npy", out, ids))
    assert code == 0 and json.loads(stdout)["unknown_concepts"] == {"n": 1, "first": ["my_thing"]}
    assert "1 of its 4 concept ids are not THINGS concepts" in caplog.text
    assert "'my_thing'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        code, _, _ = run(capsys, "meg", "info", str(out), "--no-quality")
    assert code == 0 and "'my_thing'" in caplog.text


def test_export_then_import_round_trips_without_options(capsys, simulated, tmp_path):
    mat = tmp_path / "export.mat"
    code, out, _ = run(capsys, "meg", "export", str(simulated), "--out", str(mat))
    assert code == 0 and json.loads(out)["sidecar"] == str(tmp_path / "export.json")
    back = tmp_path / "back.h5"
    code, _, _ = run(capsys, "meg", "import", str(mat), "--out", str(back), "--quiet")
    assert code == 0
    with RDMStore(simulated) as original, RDMStore(back) as imported:
        assert imported.concept_ids == original.concept_ids
        assert imported.participant_ids == original.participant_ids
        np.testing.assert_array_equal(imported.times_ms, original.times_ms)
        np.testing.assert_array_equal(imported.read().values, original.read().values)
        assert imported.attrs["kind"] == original.attrs["kind"]
    result = run(capsys, "meg", "export", str(simulated), "--out", str(mat))
    assert_one_line_error(*result, "export.mat exists", "--force")
    code, _, _ = run(capsys, "meg", "export", str(simulated), "--out", str(mat), "--force")
    assert code == 0
    (tmp_path / "dir.mat").mkdir()
    result = run(capsys, "meg", "export", str(simulated), "--out", str(tmp_path / "dir.mat"))
    assert_one_line_error(*result, "is a directory", "rdms.mat")


def test_export_force_help_names_the_exported_file(capsys):
    code, out, _ = run(capsys, "meg", "export", "--help")
    assert code == 0
    force = " ".join(out.replace("│", " ").split()).split("--force")[1]
    assert "exported file" in force and "output store" not in force
