"""CLIP-HBA-Behavior on THINGS-like folders: exemplars, all images, augmentation, corruptions,
the geometry term, and exact resume with them."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr

from clip_hba._validation import InputError
from clip_hba.data import (
    CORRUPTIONS,
    ImagePixels,
    corrupt_image,
    find_images,
    parse_severities,
    read_embedding,
    split_concepts,
)
from clip_hba.models import InputConfig
from clip_hba.testing import make_things_images, make_tiny_clip
from clip_hba.training import BehaviorFitConfig, BehaviorTrainer, fit_behavior
from clip_hba.training.losses import rdm_loss
from test_behavior import fit_config as behavior_fit_config

SPLIT = split_concepts(seed=0)
TRAIN, VAL = list(SPLIT.train_ids[:16]), list(SPLIT.val_ids[:4])
CONCEPTS = TRAIN + VAL + list(SPLIT.test_ids)
# THINGS-like: most concepts _01b, some only _01s/_02s (the 192 without _01b), one only _02s
NO_01B = {TRAIN[0]: ("_01s", "_02s"), TRAIN[1]: ("_02s",), VAL[0]: ("_01s", "_03s")}
EXEMPLARS = {c: NO_01B.get(c, ("_01b", "_02s", "_03n")) for c in CONCEPTS}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "model")


@pytest.fixture(scope="module")
def things(tmp_path_factory):
    root = make_things_images(tmp_path_factory.mktemp("things"), CONCEPTS, exemplars=EXEMPLARS)
    # macOS metadata files sort first and are not images: never an exemplar
    (root / "object_images" / TRAIN[2] / f"._{TRAIN[2]}_01b.jpg").write_bytes(b"\0\5\26")
    return root


def fit_config(model, out, images, **overrides):
    """The tiny runs of test_behavior.py, for 2 epochs."""
    return behavior_fit_config(model, out, images, **{"epochs": 2, **overrides})


# ---------------------------------------------------------------------------- exemplars


def test_first_exemplar_takes_01b_else_the_first_file(things):
    found = find_images(things, [TRAIN[0], TRAIN[1], TRAIN[2]])
    assert found.image_ids == (f"{TRAIN[0]}_01s.jpg", f"{TRAIN[1]}_02s.jpg", f"{TRAIN[2]}_01b.jpg")
    # an explicit suffix lists the concepts that lack it
    with pytest.raises(InputError, match=r"No image for 2 of 3 concepts.*--skip-missing"):
        find_images(things, [TRAIN[0], TRAIN[1], TRAIN[2]], exemplar="_01b")
    kept = find_images(things, [TRAIN[0], TRAIN[1], TRAIN[2]], exemplar="_01b", skip_missing=True)
    assert kept.concept_ids == (TRAIN[2],)
    with pytest.raises(InputError, match="'exemplar'.*'first', 'all'"):
        find_images(things, exemplar="")


def test_all_exemplars_are_consecutive_per_concept(things):
    found = find_images(things, [TRAIN[2], TRAIN[1]], exemplar="all")
    assert found.concept_ids == (TRAIN[2],) * 3 + (TRAIN[1],)
    assert found.image_ids[:3] == tuple(f"{TRAIN[2]}{s}.jpg" for s in ("_01b", "_02s", "_03n"))


def test_run_records_each_concepts_exemplar(tiny_clip, things, tmp_path):
    fit_behavior(fit_config(tiny_clip, tmp_path / "run", things, epochs=1), verbose=False)
    description = json.loads((tmp_path / "run" / "config.json").read_text())
    assert description["fit"]["inputs"]["exemplar"] == "first"
    assert description["concept_images"][TRAIN[1]] == [f"{TRAIN[1]}_02s.jpg"]
    assert description["concept_images"][TRAIN[2]] == [f"{TRAIN[2]}_01b.jpg"]
    predictions = read_embedding(tmp_path / "run" / "predictions_after.npz")
    assert len(predictions.concept_ids) == description["n_concepts_with_inputs"]
    assert description["n_inputs"] == description["n_concepts_with_inputs"]


def test_all_exemplars_train_on_images_and_evaluate_concept_means(tiny_clip, things, tmp_path):
    config = fit_config(tiny_clip, tmp_path / "all", things)
    config.inputs.exemplar = "all"
    trainer = BehaviorTrainer(config, verbose=False)
    inputs = trainer.inputs
    assert len(inputs) > len(inputs.concepts)  # several images per concept
    sides = {
        split: {inputs.concept_ids[k] for k in rows.tolist()}
        for split, rows in trainer.rows.items()
    }
    assert not sides["train"] & sides["val"] and not sides["train"] & sides["test"]
    assert not sides["val"] & sides["test"]
    # every image of a training concept is a training sample, with its concept's target
    assert len(trainer.rows["train"]) == sum(len(EXEMPLARS[c]) for c in sides["train"])
    first, second = inputs.rows([TRAIN[2]])[:2]
    torch.testing.assert_close(trainer.target[first], trainer.target[second])
    # evaluation: the mean prediction over a concept's images
    ids, means = trainer.concept_predictions("val")
    per_image = trainer.predict_all(trainer.rows["val"])
    rows = trainer.rows["val"].tolist()
    for concept, mean in zip(ids, means, strict=True):
        mine = [k for k, row in enumerate(rows) if inputs.concept_ids[row] == concept]
        torch.testing.assert_close(mean, per_image[mine].mean(0))
    trainer.close()


def test_embed_all_means_and_per_image(tiny_clip, things, tmp_path):
    from clip_hba.pipelines import embed_run

    base = {"images": things, "allow_random_init": False}
    embed_run(tiny_clip, tmp_path / "mean.npz", exemplar="all", **base)
    summary = embed_run(tiny_clip, tmp_path / "each.csv", exemplar="all", per_image=True, **base)
    assert summary["n_items"] == sum(len(v) for v in EXEMPLARS.values())
    assert summary["n_concepts"] == len(CONCEPTS)
    means = np.load(tmp_path / "mean.npz")
    rows = np.genfromtxt(tmp_path / "each.csv", delimiter=",", dtype=str, skip_header=1)
    concept = TRAIN[2]
    mine = rows[rows[:, 0] == concept]
    assert list(mine[:, 1]) == [f"{concept}{s}.jpg" for s in EXEMPLARS[concept]]
    k = list(means["concept_ids"]).index(concept)
    np.testing.assert_allclose(means["embedding"][k], mine[:, 2:].astype(float).mean(0), rtol=1e-6)
    assert means["image_ids"][k] == ";".join(mine[:, 1])
    with pytest.raises(InputError, match="--per-image"):
        embed_run(tiny_clip, tmp_path / "x.npz", per_image=True, layers=True, **base)


# ---------------------------------------------------------------------------- augmentation


def test_augmentation_is_seeded_per_image_and_epoch(things):
    paths = find_images(things, CONCEPTS[:6]).paths
    pixels = ImagePixels(paths, size=32)
    augmented = pixels.augmented(seed=0, epoch=1)
    batch = augmented[torch.tensor([0, 3, 5])]
    torch.testing.assert_close(augmented[torch.tensor([3])][0], batch[1])  # any batch order
    torch.testing.assert_close(pixels.augmented(seed=0, epoch=1)[[0, 3, 5]], batch)
    assert not torch.equal(pixels.augmented(seed=0, epoch=2)[[0, 3, 5]], batch)
    assert not torch.equal(pixels.augmented(seed=1, epoch=1)[[0, 3, 5]], batch)
    assert not torch.equal(pixels[[0, 3, 5]], batch)
    assert batch.shape == (3, 3, 32, 32)


def test_augmentation_trains_but_never_evaluates(tiny_clip, things, tmp_path):
    plain = fit_behavior(fit_config(tiny_clip, tmp_path / "plain", things), verbose=False)
    augmented = fit_behavior(
        fit_config(tiny_clip, tmp_path / "aug", things, augment="standard"), verbose=False
    )
    # the same model before training: evaluation sees the images as they are
    assert augmented.log[0] == plain.log[0]
    assert augmented.log[1]["train_loss"] != plain.log[1]["train_loss"]
    description = json.loads((tmp_path / "aug" / "config.json").read_text())
    assert description["fit"]["augment"] == "standard"


def test_augmentation_needs_images(tmp_path):
    from clip_hba.testing import make_tiny_bert

    bert = make_tiny_bert(tmp_path / "bert")
    config = BehaviorFitConfig(model=str(bert), out=str(tmp_path / "r"), augment="standard")
    with pytest.raises(InputError, match="augment 'standard' transforms images"):
        BehaviorTrainer(config, verbose=False)
    with pytest.raises(InputError, match="'augment'"):
        BehaviorFitConfig(model="m", out="o", augment="heavy")


# ---------------------------------------------------------------------------- corruptions


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_each_corruption_changes_the_image_and_keeps_its_size(corruption):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    original = np.asarray(image, dtype=float)
    for severity in (1, 3, 5):
        corrupted = corrupt_image(image, corruption, severity)
        assert corrupted.size == image.size and corrupted.mode == "RGB"
        assert np.abs(np.asarray(corrupted, dtype=float) - original).mean() > 1.0
    # deterministic
    np.testing.assert_array_equal(
        np.asarray(corrupt_image(image, corruption, 3)),
        np.asarray(corrupt_image(image, corruption, 3)),
    )


def test_corruption_and_severity_values_are_checked():
    image = Image.new("RGB", (8, 8))
    with pytest.raises(InputError, match="'corruption'"):
        corrupt_image(image, "fog", 1)
    from clip_hba.data import parse_corruptions

    assert parse_corruptions("blur, jpeg") == ("blur", "jpeg")
    with pytest.raises(InputError, match="'corruptions'"):
        parse_corruptions("blur,blur")
    with pytest.raises(InputError, match="'severity'"):
        corrupt_image(image, "blur", 6)
    assert parse_severities("1-5") == (1, 2, 3, 4, 5)
    assert parse_severities("2,4") == (2, 4)
    for bad in ("0-3", "x", "6", "2,2"):
        with pytest.raises(InputError, match="'severity'"):
            parse_severities(bad)


def test_evaluate_corruptions(tiny_clip, things, tmp_path):
    from clip_hba.pipelines import evaluate_corruptions

    fit_behavior(fit_config(tiny_clip, tmp_path / "run", things, epochs=1), verbose=False)
    result = evaluate_corruptions(
        tmp_path / "run",
        corruptions=["blur", "jpeg"],
        severities=[1, 5],
        images=things,
        n_bootstrap=20,
        plot=tmp_path / "robust.png",
        verbose=False,
    )
    assert set(result["corruptions"]) == {"blur", "jpeg"}
    assert [r["severity"] for r in result["corruptions"]["blur"]] == [1, 5]
    assert result["n_concepts"] == len(CONCEPTS)
    from clip_hba.evaluation import evaluate_behavior
    from clip_hba.pipelines import embed_run

    embed_run(tmp_path / "run", tmp_path / "clean.npz", images=things)
    clean = read_embedding(tmp_path / "clean.npz")

    expected = evaluate_behavior(clean, n_bootstrap=20).rdm48_spearman
    assert result["clean"]["rdm48_spearman"] == pytest.approx(expected, rel=1e-6)
    assert result["corruptions"]["blur"][1]["rdm48_spearman"] != result["clean"]["rdm48_spearman"]
    assert (tmp_path / "robust.png").stat().st_size > 0


# ---------------------------------------------------------------------------- geometry term


def test_rdm_loss_matches_a_straightforward_reference():
    rng = np.random.default_rng(0)
    predicted, target = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    expected = 1 - pearsonr(pdist(predicted, "correlation"), pdist(target, "correlation"))[0]
    value = rdm_loss(torch.tensor(predicted), torch.tensor(target))
    assert float(value) == pytest.approx(expected, rel=1e-10)
    tensor = torch.tensor(predicted, requires_grad=True)
    rdm_loss(tensor, torch.tensor(target)).backward()
    assert torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0
    assert float(rdm_loss(torch.tensor(target), torch.tensor(target))) == pytest.approx(
        0, abs=1e-12
    )
    assert float(rdm_loss(torch.zeros(2, 5), torch.ones(2, 5))) == 0.0


def test_zero_geometry_weight_is_the_mse_alone(tiny_clip, things, tmp_path):
    mse = fit_behavior(fit_config(tiny_clip, tmp_path / "mse", things), verbose=False)
    for record in mse.log[1:]:
        assert record["train_loss"] == record["train_mse"]
        assert record["val_loss"] == record["val_mse"]
        assert record["train_rdm"] > 0 and record["val_rdm"] > 0
    weighted = fit_behavior(
        fit_config(tiny_clip, tmp_path / "geo", things, rdm_loss_weight=50.0), verbose=False
    )
    first = weighted.log[1]
    assert first["train_loss"] == pytest.approx(first["train_mse"] + 50.0 * first["train_rdm"])
    assert first["val_loss"] == pytest.approx(first["val_mse"] + 50.0 * first["val_rdm"])
    assert first["train_mse"] != mse.log[1]["train_mse"]  # the term changes training
    assert weighted.log[0]["val_mse"] == mse.log[0]["val_mse"]
    with pytest.raises(InputError, match="'rdm_loss_weight'"):
        fit_config(tiny_clip, tmp_path / "bad", things, rdm_loss_weight=-1.0)


# ---------------------------------------------------------------------------- resume


def test_resume_is_exact_with_all_images_augmentation_and_geometry(tiny_clip, things, tmp_path):
    options = dict(augment="standard", rdm_loss_weight=20.0, train_dropout=True)

    def config(name, epochs):
        settings = fit_config(tiny_clip, tmp_path / name, things, epochs=epochs, **options)
        settings.inputs.exemplar = "all"
        return settings

    full = fit_behavior(config("full", 3), verbose=False)
    fit_behavior(config("split", 1), verbose=False)
    resumed = fit_behavior(config("split", 3), resume=True, verbose=False)
    assert resumed.log == full.log
    for key, value in load_file(tmp_path / "full" / "last.safetensors").items():
        torch.testing.assert_close(load_file(tmp_path / "split" / "last.safetensors")[key], value)


def test_review_edges_small_runs_cache_rows_and_noise(tiny_clip, things, tmp_path):
    # one validation concept: no RDM rho to show, and no crash
    tiny = fit_behavior(fit_config(tiny_clip, tmp_path / "tiny", things, max_concepts=4, epochs=1))
    assert tiny.log[1]["val_rdm_spearman"] is None
    # augmented runs cache only the rows they evaluate; small image sets are plain tensors
    config = fit_config(tiny_clip, tmp_path / "aug", things, augment="standard")
    trainer = BehaviorTrainer(config, verbose=False)
    assert isinstance(trainer.inputs.tensors["pixel_values"], torch.Tensor)
    assert len(trainer.cache) == len(trainer.rows["val"]) + len(trainer.rows["test"])
    assert trainer.cache.covers(trainer.rows["val"])
    assert not trainer.cache.covers(trainer.rows["train"])
    trainer.close()
    # noise is drawn per image: two copies of an image get different noise
    image = Image.new("RGB", (16, 16), (128, 128, 128))
    first, second = (np.asarray(corrupt_image(image, "noise", 2, seed=s)) for s in (0, 1))
    assert not np.array_equal(first, second)
    with pytest.raises(InputError, match="'exemplar'"):
        InputConfig(exemplar="a/b")
    with pytest.raises(InputError, match="'seed'"):
        fit_config(tiny_clip, tmp_path / "x", things, seed=-1)
