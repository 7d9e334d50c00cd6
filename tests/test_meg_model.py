"""CLIP-HBA-MEG: batched RDMs, layer weights, noise rules, loss, stage-0 cache, resume, CLI."""

import json

import numpy as np
import pytest
import torch

from clip_hba._validation import InputError
from clip_hba.meg import RDMStore, SimulationConfig, simulate_meg
from clip_hba.models import LayerWeights, MegModel, MegModelConfig, load_backbone, noise_curves
from clip_hba.rsa import rdm, subset_pairs
from clip_hba.testing import make_tiny_bert
from clip_hba.training import MegFitConfig, MegTrainer, fit_meg, load_meg_run, meg_loss, meg_split
from test_cli import run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("megfit")
    config = SimulationConfig(n_concepts=40, n_participants=3, tmin_ms=-50, tmax_ms=250, seed=2)
    store = simulate_meg(root / "sim.h5", config, verbose=False)
    return store, make_tiny_bert(root / "bert")


def fit_config(setup, out, **kwargs):
    store, bert = setup
    options = dict(
        store=str(store),
        model=str(bert),
        out=str(out),
        stage0_epochs=3,
        stage1_epochs=2,
        batch_size=10,
        stage0_lr=0.05,
        stage1_lr=1e-3,
        adapter={"rank": 2, "alpha": 4.0, "layers": (), "label_layers": ()},
    )
    options.update(kwargs)
    return MegFitConfig(**options)


def tiny_model(setup, n_times=7, noise=True, gating="richness"):
    backbone = load_backbone(setup[1])
    labels = torch.randn(66, backbone.concept_tower.feature_dim)
    times = np.arange(n_times) * 10.0 - 20
    curves = noise_curves(np.random.default_rng(0).normal(size=(n_times, 45)), times)
    config = MegModelConfig(noise=noise, gating=gating)
    return MegModel(backbone, labels, times, config, curves if gating != "none" else None).eval()


def test_batched_rdms_equal_a_per_timepoint_reference(setup):
    model = tiny_model(setup)
    features = torch.randn(model.n_layers, 9, model.backbone.concept_tower.feature_dim)
    with torch.no_grad():
        model.weights.raw.uniform_(0, 1)
        embeddings = model.embed_features(features)  # (T, 9, 66)
        batched = model.rdms(embeddings).numpy()
        weights = model.weights().numpy()
    gate = model.gate.numpy()
    assert (gate[model.times_ms < 0] == 0).all() and (gate[model.times_ms >= 0] > 0).all()
    for t in range(embeddings.shape[0]):
        mixed = np.einsum("l,lbp->bp", weights[t], features.numpy())
        mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
        labels = model.label_features.numpy()
        expected = np.maximum(gate[t] * 100 * mixed @ labels.T, 0)
        np.testing.assert_allclose(embeddings[t].numpy(), expected, rtol=1e-4, atol=1e-4)
        if gate[t] == 0:  # no structure before onset: zero embeddings, a zero RDM
            assert not batched[t].any()
            continue
        reference = gate[t] * rdm(embeddings[t].numpy())
        np.testing.assert_allclose(batched[t], reference, rtol=1e-4, atol=1e-5)


def test_layer_weights_start_on_the_last_block_and_stay_a_distribution():
    weights = LayerWeights(20, 4, window=3)
    np.testing.assert_array_equal(weights().detach().numpy()[:, -1], np.ones(20))
    with torch.no_grad():
        weights.raw.normal_()
    weights.project()
    w = weights().detach().numpy()
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    spiky = LayerWeights(20, 2, window=2)
    with torch.no_grad():
        spiky.raw.zero_()
        spiky.raw[:, 0] = 1.0
        spiky.raw[10] = torch.tensor([0.0, 1.0])
    smoothed = spiky().detach().numpy()
    assert 0 < smoothed[10, 1] < 1 and smoothed[8, 1] > 0 and smoothed[7, 1] == 0


