"""The clip-hba command line: outputs, files, and one-line errors on bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from clip_hba.cli import main


def run(capsys, *args):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def assert_one_line_error(code, out, err, *fragments):
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("clip-hba: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def spose_txt(tmp_path_factory, spose):
    path = tmp_path_factory.mktemp("emb") / "spose.txt"
    np.savetxt(path, spose.values)
    return path


def test_evaluate_behavior_prints_required_keys(capsys, spose_txt, tmp_path):
    out_file = tmp_path / "scores.json"
    code, out, _ = run(
        capsys,
        "evaluate",
        "behavior",
        "--embedding",
        str(spose_txt),
        "--out",
        str(out_file),
        "--plot",
        str(tmp_path / "rdm48.pdf"),
        "--n-bootstrap",
        "200",
    )
    assert code == 0
    result = json.loads(out)
    for key in (
        "rdm48_spearman",
        "rdm48_spearman_ci",
        "odd_one_out_accuracy",
        "odd_one_out_ci",
        "n_triplets",
        "n_concepts",
    ):
        assert key in result
    assert result["odd_one_out_accuracy"] == pytest.approx(0.64255)
    assert result["n_triplets"] == 20000 and result["n_concepts"] == 1854
    assert json.loads(out_file.read_text()) == result
    assert (tmp_path / "rdm48.pdf").read_bytes()[:4] == b"%PDF"


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".tsv"])
def test_subset_with_ids_file_in_any_format(capsys, spose, tmp_path, suffix):
    from clip_hba.evaluation import evaluate_behavior

    rows = np.arange(0, 1854, 3)[::-1]  # a subset, in reverse order
    path = tmp_path / f"sub{suffix}"
    if suffix == ".npy":
        np.save(path, spose.values[rows])
    else:
        delimiter = "," if suffix == ".csv" else "\t"
        header = delimiter.join(f"dim{k}" for k in range(66))
        np.savetxt(path, spose.values[rows], delimiter=delimiter, header=header, comments="")
    ids = tmp_path / "ids.txt"
    ids.write_text("id\n" + "\n".join(spose.concept_ids[k] for k in rows) + "\n")
    code, out, _ = run(
        capsys,
        "evaluate",
        "behavior",
        "--embedding",
        str(path),
        "--ids",
        str(ids),
        "--n-bootstrap",
        "20",
    )
    assert code == 0
    result = json.loads(out)
    expected = evaluate_behavior(
        spose.select([spose.concept_ids[k] for k in rows]), n_bootstrap=20
    ).to_dict()
    assert result == json.loads(json.dumps(expected))
    assert result["n_concepts"] == len(rows)
    assert 0 < result["n_triplets"] < 20000


def test_triplet_order_option(capsys, spose_txt):
    code, out, _ = run(
        capsys,
        "evaluate",
        "behavior",
        "--embedding",
        str(spose_txt),
        "--triplet-order",
        "unique_id",
        "--n-bootstrap",
        "10",
    )
    assert code == 0
    assert json.loads(out)["odd_one_out_accuracy"] == pytest.approx(0.636, abs=0.001)


def _ids_file(tmp_path, ids):
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(ids) + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("n_rows", "ids", "fragments"),
    [
        (3, ["aardvark", "abacus", "camera"], ("unknown concept id", "'camera'")),
        (3, ["aardvark", "abacus", "aardvark"], ("repeats", "'aardvark'")),
        (4, ["aardvark", "abacus", "accordion"], ("4 rows but 3 concept ids",)),
        (2, ["aardvark", "abacus"], ("at least 3",)),
    ],
)
def test_error_bad_ids(capsys, tmp_path, n_rows, ids, fragments):
    np.save(tmp_path / "e.npy", np.random.default_rng(0).random((n_rows, 4)))
    ids_path = _ids_file(tmp_path, ids)
    result = run(
        capsys, "evaluate", "behavior", "--embedding", str(tmp_path / "e.npy"), "--ids", ids_path
    )
    assert_one_line_error(*result, *fragments)


def test_error_wrong_row_count_without_ids(capsys, tmp_path):
    np.save(tmp_path / "e.npy", np.random.default_rng(0).random((1853, 4)))
    result = run(capsys, "evaluate", "behavior", "--embedding", str(tmp_path / "e.npy"))
    assert_one_line_error(*result, "1853 rows", "--ids")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_error_nan_or_inf(capsys, tmp_path, spose, bad):
    values = spose.values.copy()
    values[7, 3] = bad
    np.save(tmp_path / "e.npy", values)
    result = run(capsys, "evaluate", "behavior", "--embedding", str(tmp_path / "e.npy"))
    assert_one_line_error(*result, "e.npy: The embedding holds 1 NaN or infinite", "(7, 3)")


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("missing.npy", None, "no such file"),
        ("garbage.npy", b"\x00\x01not an npy file", "Cannot read embedding file"),
        ("ragged.txt", b"1 2 3\n4 5\n", "Cannot read embedding file"),
        ("words.csv", b"a,b\nc,d\n", "Cannot read embedding file"),
        ("binary.txt", b"\xff\xfe\x00\x81\x00", "Cannot read embedding file"),
        ("table.xlsx", b"PK", "expected a .npy, .txt, .csv or .tsv"),
        ("vector.npy", "1d", "must hold a 2-D array"),
    ],
)
def test_error_unreadable_files(capsys, tmp_path, name, content, fragment):
    path = tmp_path / name
    if content == "1d":
        np.save(path, np.ones(1854))
    elif content is not None:
        path.write_bytes(content)
    result = run(capsys, "evaluate", "behavior", "--embedding", str(path))
    assert_one_line_error(*result, fragment)


@pytest.mark.parametrize(
    ("name", "make", "fragment"),
    [
        ("empty.npy", lambda p: p.write_bytes(b""), "empty or truncated"),
        ("empty.txt", lambda p: p.write_text(""), "holds no numbers"),
        ("header_only.csv", lambda p: p.write_text("a,b,c\n"), "holds no numbers"),
        ("no_columns.npy", lambda p: np.save(p, np.ones((1854, 0))), "holds no numbers"),
        ("complex.npy", lambda p: np.save(p, np.ones((1854, 2), complex)), "real numbers"),
        ("booleans.npy", lambda p: np.save(p, np.ones((1854, 2), bool)), "real numbers"),
    ],
)
def test_error_empty_or_non_numeric_files(capsys, tmp_path, name, make, fragment):
    path = tmp_path / name
    make(path)
    result = run(capsys, "evaluate", "behavior", "--embedding", str(path))
    assert_one_line_error(*result, fragment)


def test_error_directory_as_embedding(capsys, tmp_path):
    result = run(capsys, "evaluate", "behavior", "--embedding", str(tmp_path / "x.npy"))
    assert_one_line_error(*result, "no such file")
    (tmp_path / "dir.npy").mkdir()
    result = run(capsys, "evaluate", "behavior", "--embedding", str(tmp_path / "dir.npy"))
    assert_one_line_error(*result, "it is a directory")


def test_error_bad_output_paths(capsys, spose_txt, tmp_path):
    common = ("evaluate", "behavior", "--embedding", str(spose_txt), "--n-bootstrap", "5")
    result = run(capsys, *common, "--out", str(tmp_path))
    assert_one_line_error(*result, f"--out {tmp_path} is a folder")
    (tmp_path / "file").write_text("x")
    result = run(capsys, *common, "--out", str(tmp_path / "file" / "scores.json"))
    assert_one_line_error(*result, "Cannot write", "scores.json", "is a file, not a folder")
    result = run(capsys, *common, "--plot", str(tmp_path / "figure.xyz"))
    assert_one_line_error(*result, "figure.xyz", "png")


def test_error_blank_line_inside_ids_file(capsys, tmp_path):
    np.save(tmp_path / "e.npy", np.random.default_rng(0).random((3, 4)))
    (tmp_path / "ids.txt").write_text("aardvark\n\nabacus\naccordion\n\n")
    result = run(
        capsys,
        "evaluate",
        "behavior",
        "--embedding",
        str(tmp_path / "e.npy"),
        "--ids",
        str(tmp_path / "ids.txt"),
    )
    assert_one_line_error(*result, "blank line", "id number 2")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("evaluate", "behavior", "--embedding", "x.npy", "--rdm-metric", "corr"), "'corr'"),
        (("evaluate", "behavior", "--embedding", "x.npy", "--seed", "-1"), "--seed"),
        (("evaluate", "behavior", "--embedding", "x.npy", "--n-bootstrap", "abc"), "--n-bootstrap"),
        (("evaluate", "behavior"), "--embedding"),
        (("evaluate", "behaviour"), "behaviour"),
        (("rsa", "compare", "a.npy"), "rdm_b"),
    ],
)
def test_usage_errors_are_one_line(capsys, args, fragment):
    assert_one_line_error(*run(capsys, *args), fragment, "--help")


def test_error_unreadable_ids_file(capsys, spose_txt, tmp_path):
    result = run(
        capsys,
        "evaluate",
        "behavior",
        "--embedding",
        str(spose_txt),
        "--ids",
        str(tmp_path / "none.txt"),
    )
    assert_one_line_error(*result, "Cannot read ids file")


def test_error_bad_data_dir(capsys, spose_txt, tmp_path):
    result = run(
        capsys,
        "evaluate",
        "behavior",
        "--embedding",
        str(spose_txt),
        "--data-dir",
        str(tmp_path / "nowhere"),
    )
    assert_one_line_error(*result, "THINGS data directory")


def test_help_lists_every_option(capsys):
    code, out, _ = run(capsys, "evaluate", "behavior", "--help")
    assert code == 0
    for option in (
        "--embedding",
        "--ids",
        "--rdm-metric",
        "--similarity",
        "--n-bootstrap",
        "--ci-level",
        "--seed",
        "--triplet-order",
        "--data-dir",
        "--out",
        "--plot",
    ):
        assert option in out
    assert "default: 1000" in out


def test_console_script_fails_cleanly_in_a_real_process(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones((5, 5)))
    proc = subprocess.run(
        [sys.executable, "-m", "clip_hba.cli", "evaluate", "behavior", "--embedding", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"clip-hba: error: {bad} has 5 rows; without an ids file an embedding must have one row "
        "per concept (1854) in official order. Give the id of each row with an ids file (--ids)."
    ]


@pytest.fixture
def rdm_files(tmp_path, rng):
    from scipy.spatial.distance import pdist, squareform

    latent = rng.normal(size=(15, 3))
    a = squareform(pdist(latent + 0.3 * rng.normal(size=latent.shape)))
    b = pdist(latent + 0.3 * rng.normal(size=latent.shape))
    np.savetxt(tmp_path / "a.csv", a, delimiter=",")
    np.save(tmp_path / "b.npy", b)
    return tmp_path / "a.csv", tmp_path / "b.npy", a, b


def test_rsa_compare_square_and_condensed(capsys, rdm_files):
    from scipy import stats
    from scipy.spatial.distance import squareform

    a_path, b_path, a, b = rdm_files
    code, out, _ = run(
        capsys,
        "rsa",
        "compare",
        str(a_path),
        str(b_path),
        "--n-bootstrap",
        "200",
        "--n-permutations",
        "200",
    )
    assert code == 0
    result = json.loads(out)
    assert result["value"] == pytest.approx(stats.spearmanr(squareform(a), b).statistic)
    assert result["ci"][0] < result["value"] < result["ci"][1]
    assert result["p_value"] == pytest.approx(1 / 201)
    assert (result["n_conditions"], result["n_pairs"]) == (15, 105)


def test_rsa_compare_aligns_by_ids(capsys, rdm_files, tmp_path):
    from scipy.spatial.distance import squareform

    a_path, _, a, _ = rdm_files
    ids = [f"c{k}" for k in range(15)]
    order = np.random.default_rng(3).permutation(15)
    np.savetxt(tmp_path / "a_shuffled.txt", a[np.ix_(order, order)])
    (tmp_path / "ids_a.txt").write_text("\n".join(ids))
    (tmp_path / "ids_b.txt").write_text("\n".join(ids[k] for k in order))
    code, out, _ = run(
        capsys,
        "rsa",
        "compare",
        str(a_path),
        str(tmp_path / "a_shuffled.txt"),
        "--ids-a",
        str(tmp_path / "ids_a.txt"),
        "--ids-b",
        str(tmp_path / "ids_b.txt"),
        "--method",
        "pearson",
        "--n-bootstrap",
        "0",
        "--n-permutations",
        "0",
    )
    assert code == 0
    result = json.loads(out)
    assert result["value"] == pytest.approx(1.0)
    assert result["ci"] is None and result["p_value"] is None
    assert squareform(a[np.ix_(order, order)]).tolist() != squareform(a).tolist()


def test_rsa_compare_errors(capsys, rdm_files, tmp_path):
    a_path, b_path, a, _ = rdm_files
    asymmetric = a.copy()
    asymmetric[0, 1] += 1
    np.save(tmp_path / "asym.npy", asymmetric)
    result = run(capsys, "rsa", "compare", str(tmp_path / "asym.npy"), str(b_path))
    assert_one_line_error(*result, "not symmetric", "[0, 1]")
    np.save(tmp_path / "rect.npy", np.ones((4, 6)))
    result = run(capsys, "rsa", "compare", str(tmp_path / "rect.npy"), str(b_path))
    assert_one_line_error(*result, "must hold a square (n, n) matrix", "(4, 6)")
    np.save(tmp_path / "odd.npy", np.ones(104))
    result = run(capsys, "rsa", "compare", str(tmp_path / "odd.npy"), str(b_path))
    assert_one_line_error(*result, "n*(n-1)/2", "104")
    np.save(tmp_path / "small.npy", np.ones(36))
    result = run(capsys, "rsa", "compare", str(tmp_path / "small.npy"), str(b_path))
    assert_one_line_error(*result, "differ in size")
    result = run(capsys, "rsa", "compare", str(a_path), str(b_path), "--ids-a", str(a_path))
    assert_one_line_error(*result, "--ids-a and --ids-b")
    result = run(capsys, "rsa", "compare", str(tmp_path / "none.npy"), str(b_path))
    assert_one_line_error(*result, "Cannot read RDM file", "no such file")


def test_bare_command_group_shows_its_help_once(capsys):
    code, out, err = run(capsys, "evaluate")
    assert code == 0 and out.count("Usage:") == 1 and "behavior" in out and err == ""


def test_spose_names_the_bundled_embedding(capsys, spose_txt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file called "spose" here
    by_name = run(capsys, "evaluate", "behavior", "--embedding", "spose", "--n-bootstrap", "20")
    by_file = run(
        capsys, "evaluate", "behavior", "--embedding", str(spose_txt), "--n-bootstrap", "20"
    )
    assert by_name[0] == by_file[0] == 0
    assert json.loads(by_name[1])["rdm48_spearman"] == json.loads(by_file[1])["rdm48_spearman"]
