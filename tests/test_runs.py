"""The run directory's integrity rules, tried as a new user would: unfinished runs, paths,
base models, and run directories of older versions."""

import json
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file, save_file

from clip_hba.meg import SimulationConfig, simulate_meg
from clip_hba.models import AdapterConfig, InputConfig
from clip_hba.testing import make_things_images, make_tiny_bert, make_tiny_clip
from clip_hba.training import (
    BehaviorFitConfig,
    MegFitConfig,
    RunDir,
    fit_behavior,
    fit_meg,
    load_run,
)
from test_cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "model")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    config = SimulationConfig(n_concepts=30, n_participants=2, tmin_ms=-50, tmax_ms=200, seed=3)
    return simulate_meg(tmp_path_factory.mktemp("sim") / "sim.h5", config, verbose=False)


def behavior_config(model, out, **overrides):
    settings = dict(
        model=str(model),
        out=str(out),
        adapter=AdapterConfig(rank=2, layers=(-1,)),
        epochs=2,
        max_concepts=20,
        batch_size=8,
    )
    return BehaviorFitConfig(**{**settings, **overrides})


def meg_config(store, model, out, **overrides):
    settings = dict(
        store=str(store),
        model=str(model),
        out=str(out),
        adapter=AdapterConfig(rank=2, layers=(-1,), label_layers=()),
        stage0_epochs=2,
        stage1_epochs=1,
        batch_size=8,
        device="cpu",
    )
    return MegFitConfig(**{**settings, **overrides})