def test_noise_is_off_at_evaluation_and_never_depends_on_the_batch(setup):
    model = tiny_model(setup)
    features = torch.randn(model.n_layers, 12, model.backbone.concept_tower.feature_dim)
    with torch.no_grad():
        clean_all = model.embed_features(features)
        clean_part = model.embed_features(features[:, :5])
        np.testing.assert_allclose(clean_all[:, :5], clean_part, rtol=1e-5, atol=1e-6)
        assert torch.equal(model.embed_features(features), clean_all)  # deterministic
        noisy = model.embed_features(
            features, noise=True, generator=torch.Generator().manual_seed(0)
        )
        assert not torch.allclose(noisy, clean_all)
        # the noise of a sample scales with that sample only: scaling other samples changes nothing
        other = features.clone()
        other[:, 5:] *= 10
        again = model.embed_features(other, noise=True, generator=torch.Generator().manual_seed(0))
        np.testing.assert_allclose(again[:, :5], noisy[:, :5], rtol=1e-5, atol=1e-5)


def test_dimension_gains_start_neutral_and_scale_their_dimension(setup):
    plain = tiny_model(setup)
    gained = tiny_model(setup)
    gained.config = MegModelConfig(dimension_gains=True)
    gained.load_state_dict(plain.state_dict())
    features = torch.randn(plain.n_layers, 6, plain.backbone.concept_tower.feature_dim)
    with torch.no_grad():
        assert torch.equal(gained.embed_features(features), plain.embed_features(features))
        gained.log_gains[3] = np.log(2.0)
        doubled = gained.embed_features(features)
        reference = plain.embed_features(features)
    np.testing.assert_allclose(doubled[..., 3], 2 * reference[..., 3], rtol=1e-5)
    np.testing.assert_array_equal(
        np.delete(doubled.numpy(), 3, -1), np.delete(reference.numpy(), 3, -1)
    )
    gains = gained.dimension_gains  # relative: geometric mean 1
    assert gains[3] / gains[0] == pytest.approx(2.0) and np.log(gains).mean() == pytest.approx(0)
    assert not plain.log_gains.requires_grad


def test_dimension_gains_are_learned_saved_inherited_and_resumed(setup, tmp_path):
    options = dict(
        meg={"dimension_gains": True}, loss_weights=(1.0, 0.0, 0.0), improvement_confidence=0.0
    )
    full = fit_meg(fit_config(setup, tmp_path / "full", **options), verbose=False)
    gains = load_meg_run(full.run_dir).dimension_gains
    assert np.ptp(gains) > 0  # learned: no longer all 1
    reported = json.loads((full.run_dir / "metrics.json").read_text())["dimension_gains"]
    assert len(reported) == 66
    np.testing.assert_allclose(list(reported.values()), gains, rtol=1e-12)
    out = tmp_path / "part"
    fit_meg(fit_config(setup, out, time_budget_s=0.0, **options), verbose=False)
    for _ in range(len(full.log)):
        part = fit_meg(
            fit_config(setup, out, time_budget_s=0.0, **options), resume=True, verbose=False
        )
    assert [r["val_loss"] for r in part.log] == [r["val_loss"] for r in full.log]
    np.testing.assert_array_equal(load_meg_run(out).dimension_gains, gains)
    with RDMStore(setup[0]) as opened:
        person = opened.participant_ids[1]
    child = MegTrainer(
        fit_config(
            setup, tmp_path / "p", participant=person, init_meg=str(full.run_dir), **options
        ),
        verbose=False,
    )
    np.testing.assert_array_equal(child.model.dimension_gains, gains)  # starts where the group is
    # a run without the option keeps (and uses) the gains of the run it starts from: the same
    # RDMs up to the gate (from its own participant's targets, it scales each timepoint only)
    plain_child = MegTrainer(
        fit_config(setup, tmp_path / "q", participant=person, init_meg=str(full.run_dir)),
        verbose=False,
    )
    assert not plain_child.config.meg.dimension_gains
    tower = plain_child.model.backbone.concept_tower
    features = torch.randn(tower.n_blocks, 5, tower.feature_dim)
    parent = load_meg_run(full.run_dir)
    with torch.no_grad():
        child_rdms = plain_child.model.rdms(plain_child.model.embed_features(features))
        parent_rdms = parent.rdms(parent.embed_features(features))
    after = parent.times_ms >= 0
    child_gate, parent_gate = plain_child.model.gate[after, None], parent.gate[after, None]
    np.testing.assert_allclose(
        child_rdms[after] / child_gate, parent_rdms[after] / parent_gate, rtol=1e-4, atol=1e-5
    )


