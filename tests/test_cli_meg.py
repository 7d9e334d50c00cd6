"""The meg and simulate commands end to end, and their one-line errors."""

import json

import numpy as np
import pytest

from clip_hba.meg import RDMStore
from test_cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from clip_hba.meg import SimulationConfig, simulate_meg

    root = tmp_path_factory.mktemp("climeg")
    config = SimulationConfig(n_concepts=30, n_participants=3, tmin_ms=-50, tmax_ms=500)
    return simulate_meg(root / "sim.h5", config, verbose=False)


def test_simulate_export_import_info(capsys, tmp_path):
    code, out, _ = run(
        capsys,
        "simulate",
        "meg",
        "--out",
        str(tmp_path / "sim.h5"),
        "--concepts",
        "12",
        "--participants",
        "2",
        "--tmin",
        "-20",
        "--tmax",
        "100",
        "--export-mat",
        str(tmp_path / "sim.mat"),
    )
    assert code == 0
    info = json.loads(out)
    assert info["n_concepts"] == 12 and info["n_participants"] == 2 and info["n_times"] == 25
    with RDMStore(tmp_path / "sim.h5") as store:
        (tmp_path / "ids.txt").write_text("\n".join(store.concept_ids))
        original = store.read().values
    code, out, _ = run(
        capsys,
        "meg",
        "import",
        str(tmp_path / "sim.mat"),
        "--out",
        str(tmp_path / "back.h5"),
        "--concept-ids",
        str(tmp_path / "ids.txt"),
        "--times=-20:5",
        "--quiet",
    )
    assert code == 0
    assert json.loads(out)["participants"] == ["sim01", "sim02"]
    with RDMStore(tmp_path / "back.h5") as store:
        np.testing.assert_array_equal(store.read().values, original)
    code, out, _ = run(capsys, "meg", "info", str(tmp_path / "back.h5"))
    info = json.loads(out)
    assert code == 0 and info["nan_share"] == 0.0
    quality = info["quality"]  # two participants: each agrees with the other alike
    assert quality["window_ms"] == [0.0, 100.0] and quality["flagged"] == []
    first, second = (quality["participants"][p]["r_with_others"] for p in ("sim01", "sim02"))
    assert first == pytest.approx(second)
    code, out, _ = run(capsys, "meg", "info", str(tmp_path / "back.h5"), "--no-quality")
    assert "quality" not in json.loads(out)
    code, out, _ = run(
        capsys, "meg", "info", str(tmp_path / "back.h5"), "--quality-window", "500,900"
    )
    assert code == 0 and "no timepoint" in json.loads(out)["quality"]["note"]
    code, out, err = run(
        capsys, "meg", "info", str(tmp_path / "back.h5"), "--quality-window", "500"
    )
    assert code == 2 and "500" in err and "Traceback" not in err


def test_rsa_command_writes_summary_curves_and_plots(capsys, simulated, tmp_path, spose):
    with RDMStore(simulated) as store:
        ids = store.concept_ids
    rows = [spose.concept_ids.index(c) for c in ids]
    np.savetxt(tmp_path / "spose.txt", spose.values[rows])
    (tmp_path / "ids.txt").write_text("\n".join(ids))
    code, out, _ = run(
        capsys,
        "meg",
        "rsa",
        "--store",
        str(simulated),
        "--embedding",
        str(tmp_path / "spose.txt"),
        "--ids",
        str(tmp_path / "ids.txt"),
        "--out",
        str(tmp_path / "rsa"),
        "--permutations",
        "50",
        "--quiet",
    )
    assert code == 0
    summary = json.loads(out)
    curve = summary["curves"]["spose"]
    assert {"peak", "peak_latency_ms", "onset_ms", "auc"} <= curve.keys()
    assert 100 <= curve["peak_latency_ms"] <= 450
    assert summary["noise_ceiling"]["upper_peak"] > 0
    for name in ("rsa.json", "curves.csv", "curves.npz", "rsa_curves.png"):
        assert (tmp_path / "rsa" / name).is_file()


