"""Own image sets and many participants, end to end through the CLI (the reference's Cichy path):
a store whose ids are not THINGS concepts, images listed in images.csv, 1 ms data averaged
into 5 ms bins on import, a group model, one personal model per participant (15), and their
specificity with a Monte Carlo permutation test and the second-order analysis."""

import json

import numpy as np
import pytest
from PIL import Image

from clip_hba.meg import RDMStore
from clip_hba.testing import make_tiny_clip
from test_cli import run

N_IMAGES, N_PEOPLE = 12, 15
TIMES_MS = np.arange(-10.0, 50.0)  # 1 ms samples: 60 -> 12 bins of 5 ms


@pytest.fixture(scope="module")
def own_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    ids = [f"img{k:03d}" for k in range(1, N_IMAGES + 1)]
    images = root / "images"
    images.mkdir()
    for name in ids:
        pixels = rng.integers(0, 256, size=(36, 36, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{name}.jpg")
    rows = ["image,concept_id", *(f"{name}.jpg,{name}" for name in ids)]
    (images / "images.csv").write_text("\n".join(rows) + "\n")
    n_pairs = N_IMAGES * (N_IMAGES - 1) // 2
    shared = rng.normal(size=n_pairs)
    personal = rng.normal(size=(N_PEOPLE, n_pairs))
    onset = (TIMES_MS >= 0)[None, :, None]
    data = 50 + onset * (shared + personal[:, None]) + rng.normal(size=(N_PEOPLE, 60, n_pairs))
    np.save(root / "cichy.npy", data.astype(np.float32))
    sidecar = {
        "concept_ids": ids,
        "times_ms": TIMES_MS.tolist(),
        "participant_ids": [f"s{k:02d}" for k in range(1, N_PEOPLE + 1)],
    }
    (root / "cichy.json").write_text(json.dumps(sidecar))
    return root, data


def test_an_own_image_set_with_many_participants_end_to_end(capsys, own_set, tmp_path):
    root, data = own_set
    store = tmp_path / "cichy.h5"
    code, out, err = run(
        capsys, "meg", "import", str(root / "cichy.npy"), "--out", str(store), "--bin-ms", "5",
        "--quiet",
    )  # fmt: skip
    assert code == 0, err
    info = json.loads(out)
    assert info["n_times"] == 12 and info["n_participants"] == N_PEOPLE
    with RDMStore(store) as opened:
        np.testing.assert_allclose(opened.times_ms, TIMES_MS.reshape(12, 5).mean(1))
        first_bin = opened.read(participants=["s01"]).values[0, 0]
        np.testing.assert_allclose(first_bin, data[0, :5].mean(0), rtol=1e-5)
        assert opened.concept_ids[0] == "img001"
    model = make_tiny_clip(tmp_path / "clip")
    common = [
        "--store", str(store), "--model", str(model), "--images", str(root / "images"),
        "--stage0-epochs", "2", "--stage1-epochs", "1", "--batch-size", "6",
        "--test-fraction", "0.34", "--val-fraction", "0.3", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    code, out, err = run(capsys, "fit", "meg", "--out", str(tmp_path / "group"), *common)
    assert code == 0, err
    group = json.loads((tmp_path / "group" / "config.json").read_text())
    assert len(group["split"]["test"]) == 4 and all(
        c.startswith("img") for c in group["split"]["test"]
    )
    code, out, err = run(
        capsys, "fit", "individual", "--participant", "all", "--group-run",
        str(tmp_path / "group"), "--out", str(tmp_path / "personal"), *common,
    )  # fmt: skip
    assert code == 0, err
    assert len(json.loads(out)) == N_PEOPLE
    code, out, err = run(
        capsys, "evaluate", "meg", "--model", str(tmp_path / "personal"), "--store", str(store),
        "--out", str(tmp_path / "specificity"), "--window", "0,50", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    specificity = json.loads(out)
    assert np.array(specificity["matrix"]).shape == (N_PEOPLE, N_PEOPLE)
    assert specificity["permutations"] == "monte_carlo"  # 15! orders: a seeded sample
    assert specificity["min_p_value"] == pytest.approx(1 / (1 + specificity["n_permutations"]))
    second = specificity["second_order"]
    assert np.array(second["meg_dissimilarity"]).shape == (N_PEOPLE, N_PEOPLE)
    assert 0 < second["p_value"] <= 1 and second["permutations"] == "monte_carlo"
    assert (tmp_path / "specificity" / "specificity.png").is_file()


def test_bins_must_fit_the_sampling_step(capsys, own_set, tmp_path):
    root, _ = own_set
    for bad, message in (
        ("2.5", "whole multiple"),
        ("0", "expected > 0"),
        ("500", "longer"),
    ):
        code, _, err = run(
            capsys, "meg", "import", str(root / "cichy.npy"), "--out", str(tmp_path / "x.h5"),
            "--bin-ms", bad, "--quiet",
        )  # fmt: skip
        assert code == 2 and message in err and "Traceback" not in err, err
        assert not (tmp_path / "x.h5").exists()