def test_noise_curves_use_reliability_and_are_full_before_onset():
    times = np.arange(-50.0, 300.0, 10.0)
    rng = np.random.default_rng(0)
    shared = rng.normal(size=200)
    signal = np.clip((times - 50) / 100, 0, 1)[:, None] * shared
    target = signal + rng.normal(size=(len(times), 200))
    curves = noise_curves(target, times, window=0)
    assert (curves.noise[times < 0] == 1).all()  # no reliable signal before 0 ms
    assert curves.noise[times >= 150].mean() < 0.2
    centred = target - target.mean(1, keepdims=True)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    reliability = (unit @ unit.T).mean(1)[times >= 0]
    scaled = (reliability - reliability.min()) / np.ptp(reliability)
    np.testing.assert_allclose(curves.noise[times >= 0], 1 - scaled, atol=1e-9)
    assert (noise_curves(target, times, gating="none").gate == 1).all()


def test_loss_terms_and_nan_pairs():
    rng = np.random.default_rng(0)
    target = torch.tensor(rng.uniform(size=(6, 21)), dtype=torch.float32)
    _, parts = meg_loss(target, target)
    assert parts["rdm"] == pytest.approx(0, abs=1e-5) and parts["mse"] == pytest.approx(0)
    assert parts["tg"] == pytest.approx(0, abs=1e-5)
    with_nan = target.clone()
    with_nan[:, 3] = float("nan")
    total, _ = meg_loss(target * 2 + 0.1, with_nan)
    assert np.isfinite(float(total))
    norms = {"rdm": 2.0, "mse": 4.0, "tg": 8.0}
    scaled, raw = meg_loss(torch.rand(6, 21), target, (1.0, 0.1, 0.15), norms)
    expected = raw["rdm"] / 2 + 0.1 * raw["mse"] / 4 + 0.15 * raw["tg"] / 8
    assert float(scaled) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("weights", [(0.0, 0.0, 0.0), (1.0, float("nan"), 0.0), (1.0, -1.0, 0.0)])
def test_loss_weights_are_checked(setup, tmp_path, weights):
    with pytest.raises(InputError, match="'loss_weights'"):
        fit_config(setup, tmp_path / "run", loss_weights=weights)


def test_split_holds_out_rdm48_concepts_first():
    from clip_hba.data import load_concepts, load_rdm48

    rdm48 = list(load_rdm48().concept_ids)
    ids = [c for c in load_concepts().ids[:200] if c not in rdm48] + rdm48[:5]
    split = meg_split(ids, seed=0, val_fraction=0.2, test_fraction=0.1)
    assert set(rdm48[:5]) <= set(split.test_ids)
    assert len(split.test_ids) == round(0.1 * len(ids))
    assert not set(split.train_ids) & set(split.val_ids) | set(split.test_ids) & set(
        split.train_ids
    )
    assert meg_split(ids, 0, 0.2, 0.1) == split


def test_held_out_concepts_never_shape_training(setup, tmp_path):
    config = fit_config(setup, tmp_path / "run")
    built = MegTrainer(config, verbose=False)
    test_ids = set(built.description["split"]["test"])
    n_fit = built.n_train + built.n_val
    assert built.target.shape[1] == n_fit * (n_fit - 1) // 2
    assert not test_ids & set(built.inputs.concept_ids[:n_fit])
    # the rescaling comes from training pairs only: training targets span exactly [0, 1]
    train = built.target[:, subset_pairs(np.arange(built.n_train), n_fit)]
    assert float(np.nanmin(train)) == pytest.approx(0) and float(np.nanmax(train)) == pytest.approx(
        1
    )