def test_embed_layers_feeds_the_layer_time_matrix(capsys, simulated, tmp_path):
    from clip_hba.testing import make_things_images, make_tiny_clip

    with RDMStore(simulated) as store:
        ids = store.concept_ids
    model = make_tiny_clip(tmp_path / "clip")
    images = make_things_images(tmp_path / "images", ids)
    code, out, _ = run(
        capsys,
        "embed",
        "--model",
        str(model),
        "--images",
        str(images),
        "--out",
        str(tmp_path / "layers.npz"),
        "--layers",
        "--batch-size",
        "7",
    )
    assert code == 0
    assert json.loads(out)["n_layers"] == 3
    with np.load(tmp_path / "layers.npz") as archive:
        assert archive["embedding"].shape[:2] == (3, 30)
        assert list(archive["layers"]) == ["block_1", "block_2", "block_3"]
    code, out, _ = run(
        capsys,
        "meg",
        "rsa",
        "--store",
        str(simulated),
        "--embedding",
        str(tmp_path / "layers.npz"),
        "--out",
        str(tmp_path / "rsa"),
        "--permutations",
        "0",
        "--quiet",
    )
    assert code == 0
    summary = json.loads(out)
    assert len(summary["layers"]["layers"]["best_layer_per_time"]) == 111
    assert (tmp_path / "rsa" / "layer_time_layers.npy").is_file()
    assert (tmp_path / "rsa" / "layer_time_layers.png").is_file()


def test_embed_layers_is_batch_independent(tmp_path):
    from clip_hba.models import InputConfig, concept_inputs, embed_layers, select_inputs
    from clip_hba.testing import make_things_images, make_tiny_clip
    from clip_hba.training import load_run

    ids = ["aardvark", "abacus", "accordion", "acorn", "air_conditioner"]
    model = load_run(make_tiny_clip(tmp_path / "clip")).model
    images = make_things_images(tmp_path / "images", ids)
    inputs = concept_inputs(model.backbone, ids, InputConfig(images=str(images)))
    one = embed_layers(model, inputs, batch_size=1)
    many = embed_layers(model, inputs, batch_size=5)
    assert one.concept_ids == tuple(ids) and one.labels[0] == "block_1"
    np.testing.assert_allclose(one.values, many.values, rtol=1e-5, atol=1e-6)
    final = model.concept_tower(select_inputs(inputs.tensors, range(5))).detach().numpy()
    np.testing.assert_allclose(one.values[-1], final, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["meg", "info", "missing.h5"], ["No RDM store"]),
        (["meg", "import", "x.weird", "--out", "s.h5"], ["Cannot tell the format"]),
        (["simulate", "meg", "--out", "s.h5", "--noise", "0"], ["'--noise'"]),
        (
            ["fit", "meg", "--store", "s.h5", "--model", "m", "--loss-weights", "1,0"],
            ["'--loss-weights'", "'1,0'"],
        ),
        (
            ["meg", "rsa", "--store", "missing.h5", "--embedding", "e.txt", "--out", "o"],
            ["No embedding file"],
        ),
    ],
)
def test_bad_input_is_one_line(capsys, tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*run(capsys, *args), *fragments)


def test_existing_output_needs_force(capsys, simulated, tmp_path):
    assert_one_line_error(
        *run(capsys, "simulate", "meg", "--out", str(simulated)), "exists; use --force"
    )


def test_rsa_reports_too_small_overlap(capsys, simulated, tmp_path):
    np.savetxt(tmp_path / "e.txt", np.ones((3, 2)) + np.arange(6).reshape(3, 2) ** 2)
    (tmp_path / "ids.txt").write_text("aardvark\nabacus\nzebra")
    assert_one_line_error(
        *run(
            capsys,
            "meg",
            "rsa",
            "--store",
            str(simulated),
            "--embedding",
            str(tmp_path / "e.txt"),
            "--ids",
            str(tmp_path / "ids.txt"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ),
        "concept(s) with the MEG store",
    )