def killed_fit(model, out):
    """A `fit behavior` killed with SIGKILL once its first checkpoint is written."""
    args = ["fit", "behavior", "--model", str(model), "--out", str(out), "--max-concepts", "20"]
    args += ["--epochs", "100000", "--patience", "100000", "--rank", "2", "--layers", "-1"]
    process = subprocess.Popen(
        [sys.executable, "-m", "clip_hba.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (out / "last.safetensors").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the fit did not start"
        time.sleep(0.2)
    process.kill()
    process.wait()
    return out


def test_a_killed_run_is_refused_by_every_consumer(capsys, bert, store, tmp_path):
    killed = killed_fit(bert, tmp_path / "killed")
    assert RunDir(killed).status() == "running"
    code, out, err = run(capsys, "embed", "--model", str(killed), "--out", str(tmp_path / "e.npz"))
    assert_one_line_error(code, out, err, str(killed), "unfinished", "--resume")
    assert not (tmp_path / "e.npz").exists()
    code, out, err = run(
        capsys, "fit", "meg", "--store", str(store), "--model", str(bert),
        "--init-behavior", str(killed), "--out", str(tmp_path / "meg"), "--quiet",
    )  # fmt: skip
    assert_one_line_error(code, out, err, "unfinished", "--allow-unfinished")
    assert not RunDir(tmp_path / "meg").is_run()
    # asked for explicitly, the best epoch so far is used
    code, _, _ = run(
        capsys, "embed", "--model", str(killed), "--out", str(tmp_path / "e.npz"),
        "--allow-unfinished",
    )  # fmt: skip
    assert code == 0 and (tmp_path / "e.npz").is_file()
    # --resume finishes it with the run's own settings, and then it is accepted
    code, _, err = run(capsys, "fit", "behavior", "--out", str(killed), "--epochs", "3", "--resume")
    assert code == 0, err
    assert RunDir(killed).status() == "finished"
    saved = RunDir(killed).fit_config()
    trained = json.loads((killed / "state.json").read_text())["epoch"]  # 3, or more if killed later
    assert saved.epochs == trained == max(3, trained)
    assert (saved.patience, saved.max_concepts, saved.adapter.rank) == (100000, 20, 2)
    assert saved.model == str(bert.resolve())
    assert load_run(killed).kind == "behavior"


def test_an_interrupted_meg_run_is_refused_by_evaluate_and_fit_individual(
    capsys, bert, store, tmp_path
):
    group = fit_meg(meg_config(store, bert, tmp_path / "group"), verbose=False).run_dir
    RunDir(group).mark("failed", "KeyboardInterrupt")  # as an interrupted run records itself
    code, out, err = run(
        capsys, "evaluate", "meg", "--model", str(group), "--store", str(store), "--out",
        str(tmp_path / "eval"), "--permutations", "0", "--quiet",
    )  # fmt: skip
    assert_one_line_error(
        code, out, err, "unfinished run (status: failed", "KeyboardInterrupt", "--resume"
    )
    assert not (tmp_path / "eval" / "evaluation.json").exists()
    code, out, err = run(
        capsys, "fit", "individual", "--store", str(store), "--model", str(bert),
        "--participant", "all", "--group-run", str(group), "--out", str(tmp_path / "ind"),
        "--quiet",
    )  # fmt: skip
    assert_one_line_error(code, out, err, "unfinished")


def test_a_refused_resume_leaves_a_finished_run_finished(tmp_path):
    from clip_hba.data import split_concepts

    split = split_concepts(seed=0)
    ids = [*split.train_ids[:16], *split.val_ids[:4], *split.test_ids]
    images = make_things_images(tmp_path / "images", ids)
    clip = make_tiny_clip(tmp_path / "clip")
    config = behavior_config(clip, tmp_path / "run", inputs=InputConfig(images=str(images)))
    fit_behavior(config, verbose=False)
    picture = images / "object_images" / ids[0] / f"{ids[0]}_01b.jpg"
    picture.write_bytes((images / "object_images" / ids[1] / f"{ids[1]}_01b.jpg").read_bytes())
    with pytest.raises(Exception, match="concept inputs .* have changed"):
        fit_behavior(config, resume=True, verbose=False)
    assert RunDir(config.out).status() == "finished"


def test_an_exception_marks_the_run_failed(bert, tmp_path, monkeypatch):
    from clip_hba.training import BehaviorTrainer

    def crash(self, epoch):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(BehaviorTrainer, "epoch", crash)
    with pytest.raises(RuntimeError):
        fit_behavior(behavior_config(bert, tmp_path / "run"), verbose=False)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status == {
        "status": "failed",
        "clip_hba_version": status["clip_hba_version"],
        "error": "RuntimeError: out of memory",
    }


def test_evaluate_meg_works_from_another_directory(capsys, store, tmp_path, monkeypatch):
    with_images = tmp_path / "work"
    with_images.mkdir()
    from clip_hba.meg import RDMStore

    with RDMStore(store) as opened:
        ids = opened.concept_ids
    clip = make_tiny_clip(tmp_path / "clip")
    make_things_images(with_images / "images", ids)
    monkeypatch.chdir(with_images)  # the run is trained with a relative --images
    config = meg_config(store, clip, tmp_path / "run", inputs=InputConfig(images="images"))
    assert config.inputs.images == str(with_images / "images")  # stored absolute
    fit_meg(config, verbose=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["fit"]["inputs"]["images"] == str(with_images / "images")
    assert saved["store"]["sha256"] and saved["store"]["content"] is True
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, _ = run(
        capsys, "evaluate", "meg", "--model", str(tmp_path / "run"), "--store", str(store),
        "--out", "eval", "--permutations", "0", "--quiet",
    )  # fmt: skip
    assert code == 0, out
    summary = json.loads(out)
    assert summary["store_matches_training"] is True
    assert (elsewhere / "eval" / "evaluation.json").is_file()
    # --images overrides the folder the run was trained on
    moved = tmp_path / "moved"
    (with_images / "images").rename(moved)
    code, _, err = run(
        capsys, "evaluate", "meg", "--model", str(tmp_path / "run"), "--store", str(store),
        "--out", "eval2", "--permutations", "0", "--quiet",
    )  # fmt: skip
    assert code == 2 and str(with_images / "images") in err
    code, _, _ = run(
        capsys, "evaluate", "meg", "--model", str(tmp_path / "run"), "--store", str(store),
        "--out", "eval2", "--permutations", "0", "--quiet", "--images", str(moved),
    )  # fmt: skip
    assert code == 0


def test_a_different_base_model_is_refused(capsys, bert, store, tmp_path):
    behavior = fit_behavior(behavior_config(bert, tmp_path / "behavior"), verbose=False).run_dir
    other = make_tiny_bert(tmp_path / "other", seed=1)  # same architecture, other weights
    code, out, err = run(
        capsys, "fit", "meg", "--store", str(store), "--model", str(other), "--init-behavior",
        str(behavior), "--out", str(tmp_path / "meg"), "--quiet",
    )  # fmt: skip
    assert_one_line_error(code, out, err, str(bert), str(other), "--model")
    # a copy of the right model elsewhere is the same model
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in bert.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    config = meg_config(store, copy, tmp_path / "meg", init_behavior=str(behavior))
    group = fit_meg(config, verbose=False).run_dir
    with pytest.raises(Exception, match="not from"):
        fit_meg(
            meg_config(store, other, tmp_path / "ind", participant="sim01", init_meg=str(group)),
            verbose=False,
        )


def test_a_model_folder_missing_weights_is_an_error(capsys, tmp_path):
    model = make_tiny_clip(tmp_path / "clip")
    weights = model / "model.safetensors"
    tensors = load_file(weights)
    dropped = next(k for k in tensors if "vision_model" in k and "layers.0" in k)
    del tensors[dropped]
    save_file(tensors, weights, metadata={"format": "pt"})
    images = make_things_images(tmp_path / "images", ["aardvark", "abacus", "accordion"])
    args = ["embed", "--model", str(model), "--images", str(images)]
    code, out, err = run(capsys, *args, "--out", str(tmp_path / "e.npz"))
    assert_one_line_error(code, out, err, "initialised at random", "--allow-random-init")
    code, _, _ = run(capsys, *args, "--out", str(tmp_path / "e.npz"), "--allow-random-init")
    assert code == 0


def test_runs_of_older_versions_still_load_and_resume(bert, tmp_path):
    """Runs written before status.json and fingerprints existed."""
    config = behavior_config(bert, tmp_path / "run", epochs=2)
    first = fit_behavior(config, verbose=False)
    run_dir = first.run_dir
    (run_dir / "status.json").unlink()
    description = json.loads((run_dir / "config.json").read_text())
    del description["base_model_fingerprint"]
    (run_dir / "config.json").write_text(json.dumps(description))
    assert RunDir(run_dir).status() == "finished"  # its metrics after training are there
    assert load_run(run_dir).kind == "behavior"
    resumed = fit_behavior(behavior_config(bert, run_dir, epochs=3), resume=True, verbose=False)
    assert resumed.epochs_run == 3


def test_a_bare_resume_keeps_every_setting_of_a_meg_run(capsys, bert, store, tmp_path):
    out = tmp_path / "meg"
    common = ("fit", "meg", "--store", str(store), "--model", str(bert), "--out", str(out))
    own = ("--rdm-correlation", "per-time", "--improvement-confidence", "0", "--batch-size", "8")
    own += ("--stage0-epochs", "1", "--stage1-epochs", "0", "--layers", "", "--quiet")
    code, _, err = run(capsys, *common, *own)
    assert code == 0, err
    code, _, err = run(capsys, *common, "--resume", "--stage0-epochs", "2", "--quiet")
    assert code == 0, err
    saved = RunDir(out).fit_config()
    assert (saved.rdm_correlation, saved.improvement_confidence) == ("per-time", 0.0)
    assert (saved.stage0_epochs, saved.stage1_epochs, saved.batch_size) == (2, 0, 8)
    code, out_text, err = run(capsys, *common, "--resume", "--batch-size", "10", "--quiet")
    assert_one_line_error(code, out_text, err, "--batch-size 8 -> 10")


def test_sigterm_stops_a_run_cleanly_and_it_resumes(capsys, bert, tmp_path):
    out = tmp_path / "termed"
    args = ["fit", "behavior", "--model", str(bert), "--out", str(out), "--max-concepts", "20"]
    args += ["--epochs", "100000", "--patience", "100000", "--rank", "2", "--layers", "-1"]
    process = subprocess.Popen(
        [sys.executable, "-m", "clip_hba.cli", *args, "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (out / "last.safetensors").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the fit did not start"
        time.sleep(0.2)
    process.terminate()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("clip-hba: error: terminated;")
    assert RunDir(out).status() == "running"  # resumable, not failed
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    code, _, err = run(capsys, "fit", "behavior", "--out", str(out), "--epochs", "2", "--resume")
    assert code == 0, err
    assert RunDir(out).status() == "finished"


def _as_saved_by_0_based_versions(run_dir, renumber):
    """Rewrite a run's config.json as versions that counted adapter blocks from 0 wrote it."""
    path = run_dir / "config.json"
    description = json.loads(path.read_text())
    del description["block_numbering"]
    renumber(description)
    path.write_text(json.dumps(description))


def test_runs_of_0_based_versions_load_the_same_blocks(bert, store, tmp_path):
    import numpy as np

    from clip_hba.models import concept_inputs, embed, embed_times

    behaviour = fit_behavior(
        behavior_config(bert, tmp_path / "b", adapter=AdapterConfig(rank=2, layers=(2, 3))),
        verbose=False,
    ).run_dir
    loaded = load_run(behaviour)
    inputs = concept_inputs(loaded.model.backbone, ["aardvark", "abacus", "acorn"], loaded.inputs)
    before = embed(loaded.model, inputs).values

    def old_behaviour(description):
        description["fit"]["adapter"]["layers"] = [1, 2]

    _as_saved_by_0_based_versions(behaviour, old_behaviour)
    assert RunDir(behaviour).fit_config().adapter.layers == (2, 3)
    np.testing.assert_array_equal(embed(load_run(behaviour).model, inputs).values, before)

    meg = fit_meg(
        meg_config(store, bert, tmp_path / "m", adapter=AdapterConfig(rank=2, layers=())),
        verbose=False,
    ).run_dir
    loaded = load_run(meg)
    inputs = concept_inputs(loaded.model.backbone, ["aardvark", "abacus", "acorn"], loaded.inputs)
    before = embed_times(loaded.model, inputs).values

    def old_meg(description):
        resolved = description["fit"]["adapter_resolved"]
        assert resolved["layers"] == [1, 2, 3]
        resolved["layers"] = [0, 1, 2]

    _as_saved_by_0_based_versions(meg, old_meg)
    np.testing.assert_array_equal(embed_times(load_run(meg).model, inputs).values, before)


def test_resume_accepts_a_copy_of_the_base_model_elsewhere(bert, tmp_path):
    import shutil

    from clip_hba._validation import InputError

    out = tmp_path / "run"
    fit_behavior(behavior_config(bert, out, epochs=1), verbose=False)
    copy = shutil.copytree(bert, tmp_path / "copy")  # e.g. the same model on a compute node
    resumed = fit_behavior(behavior_config(copy, out, epochs=2), resume=True, verbose=False)
    assert len(resumed.log) == 3 and RunDir(out).fit_config().model == str(copy.resolve())
    other = make_tiny_bert(tmp_path / "other", seed=1)
    with pytest.raises(InputError, match="is not the model it was trained from"):
        fit_behavior(behavior_config(other, out, epochs=3), resume=True, verbose=False)