def test_stage0_cache_gives_the_uncached_losses(setup, tmp_path):
    config = fit_config(setup, tmp_path / "run")
    cached = MegTrainer(config, verbose=False)
    uncached = MegTrainer(config, verbose=False)
    uncached.features = None  # every step runs the backbone
    for built in (cached, uncached):
        built.norms = {"rdm": 1.0, "mse": 1.0, "tg": 1.0}
        built.optimizer = built.optimizer_for(0)
    a = cached.train_epoch()
    b = uncached.train_epoch()
    assert a == pytest.approx(b, rel=1e-5)
    # Adam normalises the tiny float32 differences of the two paths' gradients: 1e-4 apart
    np.testing.assert_allclose(
        cached.model.weights.raw.detach(), uncached.model.weights.raw.detach(), atol=1e-4
    )


def test_fit_is_deterministic_and_resumes_exactly(setup, tmp_path):
    full = fit_meg(fit_config(setup, tmp_path / "full"), verbose=False)
    again = fit_meg(fit_config(setup, tmp_path / "again"), verbose=False)
    assert [r["val_loss"] for r in full.log] == [r["val_loss"] for r in again.log]
    # interrupted after every epoch (time budget 0), through both stages
    out = tmp_path / "part"
    part = fit_meg(fit_config(setup, out, time_budget_s=0.0), verbose=False)
    assert len(part.log) == 2
    # a run begun before a setting existed still resumes (the setting takes its default)
    saved = json.loads((out / "config.json").read_text())
    del saved["fit"]["meg"]["dimension_gains"]
    (out / "config.json").write_text(json.dumps(saved))
    for _ in range(len(full.log)):
        part = fit_meg(fit_config(setup, out, time_budget_s=0.0), resume=True, verbose=False)
    assert [r["val_loss"] for r in part.log] == [r["val_loss"] for r in full.log]
    assert {r["stage"] for r in part.log} == {0, 1}
    with pytest.raises(InputError, match="already holds a run"):
        fit_meg(fit_config(setup, tmp_path / "full"), verbose=False)
    with pytest.raises(InputError, match="--batch-size 10 -> 12"):
        fit_meg(fit_config(setup, tmp_path / "full", batch_size=12), resume=True, verbose=False)


