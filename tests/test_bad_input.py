"""The bad-input campaign: every command refuses bad input with one line and exit status 2.

Each row is a command line run in a prepared folder (tiny models, images, a small simulated
store, a finished run and broken files). Each must end with exactly one ``clip-hba: error:``
line naming the problem, no traceback, and leave no file behind: nothing half-written that
could look complete, and no temporary file.
"""

import json
import os
import re

import numpy as np
import pytest

from clip_hba.data import split_concepts
from clip_hba.testing import make_things_images, make_tiny_clip
from test_cli import run

SPLIT = split_concepts(seed=0)
CONCEPTS = [*SPLIT.train_ids[:16], *SPLIT.val_ids[:4], *SPLIT.test_ids]
IDS4 = ["aardvark", "abacus", "accordion", "acorn"]


def _symmetric(n, rng):
    values = rng.random((n, n))
    square = values + values.T
    np.fill_diagonal(square, 0.0)
    return square


def _files(root):
    """Every file and folder under ``root`` (hidden ones too), files with size and mtime."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
        for p in root.rglob("*")
        if p.is_file() or p.is_dir()
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, spose):
    from clip_hba.meg import SimulationConfig, simulate_meg

    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    clip = make_tiny_clip(root / "clip")
    make_things_images(root / "images", CONCEPTS)
    simulate_meg(
        root / "sim.h5",
        SimulationConfig(n_concepts=30, n_participants=2, tmin_ms=-50, tmax_ms=300),
        verbose=False,
    )
    # model folders that are broken in every way a download or a copy can be
    (root / "noweights").mkdir()
    (root / "noweights" / "config.json").write_text((clip / "config.json").read_text())
    (root / "badjson").mkdir()
    (root / "badjson" / "config.json").write_text("{not json")
    (root / "truncated").mkdir()
    for item in clip.iterdir():
        (root / "truncated" / item.name).write_bytes(item.read_bytes())
    weights = (clip / "model.safetensors").read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    # a finished behaviour run
    code = _train(root, clip)
    assert code == 0
    # files
    (root / "afile").write_text("not a folder\n")
    os.mkfifo(root / "fifo")
    (root / "mine.json").write_text('{"concept_ids": ["a", "b", "c"]}\n')  # a user's sidecar
    (root / "outdir").mkdir()
    (root / "empty.npy").write_bytes(b"")
    (root / "random.npy").write_bytes(bytes(range(256)))
    np.save(root / "one.npy", _symmetric(40, rng))
    np.save(root / "objects.npy", np.array([{}], dtype=object), allow_pickle=True)
    (root / "ids.txt").write_text("\n".join(IDS4) + "\n")
    ok = np.stack([_symmetric(4, rng) for _ in range(3)])
    np.save(root / "ok.npy", ok)
    inf = ok.copy()
    inf[2, 0, 1] = inf[2, 1, 0] = np.inf
    np.save(root / "inf.npy", inf)
    asym = ok.copy()
    asym[1, 3, 2] += 5.0
    np.save(root / "asym.npy", asym)
    square = _symmetric(10, rng)
    np.save(root / "b.npy", square)
    lopsided = square.copy()
    lopsided[0, 1] += 1.0
    np.save(root / "a.npy", lopsided)
    np.savetxt(root / "spose.txt", spose.values)
    np.savetxt(root / "short.txt", spose.values[:100])
    nan = spose.values.copy()
    nan[3, 2] = np.nan
    np.savetxt(root / "nan.txt", nan)
    (root / "images.csv").write_text(
        "image,concept_id\n"
        + "".join(f"object_images/{c}/{c}_01b.jpg,{c}\n" for c in CONCEPTS[:3])
        + f"object_images/{CONCEPTS[0]}/{CONCEPTS[0]}_01b.jpg,{CONCEPTS[0]}\n"
    )
    (root / "two.csv").write_text(
        "image,concept_id\n"
        f"object_images/{CONCEPTS[0]}/{CONCEPTS[0]}_01b.jpg,{CONCEPTS[0]}\n"
        f"object_images/{CONCEPTS[0]}/{CONCEPTS[0]}_01b.jpg,{CONCEPTS[1]}\n"
    )
    return root


def _train(root, clip):
    import contextlib
    import io

    from clip_hba.cli import main

    args = ["fit", "behavior", "--model", str(clip), "--images", str(root / "images")]
    args += ["--skip-missing", "--out", str(root / "run"), "--epochs", "1", "--rank", "2"]
    args += ["--batch-size", "8", "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(args)
        except SystemExit as done:
            return done.code or 0
    return 0


FIT = ["fit", "behavior", "--model", "clip", "--images", "images", "--skip-missing"]
FIT_OUT = [*FIT, "--out", "new_run", "--epochs", "1"]
MEG = ["fit", "meg", "--store", "sim.h5", "--model", "clip", "--images", "images"]
MEG_OUT = [*MEG, "--out", "meg_run"]
EMBED = ["embed", "--model", "clip", "--images", "images", "--skip-missing"]
EVAL = ["evaluate", "behavior", "--embedding", "spose.txt", "--n-bootstrap", "10"]
EVAL_MODEL = ["evaluate", "behavior", "--model", "run", "--n-bootstrap", "10"]
RSA = ["meg", "rsa", "--store", "sim.h5", "--embedding", "spose.txt"]
IMPORT = ["meg", "import"]
INDIVIDUAL = ["fit", "individual", "--store", "sim.h5", "--model", "clip", "--out", "ind"]
EVAL_MEG = ["evaluate", "meg", "--store", "sim.h5"]
AXES = ["--concept-ids", "ids.txt", "--times=0:5"]

ROWS = [
    # ---------------------------------------------------------------- fit behavior
    ([*FIT, "--model", "noweights", "--out", "r"], "holds no weights"),
    ([*FIT, "--model", "truncated", "--out", "r"], "damaged or truncated"),
    ([*FIT, "--model", "badjson", "--out", "r"], "not valid JSON"),
    ([*FIT, "--model", "clip/config.json", "--out", "r"], "not a model folder"),
    ([*FIT, "--model", "outdir", "--out", "r"], "has no config.json"),
    ([*FIT, "--model", "nobody/no-such-model", "--out", "r"], "save_pretrained"),
    ([*FIT_OUT, "--weight-decay", "-1"], "--weight-decay"),
    ([*FIT, "--out", "afile"], "--out afile is a file"),
    ([*FIT, "--out", "afile/run"], "afile is a file, not a folder"),
    ([*FIT_OUT, "--logit-scale", "0"], "'--logit-scale'"),
    ([*FIT_OUT, "--max-concepts", "100000"], "--max-concepts 100000"),
    ([*FIT_OUT, "--max-concepts", "2"], "--max-concepts"),
    ([*FIT_OUT, "--rdm-loss-weight", "nan"], "'--rdm-loss-weight'"),
    ([*FIT_OUT, "--rdm-loss-weight", "inf"], "'--rdm-loss-weight'"),
    ([*FIT_OUT, "--rdm-loss-weight", "-1"], "'--rdm-loss-weight'"),
    ([*FIT_OUT, "--augment", "heavy"], "'heavy' is not one of"),
    ([*FIT_OUT, "--exemplar", "ALL"], "'ALL'"),
    ([*FIT_OUT, "--exemplar", "01b"], "--exemplar '01b'"),
    ([*FIT_OUT, "--exemplar", "a/b"], "'--exemplar'"),
    ([*FIT_OUT, "--layers", "0"], "blocks 1..3"),
    ([*FIT_OUT, "--layers", "9"], "blocks 1..3"),
    ([*FIT_OUT, "--layers", "x"], "--layers"),
    ([*FIT_OUT, "--rank", "0"], "--rank"),
    ([*FIT_OUT, "--lr", "0"], "'--lr'"),
    ([*FIT_OUT, "--val-fraction", "1.5"], "'--val-fraction'"),
    ([*FIT_OUT, "--epochs", "0"], "--epochs"),
    ([*FIT_OUT, "--cache", "sometimes"], "'sometimes'"),
    ([*FIT_OUT, "--head", "mlp"], "'mlp'"),
    ([*FIT_OUT, "--template", "no label"], "{label}"),
    ([*FIT_OUT, "--images-csv", "images.csv"], "lists object_images"),
    ([*FIT_OUT, "--images-csv", "two.csv", "--exemplar", "all"], "under"),
    ([*FIT, "--out", "run"], "already holds a run"),
    ([*FIT, "--out", "run", "--resume", "--lr", "0.5"], "--lr"),
    ([*FIT, "--out", "run", "--resume", "--exemplar", "all"], "--exemplar"),
    ([*FIT, "--out", "nothing_here", "--resume"], "Nothing to resume"),
    (["fit", "behavior", "--model", "clip", "--images", "nowhere", "--out", "r"], "nowhere"),
    # ---------------------------------------------------------------- fit meg / individual
    ([*MEG, "--out", "afile"], "--out afile is a file"),
    ([*MEG, "--out", "afile/run"], "afile is a file, not a folder"),
    ([*MEG_OUT, "--time-budget", "-5"], "--time-budget"),
    ([*MEG_OUT, "--max-concepts", "5000"], "--max-concepts 5000"),
    ([*MEG_OUT, "--loss-weights", "1,0"], "'--loss-weights'"),
    ([*MEG_OUT, "--loss-weights", "0,0,0"], "'--loss-weights'"),
    ([*MEG_OUT, "--weight-decay", "-1"], "--weight-decay"),
    ([*MEG_OUT, "--batch-size", "2"], "--batch-size"),
    ([*MEG_OUT, "--init", "sideways"], "'sideways'"),
    ([*MEG_OUT, "--stage1-epochs", "-1"], "--stage1-epochs"),
    ([*MEG_OUT, "--init-behavior", "clip"], "not a clip-hba run"),
    (["fit", "meg", "--store", "nowhere.h5", "--model", "clip", "--out", "m"], "nowhere.h5"),
    ([*MEG, "--out", "m", "--time-window", "x,y"], "--time-window"),
    (
        [*INDIVIDUAL, "--group-run", "run", "--images", "images", "--participant", "all"],
        "--group-run",
    ),
    (
        [*INDIVIDUAL, "--participant", "nobody", "--init", "base", "--init-behavior", "run"],
        "'nobody'",
    ),
    # ---------------------------------------------------------------- embed
    ([*EMBED, "--out", "outdir"], "is a folder"),
    ([*EMBED, "--out", "afile/e.npz"], "afile is a file, not a folder"),
    ([*EMBED, "--out", "e.npz", "--layers", "--per-image"], "--per-image"),
    ([*EMBED, "--out", "e.npz", "--rdm", "--layers"], "cannot be combined"),
    ([*EMBED, "--out", "e.npz", "--exemplar", "01b"], "--exemplar '01b'"),
    ([*EMBED, "--out", "e.pkl"], "use a .npz, .csv or .tsv file"),
    ([*EMBED, "--out", "e.csv", "--layers"], "Layer-wise features go into an .npz file"),
    ([*EMBED, "--out", "e.csv", "--rdm"], "only be written into a .npz file (--rdm)"),
    (
        ["embed", "--model", "clip", "--images", "images", "--out", "e.npz", "--exemplar", "_02b"],
        "--exemplar '_02b'",
    ),
    (["embed", "--model", "clip", "--out", "e.npz"], "images"),
    (["embed", "--model", "noweights", "--images", "images", "--out", "e.npz"], "no weights"),
    # ---------------------------------------------------------------- evaluate behavior
    ([*EVAL, "--out", "afile/x.json"], "afile is a file, not a folder"),
    ([*EVAL, "--out", "outdir"], "is a folder"),
    ([*EVAL, "--out", "fifo"], "not a regular file"),
    ([*EVAL, "--plot", "rdm.weird"], "rdm.weird"),
    (["evaluate", "behavior", "--embedding", "short.txt"], "short.txt"),
    (["evaluate", "behavior", "--embedding", "nan.txt"], "NaN"),
    (["evaluate", "behavior", "--embedding", "empty.npy"], "empty or truncated"),
    (["evaluate", "behavior", "--embedding", "random.npy"], "not a valid .npy file"),
    (["evaluate", "behavior", "--embedding", "missing.npy"], "no such file"),
    (["evaluate", "behavior"], "either --embedding"),
    (["evaluate", "behavior", "--embedding", "spose", "--ids", "ids.txt"], "takes no --ids"),
    ([*EVAL, "--corruptions", "blur"], "goes with --model"),
    ([*EVAL_MODEL, "--corruptions", "blur", "--severity", "3-1"], "runs backwards"),
    ([*EVAL_MODEL, "--corruptions", "blur", "--severity", "0-2"], "from 1 to 5"),
    ([*EVAL_MODEL, "--corruptions", "fog"], "'fog'"),
    ([*EVAL_MODEL, "--corruptions", "blur,blur"], "names one twice"),
    ([*EVAL_MODEL, "--severity", "2"], "give --corruptions too"),
    ([*EVAL_MODEL, "--rdm-metric", "cosine"], "goes with --embedding"),
    (["evaluate", "behavior", "--model", "run", "--exemplar", "ALL"], "'ALL'"),
    # ---------------------------------------------------------------- evaluate meg
    (["evaluate", "meg", "--model", "run", "--store", "sim.h5", "--out", "afile"], "is a file"),
    (["evaluate", "meg", "--model", "run", "--store", "sim.h5", "--out", "ev"], "MEG run"),
    (["evaluate", "meg", "--model", "outdir", "--store", "sim.h5", "--out", "ev"], "outdir"),
    ([*EVAL_MEG, "--model", "outdir", "--out", "ev", "--window", "x,y"], "--window"),
    # ---------------------------------------------------------------- rsa compare
    (["rsa", "compare", "a.npy", "b.npy"], "--asymmetric average|upper|lower"),
    (["rsa", "compare", "b.npy", "b.npy", "--method", "tau"], "'tau'"),
    (["rsa", "compare", "b.npy", "b.npy", "--out", "afile/x.json"], "afile is a file"),
    (["rsa", "compare", "b.npy", "missing.npy"], "missing.npy"),
    (["rsa", "compare", "b.npy", "one.npy"], "differ in size"),
    # ---------------------------------------------------------------- meg import / info / export
    ([*IMPORT, "empty.npy", "--out", "s.h5"], "is empty or truncated"),
    ([*IMPORT, "random.npy", "--out", "s.h5"], "is not a valid .npy file"),
    ([*IMPORT, "objects.npy", "--out", "s.h5"], "holds Python objects, not numbers"),
    ([*IMPORT, "missing.npy", "--out", "s.h5"], "No such file"),
    ([*IMPORT, "one.npy", "--out", "s.h5"], "accepted are (P, T, N, N)"),
    ([*IMPORT, "ok.npy", "--out", "outdir"], "is a directory; --out must be the path"),
    ([*IMPORT, "ok.npy", "--out", "outdir", "--force"], "is a directory; --out must be the path"),
    ([*IMPORT, "ok.npy", "--out", "afile/s.h5", *AXES], "afile is a file, not a folder"),
    ([*IMPORT, "inf.npy", "--out", "s.h5", *AXES], "with an infinite dissimilarity"),
    ([*IMPORT, "asym.npy", "--out", "s.h5", *AXES], "not symmetric: [2, 3]"),
    ([*IMPORT, "asym.npy", "--out", "s.h5", "--asymmetric", "mean"], "'mean' is not one of"),
    ([*IMPORT, "ok.npy", "--out", "sim.h5", *AXES], "exists; use --force"),
    ([*IMPORT, "x.weird", "--out", "s.h5"], "Cannot tell the format"),
    ([*IMPORT, "sub-01-epo.fif", "--out", "s.h5", "--inf-as-nan"], "not mne epochs"),
    (["meg", "info", "missing.h5"], "No RDM store"),
    (["meg", "info", "sim.h5", "--quality-window", "100,0"], "finite START < STOP"),
    (["meg", "export", "sim.h5", "--out", "sim.h5", "--force"], "ending in .mat"),
    (["meg", "export", "sim.h5", "--out", "x.npy"], "ending in .mat"),
    (["meg", "export", "sim.h5", "--out", "x.mat", "--variable", ""], "MATLAB variable name"),
    ([*IMPORT, "ok.npy", "--out", "ok.npy", "--force", *AXES], "one of the sources"),
    ([*IMPORT, "ok.npy", "--out", "/proc/s.h5", *AXES], "is not writable"),
    (["meg", "info", "ok.npy"], "ok.npy"),
    (["meg", "export", "missing.h5", "--out", "outdir"], "ending in .mat"),
    (["meg", "export", "sim.h5", "--out", "mine.mat"], "mine.json exists"),
    # ---------------------------------------------------------------- meg rsa / simulate
    ([*RSA, "--out", "afile"], "--out afile is a file"),
    ([*RSA, "--out", "afile/rsa"], "afile is a file, not a folder"),
    ([*RSA, "--out", "rsa", "--method", "tau"], "'tau'"),
    ([*RSA, "--out", "rsa", "--time-window", "x,y"], "--time-window"),
    (["meg", "rsa", "--store", "sim.h5", "--embedding", "missing.txt", "--out", "r"], "missing"),
    (["simulate", "meg", "--out", "outdir"], "is a directory"),
    (["simulate", "meg", "--out", "sim.h5"], "exists; use --force"),
    (["simulate", "meg", "--out", "s.h5", "--noise", "0"], "'--noise'"),
    (["simulate", "meg", "--out", "s.h5", "--tmax", "inf"], "Invalid time axis"),
    ([*FIT, "--out", "/proc/run"], "is not writable"),
    (["simulate", "meg", "--out", "s.h5", "--export-mat", "mine.mat"], "mine.json exists"),
    (["simulate", "meg", "--out", "s.h5", "--export-mat", "x.txt"], "ending in .mat"),
    # ---------------------------------------------------------------- the command line itself
    (["fit", "behavior", "--no-such-option"], "No such option"),
    (["frobnicate"], "No such command"),
]


@pytest.mark.parametrize(("args", "fragment"), ROWS, ids=[" ".join(a) for a, _ in ROWS])
def test_bad_input_is_one_line_and_leaves_nothing(capsys, monkeypatch, workspace, args, fragment):
    monkeypatch.chdir(workspace)
    before = _files(workspace)
    code, out, err = run(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith("clip-hba: error: ")]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0], err  # the error is the last thing printed
    messages = [line for line in lines if not re.search(r"\d+%\|", line)]  # not progress bars
    assert len(messages) <= 2, err  # at most one warning before it (e.g. concepts left out)
    assert fragment in errors[0], errors[0]
    assert out == ""
    assert _files(workspace) == before, "a refused command wrote or changed files"


def test_embed_refuses_its_output_before_any_embedding(capsys, monkeypatch, workspace):
    import clip_hba.pipelines.embed as pipeline

    def never(*args, **kwargs):
        raise AssertionError("the inputs were prepared before the output was checked")

    monkeypatch.setattr(pipeline, "run_inputs", never)
    monkeypatch.chdir(workspace)
    for out, extra, fragment in [
        ("e.pkl", [], "use a .npz, .csv or .tsv file"),
        ("e", [], "use a .npz, .csv or .tsv file"),
        ("l.csv", ["--layers"], "Layer-wise features go into an .npz file"),
        ("r.tsv", ["--rdm"], "(--rdm)"),
    ]:
        code, _, err = run(capsys, *EMBED, "--out", out, *extra)
        assert code == 2 and fragment in err, err


def test_the_campaign_covers_every_command():
    commands = {
        " ".join(a[:2]) if a[0] in {"fit", "evaluate", "meg", "rsa", "simulate"} else a[0]
        for a, _ in ROWS
    }
    expected = {
        "fit behavior",
        "fit meg",
        "fit individual",
        "embed",
        "evaluate behavior",
        "evaluate meg",
        "rsa compare",
        "meg import",
        "meg info",
        "meg export",
        "meg rsa",
        "simulate meg",
    }
    assert expected <= commands
    assert len(ROWS) >= 60


def test_run_after_a_refusal_is_untouched(workspace):
    saved = json.loads((workspace / "run" / "config.json").read_text())
    assert saved["fit"]["epochs"] == 1 and os.path.isfile(workspace / "run" / "status.json")
