"""CLIP-HBA-Behavior: towers, adapters, frozen-prefix cache, training, resume, inference."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clip_hba._validation import InputError
from clip_hba.data import load_spose_labels, read_embedding, save_embedding, split_concepts
from clip_hba.models import (
    AdapterConfig,
    BehaviorModel,
    HeadConfig,
    InputConfig,
    add_adapters,
    concept_inputs,
    embed,
    first_trainable_block,
    load_backbone,
)
from clip_hba.testing import make_things_images, make_tiny_bert, make_tiny_clip
from clip_hba.training import (
    BehaviorFitConfig,
    BehaviorTrainer,
    PrefixCache,
    fit_behavior,
    load_run,
)

SPLIT = split_concepts(seed=0)
TRAIN, VAL = list(SPLIT.train_ids[:16]), list(SPLIT.val_ids[:4])
CONCEPTS = TRAIN + VAL + list(SPLIT.test_ids)
OTHER_SPLIT = split_concepts(seed=1)  # the concepts a seed-1 run with max_concepts=20 uses
OTHER = [c for c in [*OTHER_SPLIT.train_ids[:16], *OTHER_SPLIT.val_ids[:4]] if c not in CONCEPTS]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "model")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "model")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_things_images(tmp_path_factory.mktemp("images"), CONCEPTS + OTHER)


def fit_config(model, out, images=None, **overrides):
    settings = dict(
        model=str(model),
        out=str(out),
        inputs=InputConfig(images=None if images is None else str(images)),
        adapter=AdapterConfig(rank=4, alpha=2.0),
        epochs=3,
        batch_size=8,
        lr=1e-2,
        max_concepts=20,
    )
    settings.update(overrides)
    return BehaviorFitConfig(**settings)


def losses(log):
    return np.array([[r["train_loss"] or 0.0, r["val_loss"], r["rdm48_spearman"]] for r in log])


# ---------------------------------------------------------------------------- towers


def test_towers_reproduce_hugging_face_outputs(tiny_clip):
    backbone = load_backbone(tiny_clip)
    model = backbone.model
    pixels = torch.randn(3, 3, 32, 32)
    tokens = backbone.tokenize(["metallic/artificial", "food-related", "x"])
    with torch.no_grad():
        image_ref = model.get_image_features(pixel_values=pixels)
        text_ref = model.get_text_features(**tokens)
        image_ref = getattr(image_ref, "pooler_output", image_ref)
        text_ref = getattr(text_ref, "pooler_output", text_ref)
        vision, text = backbone.concept_tower, backbone.label_tower
        torch.testing.assert_close(vision({"pixel_values": pixels}), image_ref)
        torch.testing.assert_close(text(tokens), text_ref)
        for block in range(vision.n_blocks + 1):  # cached prefix + last block at one token only
            hidden = vision.hidden_at({"pixel_values": pixels}, block)
            torch.testing.assert_close(
                vision.features_from(hidden, {}, block), image_ref, atol=1e-5, rtol=0
            )
        for block in range(text.n_blocks + 1):
            hidden = text.hidden_at(tokens, block)
            torch.testing.assert_close(
                text.features_from(hidden, tokens, block), text_ref, atol=1e-5, rtol=0
            )


def test_bert_tower_mean_pools_real_tokens(tiny_bert):
    backbone = load_backbone(tiny_bert)
    tokens = backbone.tokenize(["a cat", "a much longer text about dogs"])
    with torch.no_grad():
        states = backbone.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"][..., None].float()
        expected = (states * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(backbone.concept_tower(tokens), expected)
        hidden = backbone.concept_tower.hidden_at(tokens, 2)
        torch.testing.assert_close(
            backbone.concept_tower.features_from(hidden, tokens, 2), expected
        )
    assert backbone.shared_towers


# ---------------------------------------------------------------------------- adapters


def test_model_equals_base_model_at_step_zero(tiny_clip):
    pixels = torch.randn(4, 3, 32, 32)
    base = BehaviorModel(load_backbone(tiny_clip), load_spose_labels(), HeadConfig())
    expected = base.predict({"pixel_values": pixels})
    adapted = BehaviorModel(load_backbone(tiny_clip), load_spose_labels(), HeadConfig())
    names = add_adapters(adapted.backbone, AdapterConfig(rank=8), seed=3)
    assert names == [
        "vision_model.encoder.layers.1.self_attn.out_proj",
        "vision_model.encoder.layers.2.self_attn.out_proj",
        "text_model.encoder.layers.1.self_attn.out_proj",
    ]
    # equal up to float rounding of the DoRA weight norm (outputs are 100 x cosine)
    np.testing.assert_allclose(adapted.predict({"pixel_values": pixels}), expected, atol=1e-4)
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert first_trainable_block(adapted.concept_tower) == 1


def test_adapter_placement_errors(tiny_clip):
    backbone = load_backbone(tiny_clip)
    with pytest.raises(InputError, match="'layers'.*blocks 1..3.*\\[5\\]"):
        add_adapters(backbone, AdapterConfig(layers=(5,)))
    with pytest.raises(InputError, match="'layers'.*blocks 1..3.*\\[0\\]"):
        add_adapters(backbone, AdapterConfig(layers=(0,)))
    with pytest.raises(InputError, match="No module named.*self_attn.proj"):
        add_adapters(backbone, AdapterConfig(modules=("self_attn.proj",)))
    with pytest.raises(InputError, match="'rank'"):
        AdapterConfig(rank=0)


def test_linear_head_and_missing_text_tower(tiny_clip, tiny_bert):
    model = BehaviorModel(load_backbone(tiny_clip), load_spose_labels(), HeadConfig(kind="linear"))
    assert model.predict({"pixel_values": torch.randn(2, 3, 32, 32)}).shape == (2, 66)
    with pytest.raises(InputError, match="must contain"):
        HeadConfig(template="a photo")


# ---------------------------------------------------------------------------- training


def test_cached_training_matches_uncached(tiny_clip, images, tmp_path):
    runs = {
        mode: fit_behavior(
            fit_config(tiny_clip, tmp_path / mode, images, cache=mode), verbose=False
        )
        for mode in ("off", "memory", "disk")
    }
    reference = losses(runs["off"].log)
    assert reference[-1, 1] < reference[0, 1]  # it learns
    for mode in ("memory", "disk"):
        np.testing.assert_allclose(losses(runs[mode].log), reference, atol=1e-5, rtol=1e-5)
    assert list((tmp_path / "disk" / "cache").glob("prefix-*.h5"))


def test_prefix_cache_key_follows_model_and_images(tiny_clip, images, tmp_path):
    backbone = load_backbone(tiny_clip)
    inputs = concept_inputs(backbone, TRAIN[:4], InputConfig(images=str(images)))
    key = PrefixCache.build(backbone.concept_tower, 2, inputs, verbose=False).key
    assert PrefixCache.build(backbone.concept_tower, 2, inputs, verbose=False).key == key
    assert PrefixCache.build(backbone.concept_tower, 1, inputs, verbose=False).key != key
    changed = tmp_path / "images"
    make_things_images(changed, TRAIN[:4], seed=1)
    other = concept_inputs(backbone, TRAIN[:4], InputConfig(images=str(changed)))
    assert PrefixCache.build(backbone.concept_tower, 2, other, verbose=False).key != key
    with torch.no_grad():
        backbone.concept_tower.blocks[0].mlp.fc1.weight.add_(0.01)
    assert PrefixCache.build(backbone.concept_tower, 2, inputs, verbose=False).key != key


def test_training_is_deterministic(tiny_clip, images, tmp_path):
    first = fit_behavior(fit_config(tiny_clip, tmp_path / "a", images), verbose=False)
    second = fit_behavior(fit_config(tiny_clip, tmp_path / "b", images), verbose=False)
    np.testing.assert_array_equal(losses(first.log), losses(second.log))
    weights_a = load_file(tmp_path / "a" / "adapter.safetensors")
    weights_b = load_file(tmp_path / "b" / "adapter.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        torch.testing.assert_close(weights_a[key], weights_b[key], atol=0, rtol=0)
    other = fit_behavior(fit_config(tiny_clip, tmp_path / "c", images, seed=1), verbose=False)
    assert not np.array_equal(losses(other.log), losses(first.log))


def test_run_directory_holds_only_trained_weights(tiny_clip, images, tmp_path):
    result = fit_behavior(fit_config(tiny_clip, tmp_path / "run", images), verbose=False)
    run = tmp_path / "run"
    weights = load_file(run / "adapter.safetensors")
    assert weights and all(k.startswith("adapter.") and "lora_" in k for k in weights)
    config = json.loads((run / "config.json").read_text())
    assert config["base_model"] == str(tiny_clip) and config["fit"]["seed"] == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"before", "after"} <= metrics.keys() and metrics["best_epoch"] == result.best_epoch
    for key in ("rdm48_spearman", "odd_one_out_accuracy", "n_concepts"):
        assert key in metrics["after"]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2, 3]
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*"))
    # the saved best model reproduces the predictions written at the end of training
    reloaded = load_run(run).model
    inputs = concept_inputs(reloaded.backbone, CONCEPTS, InputConfig(images=str(images)))
    saved = read_embedding(run / "predictions_after.npz")
    np.testing.assert_allclose(embed(reloaded, inputs).values, saved.values, atol=1e-4)


def test_resume_after_interruption_matches_uninterrupted(tiny_clip, images, tmp_path, monkeypatch):
    full = fit_behavior(fit_config(tiny_clip, tmp_path / "full", images, epochs=4), verbose=False)
    # stopped cleanly after 2 epochs, then resumed with the full budget
    fit_behavior(fit_config(tiny_clip, tmp_path / "split", images, epochs=2), verbose=False)
    resumed = fit_behavior(
        fit_config(tiny_clip, tmp_path / "split", images, epochs=4), resume=True, verbose=False
    )
    np.testing.assert_array_equal(losses(resumed.log), losses(full.log))
    # killed in the middle of epoch 3
    calls = {"n": 0}
    original = BehaviorTrainer.epoch

    def crash_in_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(BehaviorTrainer, "epoch", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit_behavior(fit_config(tiny_clip, tmp_path / "killed", images, epochs=4), verbose=False)
    monkeypatch.setattr(BehaviorTrainer, "epoch", original)
    assert json.loads((tmp_path / "killed" / "state.json").read_text())["epoch"] == 2
    resumed = fit_behavior(
        fit_config(tiny_clip, tmp_path / "killed", images, epochs=4), resume=True, verbose=False
    )
    np.testing.assert_array_equal(losses(resumed.log), losses(full.log))
    for key, value in load_file(tmp_path / "full" / "last.safetensors").items():
        torch.testing.assert_close(load_file(tmp_path / "killed" / "last.safetensors")[key], value)


def test_cosine_schedule():
    from clip_hba.training import epoch_lr

    config = fit_config("m", "o", lr=0.1, epochs=4, lr_schedule="cosine")
    assert [round(epoch_lr(config, e), 6) for e in (1, 2, 3, 4)] == [0.1, 0.085355, 0.05, 0.014645]
    assert epoch_lr(fit_config("m", "o", lr=0.1), 3) == 0.1


def test_resume_and_overwrite_errors(tiny_clip, images, tmp_path):
    with pytest.raises(InputError, match="Nothing to resume"):
        fit_behavior(fit_config(tiny_clip, tmp_path / "none", images), resume=True, verbose=False)
    fit_behavior(fit_config(tiny_clip, tmp_path / "run", images, epochs=1), verbose=False)
    with pytest.raises(InputError, match="already holds a run"):
        fit_behavior(fit_config(tiny_clip, tmp_path / "run", images), verbose=False)
    with pytest.raises(InputError, match=r"other settings \(--lr 0.01 -> 0.5"):
        fit_behavior(
            fit_config(tiny_clip, tmp_path / "run", images, lr=0.5), resume=True, verbose=False
        )
    # options left at their defaults take the run's own settings; new limits are recorded
    resumed = fit_behavior(
        BehaviorFitConfig(model=str(tiny_clip), out=str(tmp_path / "run"), epochs=2),
        resume=True,
        verbose=False,
    )
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["fit"]
    assert len(resumed.log) == 3 and saved["epochs"] == 2
    assert (saved["lr"], saved["adapter"]["rank"], saved["max_concepts"]) == (1e-2, 4, 20)
    # fewer epochs than trained: finished as it is, and config.json says how many it ran
    fit_behavior(
        BehaviorFitConfig(model=str(tiny_clip), out=str(tmp_path / "run"), epochs=1),
        resume=True,
        verbose=False,
    )
    assert json.loads((tmp_path / "run" / "config.json").read_text())["fit"]["epochs"] == 2
    cosine = dict(epochs=1, lr_schedule="cosine")
    fit_behavior(fit_config(tiny_clip, tmp_path / "cos", images, **cosine), verbose=False)
    with pytest.raises(InputError, match="--epochs"):  # the schedule depends on it
        fit_behavior(
            fit_config(tiny_clip, tmp_path / "cos", images, epochs=3, lr_schedule="cosine"),
            resume=True,
            verbose=False,
        )


def test_text_backbone_trains_with_shared_towers(tiny_bert, tmp_path):
    runs = [
        fit_behavior(
            fit_config(
                tiny_bert, tmp_path / mode, cache=mode, adapter=AdapterConfig(rank=4, layers=(2, 3))
            ),
            verbose=False,
        )
        for mode in ("off", "memory")
    ]
    # losses only: the rho of a random tiny encoder's nearly tied RDM is not a stable number
    np.testing.assert_allclose(
        losses(runs[0].log)[:, :2], losses(runs[1].log)[:, :2], atol=1e-5, rtol=1e-5
    )
    assert losses(runs[0].log)[-1, 1] < losses(runs[0].log)[0, 1]


# ---------------------------------------------------------------------------- inference


def test_embedding_is_batch_independent(tiny_clip, images, tmp_path):
    fit_behavior(fit_config(tiny_clip, tmp_path / "run", images, epochs=1), verbose=False)
    model = load_run(tmp_path / "run").model
    inputs = concept_inputs(model.backbone, CONCEPTS, InputConfig(images=str(images)))
    one = embed(model, inputs, batch_size=1)
    sixteen = embed(model, inputs, batch_size=16)
    # float32 BLAS rounds differently for other batch shapes, relative to the size of the
    # numbers involved (~1e-7 of the output scale; CPUs differ); nothing else may differ
    scale = np.abs(sixteen.values).max()
    np.testing.assert_allclose(one.values, sixteen.values, rtol=1e-5, atol=1e-6 * scale)
    assert one.concept_ids == tuple(CONCEPTS) and one.dim_labels == load_spose_labels()
    out = save_embedding(tmp_path / "e.npz", one, inputs.item_ids, with_rdm=True)
    with np.load(out) as archive:
        assert archive["rdm"].shape == (len(CONCEPTS) * (len(CONCEPTS) - 1) // 2,)
        assert archive["image_ids"][0] == f"{CONCEPTS[0]}_01b.jpg"
    np.testing.assert_array_equal(read_embedding(out).values, one.values)
    csv_out = save_embedding(tmp_path / "e.csv", one, inputs.item_ids)
    np.testing.assert_allclose(read_embedding(csv_out).values, one.values, rtol=1e-15)


def test_base_model_embeds_without_a_run(tiny_clip, images):
    loaded = load_run(tiny_clip)
    model, settings = loaded.model, loaded.inputs
    assert settings == InputConfig()
    inputs = concept_inputs(model.backbone, TRAIN[:3], InputConfig(images=str(images)))
    assert embed(model, inputs).values.shape == (3, 66)


# ---------------------------------------------------------------------------- bad inputs


def test_missing_images_are_listed_or_skipped(tiny_clip, images, tmp_path, caplog):
    from clip_hba.data import load_concepts

    absent = [c for c in load_concepts().ids if c not in CONCEPTS + OTHER][:2]
    backbone = load_backbone(tiny_clip)
    wanted = [*TRAIN[:3], *absent]
    with pytest.raises(
        InputError, match=f"No image for 2 of 5 concepts.*'{absent[0]}'.*--skip-missing"
    ):
        concept_inputs(backbone, wanted, InputConfig(images=str(images)))
    kept = concept_inputs(backbone, wanted, InputConfig(images=str(images), skip_missing=True))
    assert kept.concept_ids == tuple(TRAIN[:3])
    assert "Skipping 2 concept(s)" in caplog.text
    with pytest.raises(InputError, match="needs concept images"):
        concept_inputs(backbone, TRAIN[:3], InputConfig())


def test_corrupt_image_is_named(tiny_clip, tmp_path):
    root = make_things_images(tmp_path / "imgs", TRAIN[:3])
    broken = root / "object_images" / TRAIN[1] / f"{TRAIN[1]}_01b.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match=f"Cannot read image .*{TRAIN[1]}_01b.jpg"):
        concept_inputs(load_backbone(tiny_clip), TRAIN[:3], InputConfig(images=str(root)))


def test_image_list_csv(tiny_clip, tmp_path):
    root = make_things_images(tmp_path / "imgs", TRAIN[:3])
    rows = ["image,concept_id"] + [f"object_images/{c}/{c}_01b.jpg,{c}" for c in TRAIN[:3]]
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    backbone = load_backbone(tiny_clip)
    inputs = concept_inputs(
        backbone, TRAIN[:3], InputConfig(images=str(root), images_csv=str(root / "list.csv"))
    )
    assert inputs.concept_ids == tuple(TRAIN[:3])
    extra = root / "object_images" / TRAIN[0] / f"{TRAIN[0]}_02s.jpg"
    extra.write_bytes((root / "object_images" / TRAIN[0] / f"{TRAIN[0]}_01b.jpg").read_bytes())
    (root / "bad.csv").write_text(
        "\n".join([*rows, f"object_images/{TRAIN[0]}/{TRAIN[0]}_02s.jpg,camera"])
    )
    with pytest.raises(InputError, match="unknown concept id.*'camera'"):
        concept_inputs(
            backbone, TRAIN[:3], InputConfig(images=str(root), images_csv=str(root / "bad.csv"))
        )
    (root / "twice.csv").write_text("\n".join([*rows, rows[1]]))
    twice = {"images": str(root), "images_csv": str(root / "twice.csv")}
    with pytest.raises(InputError, match="lists .*_01b.jpg twice \\(rows 2 and 5\\)"):
        concept_inputs(backbone, TRAIN[:3], InputConfig(**twice, exemplar="all"))
    (root / "dup.csv").write_text(
        "\n".join([*rows, f"object_images/{TRAIN[0]}/{TRAIN[0]}_02s.jpg,{TRAIN[0]}"])
    )
    dup = {"images": str(root), "images_csv": str(root / "dup.csv")}
    with pytest.raises(InputError, match="more than one image.*--exemplar first"):
        concept_inputs(backbone, TRAIN[:3], InputConfig(**dup, exemplar="_01b"))
    first = concept_inputs(backbone, TRAIN[:3], InputConfig(**dup))  # each concept's first row
    assert first.concept_ids == tuple(TRAIN[:3])
    every = concept_inputs(backbone, TRAIN[:3], InputConfig(**dup, exemplar="all"))
    assert every.concept_ids == (TRAIN[0], TRAIN[0], TRAIN[1], TRAIN[2])


def test_wrong_label_count_is_rejected(tiny_clip, images, tmp_path):
    import shutil

    from clip_hba.data import bundled_data_dir

    data = tmp_path / "things"
    shutil.copytree(bundled_data_dir(), data)
    labels = (data / "spose_dimension_labels66.txt").read_text().splitlines()
    (data / "spose_dimension_labels66.txt").write_text("\n".join(labels[:65]) + "\n")
    with pytest.raises(InputError, match="expected \\(1854, 65\\)"):
        fit_behavior(
            fit_config(tiny_clip, tmp_path / "run", images, data_dir=str(data)), verbose=False
        )


def test_unloadable_model_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="not a model folder: it has no config.json"):
        load_backbone(tmp_path)


def test_train_dropout_is_seeded_resumable_and_cache_exact(tiny_bert, tmp_path):
    def config(out, **overrides):
        settings = dict(adapter=AdapterConfig(rank=4, layers=(2, 3)), train_dropout=True)
        return fit_config(tiny_bert, tmp_path / out, **{**settings, **overrides})

    full = fit_behavior(config("full", epochs=4), verbose=False)
    without = fit_behavior(config("plain", epochs=4, train_dropout=False), verbose=False)
    assert not np.allclose(losses(full.log)[1:, 0], losses(without.log)[1:, 0])  # dropout acts
    uncached = fit_behavior(config("uncached", epochs=4, cache="off"), verbose=False)
    np.testing.assert_allclose(losses(uncached.log)[:, :2], losses(full.log)[:, :2], rtol=1e-5)
    fit_behavior(config("split", epochs=2), verbose=False)
    resumed = fit_behavior(config("split", epochs=4), resume=True, verbose=False)
    np.testing.assert_array_equal(losses(resumed.log), losses(full.log))


def test_linear_head_is_trained_saved_and_reloaded(tiny_clip, images, tmp_path):
    config = fit_config(tiny_clip, tmp_path / "run", images, head=HeadConfig(kind="linear"))
    result = fit_behavior(config, verbose=False)
    weights = load_file(tmp_path / "run" / "adapter.safetensors")
    assert {"head.weight", "head.bias"} <= weights.keys()
    reloaded = load_run(tmp_path / "run").model
    torch.testing.assert_close(reloaded.linear.weight, result.model.linear.weight)
    assert not torch.equal(
        reloaded.linear.weight,
        BehaviorModel(
            load_backbone(tiny_clip), load_spose_labels(), HeadConfig(kind="linear")
        ).linear.weight,
    )


def test_text_predictions_are_batch_independent(tiny_bert):
    model = BehaviorModel(load_backbone(tiny_bert), load_spose_labels(), HeadConfig())
    inputs = concept_inputs(model.backbone, CONCEPTS[:20], InputConfig())
    one, many = embed(model, inputs, batch_size=1), embed(model, inputs, batch_size=16)
    np.testing.assert_allclose(one.values, many.values, rtol=1e-5, atol=1e-5)


def test_resuming_a_stopped_run_trains_no_further(tiny_clip, images, tmp_path):
    config = fit_config(tiny_clip, tmp_path / "run", images, epochs=6, patience=1, lr=1.0)
    first = fit_behavior(config, verbose=False)
    assert first.stopped_early and first.epochs_run < 6
    again = fit_behavior(config, resume=True, verbose=False)
    assert again.epochs_run == first.epochs_run and again.stopped_early
    np.testing.assert_array_equal(losses(again.log), losses(first.log))


def test_disk_cache_is_reused_only_for_the_same_model_and_inputs(tiny_clip, images, tmp_path):
    backbone = load_backbone(tiny_clip)
    inputs = concept_inputs(backbone, TRAIN[:6], InputConfig(images=str(images)))
    build = dict(mode="disk", directory=tmp_path, verbose=False)
    first = PrefixCache.build(backbone.concept_tower, 2, inputs, **build)
    path = next(tmp_path.glob("prefix-*.h5"))
    stamp = path.stat().st_mtime_ns
    second = PrefixCache.build(backbone.concept_tower, 2, inputs, **build)
    assert path.stat().st_mtime_ns == stamp  # reopened, not rebuilt
    rows = torch.tensor([4, 0, 2])
    torch.testing.assert_close(second.hidden(rows), first.hidden(rows))
    memory = PrefixCache.build(backbone.concept_tower, 2, inputs, verbose=False)
    torch.testing.assert_close(second.hidden(rows), memory.hidden(rows))
    other = concept_inputs(backbone, TRAIN[1:7], InputConfig(images=str(images)))
    assert PrefixCache.build(backbone.concept_tower, 2, other, **build).key != first.key
    assert len(list(tmp_path.glob("prefix-*.h5"))) == 2


def test_vision_only_backbone_trains_with_the_linear_head(tmp_path, images):
    from clip_hba.testing import make_tiny_vit

    vit = make_tiny_vit(tmp_path / "vit")
    backbone = load_backbone(vit)
    assert backbone.kind == "vision" and backbone.label_tower is None
    with pytest.raises(InputError, match="needs a text tower.*--head linear"):
        BehaviorModel(backbone, load_spose_labels(), HeadConfig())
    pixels = {"pixel_values": torch.randn(2, 3, 32, 32)}
    with torch.no_grad():
        expected = backbone.model(**pixels).last_hidden_state[:, 0]
        torch.testing.assert_close(
            backbone.concept_tower(pixels), backbone.model.layernorm(expected)
        )
    linear = HeadConfig(kind="linear")
    runs = [
        fit_behavior(
            fit_config(vit, tmp_path / mode, images, head=linear, cache=mode), verbose=False
        )
        for mode in ("off", "memory")
    ]
    np.testing.assert_allclose(losses(runs[0].log)[:, :2], losses(runs[1].log)[:, :2], rtol=1e-5)
    assert losses(runs[0].log)[-1, 1] < losses(runs[0].log)[0, 1]


@pytest.mark.parametrize(
    ("name", "axis", "with_rdm", "fragment"),
    [
        ("e.pkl", None, False, "use a .npz, .csv or .tsv file"),
        ("e.csv", None, True, "(--rdm)"),
        ("t.csv", "time", False, "Time-resolved embeddings go into an .npz file"),
        ("l.npz", "layers", True, "--rdm and --layers"),
    ],
)
def test_embedding_outputs_are_checked_by_one_rule(tmp_path, name, axis, with_rdm, fragment):
    from clip_hba.data import check_embedding_out

    with pytest.raises(InputError, match=re.escape(fragment)):
        check_embedding_out(tmp_path / name, axis, with_rdm)
    for good, good_axis in [("e.NPZ", None), ("e.tsv", None), ("t.npz", "time")]:
        assert check_embedding_out(tmp_path / good, good_axis) == tmp_path / good