def test_run_directory_and_embed(setup, tmp_path, capsys):
    result = fit_meg(fit_config(setup, tmp_path / "run"), verbose=False)
    run_dir = result.run_dir
    for record in result.log:  # the weighted terms add up to the loss; the raw ones need not
        assert sum(record["val_terms"].values()) == pytest.approx(record["val_loss"], rel=1e-5)
        assert set(record["val_parts"]) == set(record["val_terms"]) == {"rdm", "mse", "tg"}
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["task"] == "meg" and len(saved["times_ms"]) == 61
    assert {"train", "val", "test"} == set(saved["split"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_val_loss"] <= metrics["initial_val_loss"]
    code, out, _ = run(
        capsys,
        "embed",
        "--model",
        str(run_dir),
        "--out",
        str(tmp_path / "e.npz"),
        "--rdm",
        "--batch-size",
        "3",
    )
    assert code == 0, out
    with np.load(tmp_path / "e.npz") as archive:
        assert archive["embedding"].shape[0] == 61 and archive["embedding"].shape[2] == 66
        assert archive["rdm"].shape[0] == 61
        np.testing.assert_array_equal(archive["times_ms"], saved["times_ms"])
        first = archive["embedding"]
    run(
        capsys,
        "embed",
        "--model",
        str(run_dir),
        "--out",
        str(tmp_path / "f.npz"),
        "--batch-size",
        "50",
    )
    with np.load(tmp_path / "f.npz") as archive:
        np.testing.assert_allclose(archive["embedding"], first, rtol=1e-5, atol=1e-5)


def test_individual_models_and_specificity(setup, tmp_path, capsys):
    store, bert = setup
    code, out, _ = run(
        capsys,
        "fit",
        "meg",
        "--store",
        str(store),
        "--model",
        str(bert),
        "--out",
        str(tmp_path / "group"),
        "--stage0-epochs",
        "2",
        "--stage1-epochs",
        "1",
        "--batch-size",
        "10",
        "--rank",
        "2",
        "--quiet",
    )
    assert code == 0, out
    code, out, _ = run(
        capsys,
        "fit",
        "individual",
        "--store",
        str(store),
        "--model",
        str(bert),
        "--participant",
        "all",
        "--group-run",
        str(tmp_path / "group"),
        "--out",
        str(tmp_path / "people"),
        "--stage0-epochs",
        "2",
        "--stage1-epochs",
        "1",
        "--batch-size",
        "10",
        "--rank",
        "2",
        "--dimension-gains",
        "--loss-weights",
        "1,0,0",
        "--quiet",
    )
    assert code == 0, out
    assert set(json.loads(out)) == {"sim01", "sim02", "sim03"}
    saved = json.loads((tmp_path / "people" / "sim01" / "config.json").read_text())["fit"]
    assert saved["meg"]["dimension_gains"] and saved["loss_weights"] == [1.0, 0.0, 0.0]
    code, out, _ = run(
        capsys,
        "evaluate",
        "meg",
        "--model",
        str(tmp_path / "people"),
        "--store",
        str(store),
        "--out",
        str(tmp_path / "spec"),
        "--window",
        "0,250",
    )
    assert code == 0, out
    summary = json.loads(out)
    assert np.array(summary["matrix"]).shape == (3, 3)
    assert 1 / 6 <= summary["p_value"] <= 1  # exact test over 3! label orders
    assert (tmp_path / "spec" / "specificity.png").is_file()
    code, out, _ = run(
        capsys,
        "evaluate",
        "meg",
        "--model",
        str(tmp_path / "group"),
        "--store",
        str(store),
        "--out",
        str(tmp_path / "eval"),
        "--permutations",
        "20",
        "--quiet",
    )
    assert code == 0, out
    evaluation = json.loads(out)
    assert {"meg_model", "base"} <= set(evaluation["curves"])
    assert evaluation["held_out_concepts"] == 8
    assert "auc_gain" in evaluation["meg_vs_base"]
    assert (tmp_path / "eval" / "layer_weights.png").is_file()


def test_specificity_statistics():
    from clip_hba.evaluation import difference, permuted_differences

    matrix = np.array([[0.3, 0.1, 0.1], [0.1, 0.3, 0.1], [0.1, 0.1, 0.3]])
    assert difference(matrix) == pytest.approx(0.2)
    null = permuted_differences(matrix, 100, 0)
    assert len(null) == 5  # 3! orders minus the observed one
    assert (null < 0.2).all()


def test_rsa_curves_use_held_out_concepts_only(setup, tmp_path):
    from clip_hba.pipelines import evaluate_meg_run

    result = fit_meg(fit_config(setup, tmp_path / "run", stage1_epochs=0), verbose=False)
    saved = json.loads((result.run_dir / "config.json").read_text())
    summary = evaluate_meg_run(
        result.run_dir, setup[0], tmp_path / "eval", n_permutations=0, verbose=False
    )
    assert summary["n_concepts"] == len(saved["split"]["test"])
    with RDMStore(setup[0]) as store:
        assert set(saved["split"]["test"]) <= set(store.concept_ids)


def test_individual_run_must_hold_out_what_its_group_run_held_out(setup, tmp_path):
    group = fit_meg(fit_config(setup, tmp_path / "group", stage1_epochs=0), verbose=False)
    store = setup[0]
    with RDMStore(store) as opened:
        person = opened.participant_ids[0]
    with pytest.raises(InputError, match="holds out other concepts"):
        fit_meg(
            fit_config(
                setup, tmp_path / "p", participant=person, init_meg=str(group.run_dir), seed=1
            ),
            verbose=False,
        )
