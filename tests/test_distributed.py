"""Data-parallel training on CPU with the gloo backend: 2 processes give the 1-process run (to
float rounding), resume exactly, report a worker's bad input in one line, and work when
launched by torchrun."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clip_hba._validation import InputError
from clip_hba.data import split_concepts
from clip_hba.meg import SimulationConfig, simulate_meg
from clip_hba.models import AdapterConfig, InputConfig
from clip_hba.testing import make_things_images, make_tiny_bert, make_tiny_clip
from clip_hba.training import (
    BehaviorFitConfig,
    MegFitConfig,
    Ranks,
    fit_behavior,
    fit_meg,
    gather_rows,
    launch,
)

SPLIT = split_concepts(seed=0)
CONCEPTS = [*SPLIT.train_ids[:16], *SPLIT.val_ids[:4], *SPLIT.test_ids]
# measured: the largest relative difference of 2 processes from 1 is 2e-6 (losses, weights);
# the processes sum their gradients in another order than one backward pass does
RTOL = 1e-4


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "model")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_things_images(tmp_path_factory.mktemp("images"), CONCEPTS)


def close(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)) < RTOL


def same_weights(run_a, run_b):
    a, b = load_file(run_a / "adapter.safetensors"), load_file(run_b / "adapter.safetensors")
    assert a.keys() == b.keys()
    return all(close(a[k].numpy(), b[k].numpy()) for k in a)


def behavior_config(model, out, images, **overrides):
    settings = dict(
        model=str(model),
        out=str(out),
        inputs=InputConfig(images=str(images)),
        adapter=AdapterConfig(rank=4, alpha=2.0),
        epochs=3,
        batch_size=7,  # batches split 4 + 3 over the processes, and a last batch of 2
        lr=1e-2,
        rdm_loss_weight=10.0,  # a loss over the batch's pairs, which no process has alone
        max_concepts=20,
        device="cpu",
    )
    return BehaviorFitConfig(**{**settings, **overrides})


def test_gather_rows_is_the_identity_on_one_process():
    rows = torch.randn(5, 3, requires_grad=True)
    assert gather_rows(rows, Ranks().owners(torch.arange(5)), Ranks()) is rows
    assert Ranks(1, 2).own(torch.tensor([4, 5, 6, 7])).tolist() == [5, 7]


def test_two_processes_train_what_one_does_and_resume_exactly(tiny_clip, images, tmp_path):
    one = fit_behavior(behavior_config(tiny_clip, tmp_path / "one", images), verbose=False)
    two = fit_behavior(
        behavior_config(tiny_clip, tmp_path / "two", images, devices=2), verbose=False
    )
    for key in ("train_loss", "val_loss", "val_rdm"):
        a = [r[key] for r in one.log if r[key] is not None]
        b = [r[key] for r in two.log if r[key] is not None]
        assert close(a, b), key
    assert same_weights(tmp_path / "one", tmp_path / "two")
    assert two.best_epoch == one.best_epoch and two.model is not None
    assert json.loads((tmp_path / "two" / "status.json").read_text())["status"] == "finished"
    assert json.loads((tmp_path / "two" / "config.json").read_text())["fit"]["devices"] == 2
    # stopped after 2 epochs, resumed on 2 processes: the uninterrupted 2-process run exactly
    part = tmp_path / "part"
    fit_behavior(behavior_config(tiny_clip, part, images, devices=2, epochs=2), verbose=False)
    resumed = fit_behavior(
        behavior_config(tiny_clip, part, images, devices=2), resume=True, verbose=False
    )
    assert [r["val_loss"] for r in resumed.log] == [r["val_loss"] for r in two.log]
    for key, value in load_file(tmp_path / "two" / "last.safetensors").items():
        assert torch.equal(load_file(part / "last.safetensors")[key], value), key
    # only rank 0 wrote the run: no other process's files beside it
    assert sorted(p.name for p in part.iterdir() if p.name.startswith(".")) == []


def _write_environment(folder):
    rank = os.environ["RANK"]
    (folder / f"rank{rank}.json").write_text(json.dumps(dict(os.environ)))


def test_launches_fork_from_a_server_only_under_its_settings(tmp_path, monkeypatch):
    from clip_hba.training import distributed

    for value in ("first", "second"):  # the second launch reuses the fork server of the first
        monkeypatch.setenv("CLIP_HBA_PROBE", value)
        launch(_write_environment, (tmp_path,), {}, devices=2, device=torch.device("cpu"))
        for rank in ("0", "1"):
            seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
            assert seen["CLIP_HBA_PROBE"] == value and seen["WORLD_SIZE"] == "2"
    if not sys.platform.startswith("linux"):
        return
    assert distributed._context(_write_environment, False).get_start_method() == "forkserver"
    assert distributed._context(_write_environment, True).get_start_method() == "spawn"  # CUDA
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read by huggingface_hub at import: spawned
    assert distributed._context(_write_environment, False).get_start_method() == "spawn"


def test_a_bad_input_in_the_processes_is_one_error(tmp_path):
    with pytest.raises(InputError, match="no weights|not a model|config.json"):
        fit_behavior(
            BehaviorFitConfig(model=str(tmp_path), out=str(tmp_path / "run"), devices=2),
            verbose=False,
        )
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    config = SimulationConfig(n_concepts=40, n_participants=2, tmin_ms=-50, tmax_ms=150, seed=2)
    return simulate_meg(tmp_path_factory.mktemp("sim") / "sim.h5", config, verbose=False)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "model")


def meg_config(store, model, out, **overrides):
    settings = dict(
        store=str(store),
        model=str(model),
        out=str(out),
        adapter=AdapterConfig(rank=2, alpha=4.0, layers=(), label_layers=()),
        stage0_epochs=2,
        stage1_epochs=2,
        stage0_lr=0.05,
        stage1_lr=1e-2,
        batch_size=9,
        improvement_confidence=0.0,
        device="cpu",
    )
    return MegFitConfig(**{**settings, **overrides})


def test_meg_stage_one_on_two_processes_and_under_torchrun(store, bert, tmp_path):
    one = fit_meg(meg_config(store, bert, tmp_path / "one"), verbose=False)
    two = fit_meg(meg_config(store, bert, tmp_path / "two", devices=2), verbose=False)
    assert any(r["stage"] == 1 for r in two.log)
    assert close([r["val_loss"] for r in one.log], [r["val_loss"] for r in two.log])
    assert same_weights(tmp_path / "one", tmp_path / "two")
    # the same run launched by torchrun, through the command line
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "clip_hba.cli", "fit", "meg", "--store", str(store),
        "--model", str(bert), "--out", str(tmp_path / "torchrun"), "--rank", "2",
        "--alpha", "4", "--stage0-epochs", "2", "--stage1-epochs", "2", "--stage0-lr", "0.05",
        "--stage1-lr", "0.01", "--batch-size", "9", "--improvement-confidence", "0",
        "--device", "cpu", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["best_stage"] == two.best_stage  # one JSON: rank 0's
    assert same_weights(tmp_path / "one", tmp_path / "torchrun")
