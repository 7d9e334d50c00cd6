"""CLIP-HBA-MEG as published: the loss terms, raw layer features, gating, the checkpoint rule,
frozen DoRA magnitudes, the base-tower start, and exact resumes with every option."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clip_hba._validation import InputError
from clip_hba.meg import SimulationConfig, simulate_meg, time_bins
from clip_hba.models import (
    AdapterConfig,
    adapter_state,
    add_adapters,
    load_backbone,
    richness_curve,
)
from clip_hba.rsa import subset_pairs
from clip_hba.testing import make_tiny_bert, make_tiny_clip
from clip_hba.training import (
    BehaviorFitConfig,
    MegFitConfig,
    MegTrainer,
    RunDir,
    fit_behavior,
    fit_meg,
    meg_loss,
    rdm_correlations,
    rsa_gain_confidence,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    config = SimulationConfig(n_concepts=40, n_participants=3, tmin_ms=-50, tmax_ms=250, seed=4)
    return simulate_meg(tmp_path_factory.mktemp("sim") / "sim.h5", config, verbose=False)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "model")


@pytest.fixture(scope="module")
def behavior_run(bert, tmp_path_factory):
    config = BehaviorFitConfig(
        model=str(bert),
        out=str(tmp_path_factory.mktemp("behavior") / "run"),
        adapter=AdapterConfig(rank=2, layers=(-1,)),
        epochs=2,
        max_concepts=20,
        batch_size=8,
    )
    return fit_behavior(config, verbose=False).run_dir


def meg_config(store, model, out, **overrides):
    settings = dict(
        store=str(store),
        model=str(model),
        out=str(out),
        adapter=AdapterConfig(rank=2, alpha=4.0, layers=(), label_layers=()),
        stage0_epochs=3,
        stage1_epochs=2,
        stage0_lr=0.05,
        stage1_lr=1e-2,
        batch_size=10,
        device="cpu",
    )
    return MegFitConfig(**{**settings, **overrides})


# ---------------------------------------------------------------------------- the loss


def pearson(a, b):
    return np.corrcoef(a, b)[0, 1]


def reference_loss(predicted, target, rdm_correlation, tg_term):
    """The terms written out plainly with numpy (NaN target pairs left out)."""
    keep = ~np.isnan(target)
    if rdm_correlation == "flat":
        rdm_term = 1 - pearson(predicted[keep], target[keep])
    else:
        rdm_term = np.mean(
            [1 - pearson(p[k], t[k]) for p, t, k in zip(predicted, target, keep, strict=True)]
        )
    mse = np.mean((predicted[keep] - target[keep]) ** 2)
    complete = keep.all(0)
    model_tg = np.corrcoef(predicted[:, complete])
    target_tg = np.corrcoef(target[:, complete])
    if tg_term == "row-mean":
        tg = 1 - pearson(model_tg.mean(1), target_tg.mean(1))
    else:
        upper = np.triu_indices(len(predicted), k=1)
        tg = 1 - pearson(model_tg[upper], target_tg[upper])
    return {"rdm": rdm_term, "mse": mse, "tg": tg}


@pytest.mark.parametrize("rdm_correlation", ["flat", "per-time"])
@pytest.mark.parametrize("tg_term", ["row-mean", "matrix"])
def test_loss_terms_equal_a_plain_reference(rdm_correlation, tg_term):
    rng = np.random.default_rng(1)
    level = np.linspace(0.2, 1.0, 8)[:, None]  # how distinct the RDMs are changes over time
    target = level * rng.uniform(size=(8, 28))
    predicted = 2 * rng.uniform(size=(8, 28))
    target[2, 5] = target[6, 11] = np.nan
    _, parts = meg_loss(
        torch.tensor(predicted, dtype=torch.float64),
        torch.tensor(target, dtype=torch.float64),
        rdm_correlation=rdm_correlation,
        tg_term=tg_term,
    )
    expected = reference_loss(predicted, target, rdm_correlation, tg_term)
    for name, value in expected.items():
        assert parts[name] == pytest.approx(value, rel=1e-9), name


def test_the_flat_correlation_sees_the_level_over_time_and_per_time_does_not():
    rng = np.random.default_rng(2)
    pattern = rng.uniform(size=28)
    target = torch.tensor(np.linspace(0.1, 1.0, 6)[:, None] * pattern)  # rising level
    flat_level = torch.tensor(np.tile(pattern, (6, 1)))  # the right pattern, a constant level
    per_time, _ = meg_loss(flat_level, target, (1.0, 0.0, 0.0), rdm_correlation="per-time")
    flat, _ = meg_loss(flat_level, target, (1.0, 0.0, 0.0), rdm_correlation="flat")
    assert float(per_time) == pytest.approx(0, abs=1e-9) and float(flat) > 0.05
    np.testing.assert_allclose(rdm_correlations(flat_level, target), np.ones(6), rtol=1e-9)


def test_the_mse_compares_the_unscaled_model_rdm():
    target = torch.full((3, 10), 0.5, dtype=torch.float64)
    _, parts = meg_loss(torch.full((3, 10), 1.5, dtype=torch.float64), target)
    assert parts["mse"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- features, gating


def test_raw_layer_features_skip_the_final_norm(tmp_path):
    backbone = load_backbone(make_tiny_clip(tmp_path / "clip"))
    tower, clip = backbone.concept_tower, backbone.model
    pixels = {"pixel_values": torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    with torch.no_grad():
        raw = tower.layer_features(pixels, normed=False)
        normed = tower.layer_features(pixels, normed=True)
        hidden = clip.vision_model(**pixels, output_hidden_states=True).hidden_states
        by_hand = torch.stack([h[:, 0] @ clip.visual_projection.weight.T for h in hidden[1:]])
        through_norm = torch.stack(
            [clip.visual_projection(clip.vision_model.post_layernorm(h[:, 0])) for h in hidden[1:]]
        )
        pooled = tower(pixels)
    assert raw.shape == (tower.n_blocks, 4, tower.feature_dim)
    np.testing.assert_allclose(raw, by_hand, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(normed, through_norm, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(normed[-1], pooled, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(raw[-1], pooled, atol=1e-3)


def test_the_richness_gate_is_zero_before_onset():
    times = np.arange(-40.0, 200.0, 20.0)
    rng = np.random.default_rng(0)
    level = 50 + np.clip(times, 0, None) / 10
    target = level[:, None] + rng.normal(size=(len(times), 30))
    gate = richness_curve(target, times)
    assert (gate[times < 0] == 0).all() and (gate[times >= 0] > 0).all()
    assert gate.max() == pytest.approx(1.0)
    mean = target.mean(1)
    after = times >= 0
    expected = (mean - mean.min()) / np.ptp(mean)
    np.testing.assert_allclose(gate[after], np.maximum(expected[after], 1e-3), rtol=1e-12)


def test_the_gate_comes_from_the_training_concepts_only(store, bert, tmp_path):
    trainer = MegTrainer(meg_config(store, bert, tmp_path / "run"), verbose=False)
    n_train, n_val = trainer.n_train, trainer.n_val
    train_pairs = subset_pairs(np.arange(n_train), n_train + n_val)
    expected = richness_curve(trainer.target[:, train_pairs].numpy(), trainer.model.times_ms)
    np.testing.assert_allclose(trainer.model.gate.numpy(), expected, rtol=1e-6)
    everything = richness_curve(trainer.target.numpy(), trainer.model.times_ms)
    assert not np.allclose(everything, expected)  # the validation pairs would change it
    with torch.no_grad():
        rdms = trainer.model.rdms(trainer.embeddings(torch.arange(6), noise=False))
    assert not rdms[trainer.model.times_ms < 0].any()  # no structure before onset
    ungated = MegTrainer(
        meg_config(store, bert, tmp_path / "none", meg={"gating": "none"}), verbose=False
    )
    assert (ungated.model.gate == 1).all()


# ---------------------------------------------------------------------------- checkpoints


def test_a_run_that_never_beats_its_start_keeps_it(store, tmp_path):
    one_block = make_tiny_bert(tmp_path / "one", n_layers=1)  # W cannot change: nothing improves
    result = fit_meg(
        meg_config(store, one_block, tmp_path / "run", stage1_epochs=0, patience=2),
        verbose=False,
    )
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["kept_start"] is True
    assert (metrics["best_stage"], metrics["best_epoch"]) == (0, 0)
    assert metrics["best_val_r"] == metrics["initial_val_r"]
    assert metrics["epochs"]["0"] == 2  # patience 2: two epochs without a better one


def test_the_best_epoch_raises_the_rsa_and_does_not_raise_the_loss(store, bert, tmp_path):
    result = fit_meg(meg_config(store, bert, tmp_path / "run"), verbose=False)
    start, log = result.log[0], result.log
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    best = next(
        r for r in log if (r["stage"], r["epoch"]) == (result.best_stage, metrics["best_epoch"])
    )
    assert best["val_r"] >= start["val_r"] and best["val_loss"] <= start["val_loss"]
    # every epoch kept as a new best beat the earlier best on both counts, reliably
    best_r, best_loss = start["val_r"], start["val_loss"]
    for record in log[1:]:
        if record["gain_confidence"] >= 0.95:
            assert record["val_r"] > best_r and record["val_loss"] <= best_loss
            best_r, best_loss = record["val_r"], record["val_loss"]
        elif record["val_r"] <= best_r or record["val_loss"] > best_loss:
            assert record["gain_confidence"] == 0
    assert best["val_r"] == best_r and best["val_loss"] == best_loss
    plain = fit_meg(
        meg_config(store, bert, tmp_path / "plain", improvement_confidence=0.0), verbose=False
    )
    best_r, best_loss = plain.log[0]["val_r"], plain.log[0]["val_loss"]
    for record in plain.log[1:]:  # the reference's rule: any rise counts
        if record["val_r"] > best_r and record["val_loss"] <= best_loss:
            best_r, best_loss = record["val_r"], record["val_loss"]
    assert json.loads((plain.run_dir / "metrics.json").read_text())["best_val_r"] == best_r


def test_the_gain_confidence_is_a_paired_bootstrap():
    rng = np.random.default_rng(0)
    target = torch.tensor(rng.normal(size=(5, 45)))
    times = torch.ones(5, dtype=torch.bool)
    noise = torch.tensor(rng.normal(size=(5, 45)))
    good, bad = target + 0.5 * noise, noise
    assert rsa_gain_confidence(good, bad, target, times, 10) == 1.0
    assert rsa_gain_confidence(bad, good, target, times, 10) == 0.0
    assert rsa_gain_confidence(good, good, target, times, 10) == 0.0  # a tie is no gain
    close = good + 0.05 * torch.tensor(rng.normal(size=(5, 45)))
    share = rsa_gain_confidence(close, good, target, times, 10, seed=1)
    assert 0 < share < 1 and share == rsa_gain_confidence(close, good, target, times, 10, seed=1)


# ---------------------------------------------------------------------------- stage 1, starts


def magnitudes(tensors):
    return {k: v for k, v in tensors.items() if "lora_magnitude_vector" in k}


@pytest.mark.parametrize("freeze", [True, False])
def test_stage_one_freezes_the_dora_magnitudes(store, bert, tmp_path, freeze):
    out = tmp_path / "run"
    fit_meg(meg_config(store, bert, out, stage0_epochs=1, freeze_magnitude=freeze), verbose=False)
    trained = magnitudes(load_file(out / "last.safetensors"))
    resolved = json.loads((out / "config.json").read_text())["fit"]["adapter_resolved"]
    fresh = load_backbone(bert)
    add_adapters(fresh, AdapterConfig(**resolved), seed=0)
    initial = magnitudes({f"adapter.{k}": v for k, v in adapter_state(fresh).items()})
    assert trained and trained.keys() == initial.keys()
    unchanged = all(torch.equal(trained[k], initial[k]) for k in trained)
    assert unchanged is freeze


def test_a_base_start_takes_the_behaviour_labels_and_the_base_tower(
    store, bert, behavior_run, tmp_path
):
    common = dict(init_behavior=str(behavior_run), stage1_epochs=0)
    behavior = MegTrainer(meg_config(store, bert, tmp_path / "b", **common), verbose=False)
    base = MegTrainer(meg_config(store, bert, tmp_path / "a", init="base", **common), verbose=False)
    plain = MegTrainer(meg_config(store, bert, tmp_path / "p", stage1_epochs=0), verbose=False)
    assert torch.equal(base.model.label_features, behavior.model.label_features)
    assert not torch.equal(base.model.label_features, plain.model.label_features)
    assert torch.equal(base.features, plain.features)  # the base model's tower
    assert not torch.allclose(base.features, behavior.features)
    assert base.description["chain"] == [] and base.description["labels_from"] == str(behavior_run)


@pytest.mark.parametrize(
    "options",
    [
        {},  # the defaults: flat r, row-mean TG, raw features, richness gate, frozen magnitudes
        {
            "rdm_correlation": "per-time",
            "tg_term": "matrix",
            "meg": {"layer_features": "normed", "gating": "none"},
            "freeze_magnitude": False,
            "weight_decay": 0.0,
        },
    ],
)
def test_resume_is_exact_with_every_option(store, bert, tmp_path, options):
    full = fit_meg(meg_config(store, bert, tmp_path / "full", **options), verbose=False)
    out = tmp_path / "part"
    part = fit_meg(meg_config(store, bert, out, time_budget_s=0.0, **options), verbose=False)
    for _ in range(len(full.log)):
        if len(part.log) == len(full.log):
            break
        part = fit_meg(
            meg_config(store, bert, out, time_budget_s=0.0, **options), resume=True, verbose=False
        )
    assert [r["val_loss"] for r in part.log] == [r["val_loss"] for r in full.log]
    assert [r["val_r"] for r in part.log] == [r["val_r"] for r in full.log]
    final = load_file(out / "adapter.safetensors")
    for name, tensor in load_file(full.run_dir / "adapter.safetensors").items():
        assert torch.equal(final[name], tensor), name


# ---------------------------------------------------------------------------- refusals


def test_bad_starts_and_settings_are_refused(store, bert, tmp_path):
    with pytest.raises(InputError, match="give --init-behavior"):
        meg_config(store, bert, tmp_path / "a", init="base")
    with pytest.raises(InputError, match="'rdm_correlation'"):
        meg_config(store, bert, tmp_path / "a", rdm_correlation="flatter")
    with pytest.raises(InputError, match="needs timepoints from 0 ms"):
        MegTrainer(meg_config(store, bert, tmp_path / "b", time_window=(-50, -10)), verbose=False)
    group = fit_meg(meg_config(store, bert, tmp_path / "g", stage1_epochs=0), verbose=False)
    with pytest.raises(InputError, match="--layer-features raw"):
        MegTrainer(
            meg_config(
                store, bert, tmp_path / "c", init_meg=str(group.run_dir), participant="sim01",
                meg={"layer_features": "normed"},
            ),
            verbose=False,
        )  # fmt: skip
    with pytest.raises(InputError, match="evenly spaced"):
        time_bins(np.array([0.0, 1, 2, 4, 5, 6]), 2)


def test_a_run_begun_by_an_older_version_is_not_resumed(store, bert, tmp_path):
    out = tmp_path / "run"
    fit_meg(meg_config(store, bert, out, time_budget_s=0.0), verbose=False)
    run = RunDir(out)
    checkpoint = run.load_checkpoint()
    metadata = {k: v for k, v in checkpoint.metadata.items() if k != "best_val_r"}
    run.save_checkpoint(checkpoint.tensors, metadata, checkpoint.log)
    with pytest.raises(Exception, match="older version"):
        fit_meg(meg_config(store, bert, out), resume=True, verbose=False)
