"""Mixed precision (--precision fp32|bf16|fp16): autocast forward passes, float32 outputs and
losses, the fp16 loss scaler in checkpoints, and caches keyed by precision. On CPU: bf16 and
fp16 autocast run there too."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clip_hba._validation import InputError
from clip_hba.cli import main
from clip_hba.data import split_concepts
from clip_hba.meg import SimulationConfig, simulate_meg
from clip_hba.models import (
    AdapterConfig,
    InputConfig,
    autocast,
    base_model,
    concept_inputs,
    embed,
    embed_layers,
    full_precision,
    grad_scaler,
)
from clip_hba.testing import make_things_images, make_tiny_bert, make_tiny_clip
from clip_hba.training import BehaviorFitConfig, MegFitConfig, fit_behavior, fit_meg, prefix_key

SPLIT = split_concepts(seed=0)
CONCEPTS = [*SPLIT.train_ids[:16], *SPLIT.val_ids[:4], *SPLIT.test_ids]
# the largest difference from fp32, relative to the largest value (measured on these tiny
# random models: bf16 1.1 %, fp16 0.15 %; bf16 keeps 8 bits of mantissa, fp16 11)
TOLERANCE = {"bf16": 0.03, "fp16": 0.005}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "model")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_things_images(tmp_path_factory.mktemp("images"), CONCEPTS)


def relative_error(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(a).max())


def test_autocast_runs_half_formats_and_fp32_changes_nothing():
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(3, 8)
    with autocast("fp32", "cpu"):
        assert torch.equal(layer(x), layer(x))
        assert layer(x).dtype == torch.float32
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast(precision, "cpu"):
            out = layer(x)
        assert out.dtype == dtype and full_precision(out).dtype == torch.float32
    assert full_precision(torch.ones(2, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(InputError, match="'precision'.*'fp32', 'bf16', 'fp16'.*'fp8'"):
        with autocast("fp8", "cpu"):
            pass
    assert not grad_scaler("bf16", "cpu").is_enabled() and grad_scaler("fp16", "cpu").is_enabled()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_embeddings_in_half_formats_agree_with_fp32(tiny_clip, images, precision):
    model = base_model(tiny_clip)
    inputs = concept_inputs(model.backbone, CONCEPTS, InputConfig(images=str(images)))
    half = embed(model, inputs, precision=precision)  # first: caches stay float32
    full = embed(model, inputs)
    assert half.values.dtype == np.float64 and half.concept_ids == full.concept_ids
    assert relative_error(full.values, half.values) < TOLERANCE[precision]
    layers = embed_layers(model, inputs), embed_layers(model, inputs, precision=precision)
    assert relative_error(layers[0].values, layers[1].values) < TOLERANCE[precision]
    # fp32 is exactly what it was without the setting
    np.testing.assert_array_equal(embed(model, inputs, precision="fp32").values, full.values)


def behavior_config(model, out, images, **overrides):
    settings = dict(
        model=str(model),
        out=str(out),
        inputs=InputConfig(images=str(images)),
        adapter=AdapterConfig(rank=4, alpha=2.0),
        epochs=3,
        batch_size=8,
        lr=1e-2,
        max_concepts=20,
        device="cpu",
    )
    return BehaviorFitConfig(**{**settings, **overrides})


def test_bf16_training_follows_fp32(tiny_clip, images, tmp_path):
    full = fit_behavior(behavior_config(tiny_clip, tmp_path / "fp32", images), verbose=False)
    half = fit_behavior(
        behavior_config(tiny_clip, tmp_path / "bf16", images, precision="bf16"), verbose=False
    )
    for key in ("train_loss", "val_loss"):
        a = [r[key] for r in full.log if r[key] is not None]
        b = [r[key] for r in half.log if r[key] is not None]
        assert relative_error(a, b) < 0.05, key
    saved = json.loads((tmp_path / "bf16" / "config.json").read_text())["fit"]
    assert saved["precision"] == "bf16"


def test_fp16_training_resumes_exactly_with_its_loss_scaler(tiny_clip, images, tmp_path):
    config = dict(precision="fp16", cache="disk")
    full = fit_behavior(
        behavior_config(tiny_clip, tmp_path / "full", images, epochs=4, **config), verbose=False
    )
    part = tmp_path / "part"
    fit_behavior(behavior_config(tiny_clip, part, images, epochs=2, **config), verbose=False)
    scaler = json.loads((part / "state.json").read_text())["grad_scaler"]
    assert scaler["scale"] > 1  # fp16 scales the loss (65536 to start)
    resumed = fit_behavior(
        behavior_config(tiny_clip, part, images, epochs=4, **config), resume=True, verbose=False
    )
    assert [r["val_loss"] for r in resumed.log] == [r["val_loss"] for r in full.log]
    for key, value in load_file(tmp_path / "full" / "last.safetensors").items():
        assert torch.equal(load_file(part / "last.safetensors")[key], value), key
    with pytest.raises(InputError, match=r"--precision 'fp16' -> 'bf16'"):
        fit_behavior(
            behavior_config(tiny_clip, part, images, epochs=4, precision="bf16", cache="disk"),
            resume=True,
            verbose=False,
        )


def test_the_prefix_cache_is_keyed_by_precision(tiny_clip, images):
    model = base_model(tiny_clip)
    inputs = concept_inputs(model.backbone, CONCEPTS[:4], InputConfig(images=str(images)))
    tower = model.concept_tower
    keys = {p: prefix_key(tower, 2, inputs, precision=p) for p in ("fp32", "bf16", "fp16")}
    assert len(set(keys.values())) == 3
    assert keys["fp32"] == prefix_key(tower, 2, inputs)  # fp32 caches keep their old keys


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    config = SimulationConfig(n_concepts=40, n_participants=2, tmin_ms=-50, tmax_ms=150, seed=2)
    return simulate_meg(tmp_path_factory.mktemp("sim") / "sim.h5", config, verbose=False)


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
        batch_size=10,
        improvement_confidence=0.0,
        device="cpu",
    )
    return MegFitConfig(**{**settings, **overrides})


def test_meg_training_in_bf16_follows_fp32(tmp_path_factory, store):
    bert = make_tiny_bert(tmp_path_factory.mktemp("bert") / "model")
    out = tmp_path_factory.mktemp("meg")
    full = fit_meg(meg_config(store, bert, out / "fp32"), verbose=False)
    half = fit_meg(meg_config(store, bert, out / "bf16", precision="bf16"), verbose=False)
    a, b = [r["val_loss"] for r in full.log], [r["val_loss"] for r in half.log]
    assert len(a) == len(b) and relative_error(a, b) < 0.05
    assert abs(full.log[-1]["val_r"] - half.log[-1]["val_r"]) < 0.05
    saved = json.loads((out / "bf16" / "state.json").read_text())
    assert saved["grad_scaler"] == {}  # bf16 needs no loss scaling (fp16's: tested above)


def run(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def test_cli_embed_takes_precision_and_refuses_an_unknown_one(tiny_clip, images, tmp_path, capsys):
    base = ["embed", "--model", str(tiny_clip), "--images", str(images), "--quiet"]
    code, out, err = run(capsys, *base, "--out", str(tmp_path / "e.npz"), "--precision", "bf16")
    assert code == 0, err
    assert json.loads(out)["precision"] == "bf16"
    code, out, err = run(capsys, *base, "--out", str(tmp_path / "f.npz"), "--precision", "fp8")
    assert code == 2 and "'fp32', 'bf16', 'fp16'" in err and "Traceback" not in err
    assert "--precision" in err and not (tmp_path / "f.npz").exists()
