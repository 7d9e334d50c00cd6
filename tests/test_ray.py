"""``fit individual --backend ray``: one Ray task per participant, on a local 2-CPU Ray; the
runs are identical to the sequential backend's, also for participants whose first attempt
failed (an exception, a worker that died) and were retried from their checkpoints."""

import dataclasses
import functools
import json
import os
import shutil
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from clip_hba._validation import InputError
from clip_hba.cli import main
from clip_hba.meg import SimulationConfig, simulate_meg
from clip_hba.testing import make_tiny_bert
from clip_hba.training import MegTrainer, ParticipantsFailed, RunDir, fit_individuals, fit_meg
from test_cli import assert_one_line_error, run

ray = pytest.importorskip("ray")

PEOPLE = ["sim01", "sim02", "sim03"]
THREADS = 1  # the Ray side's --cpus-per-task: torch's CPU results may depend on threads


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    config = SimulationConfig(n_concepts=30, n_participants=3, tmin_ms=-50, tmax_ms=150, seed=2)
    store = simulate_meg(root / "sim.h5", config, verbose=False)
    return store, make_tiny_bert(root / "bert")


def command(setup, out, *more):
    store, bert = setup
    return [
        "fit", "individual", "--store", str(store), "--model", str(bert), "--participant",
        "all", "--init", "base", "--out", str(out), "--stage0-epochs", "2", "--stage1-epochs",
        "1", "--batch-size", "10", "--rank", "2", "--stage0-lr", "0.05", "--stage1-lr", "0.01",
        "--improvement-confidence", "0", "--device", "cpu", "--quiet", *more,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """The sequential backend's runs, with as many torch threads as a Ray task gets."""
    out = tmp_path_factory.mktemp("sequential") / "people"
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with pytest.raises(SystemExit) as done:
            main(command(setup, out))
    finally:
        torch.set_num_threads(threads)
    assert not done.value.code
    metrics = [json.loads((out / p / "metrics.json").read_text()) for p in PEOPLE]
    assert metrics[0]["best_stage"] == 1  # sim01 keeps an epoch of stage 1, after its retry
    return out


@pytest.fixture(scope="module")
def local_ray():
    # workers cannot import this module (tests/ is not on their path): send its functions
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


def assert_same_runs(expected, actual):
    for person in PEOPLE:
        for name in ("adapter.safetensors", "last.safetensors"):
            want, got = load_file(expected / person / name), load_file(actual / person / name)
            assert want.keys() == got.keys()
            # the process's global generator as the checkpoint found it: MEG training (eval
            # mode, no dropout) never draws from it, and it differs between processes
            for key in set(want) - {"torch_rng_state"}:
                assert torch.equal(want[key], got[key]), (person, name, key)
        for name in ("metrics.json", "log.jsonl", "state.json"):
            assert (expected / person / name).read_text() == (actual / person / name).read_text()
        configs = [
            json.loads((run / person / "config.json").read_text()) for run in (expected, actual)
        ]
        for saved in configs:
            del saved["fit"]["out"]
        assert configs[0] == configs[1]
        assert RunDir(actual / person).status() == "finished"


def template_of(reference):
    return RunDir(reference / PEOPLE[0]).fit_config()


def flaky(config, *, calls, **kwargs):
    """`fit_meg`, whose first attempt per participant fails: sim01 raises after stage 0, sim02's
    worker dies there (its run stays "running"), sim03 raises before its run begins."""
    record = Path(calls) / config.participant
    with record.open("a") as handle:
        handle.write(f"{kwargs['resume']}\n")
    if len(record.read_text().split()) == 1:
        if config.participant == "sim01":
            with mock.patch.object(MegTrainer, "enter_stage1", side_effect=RuntimeError("once")):
                return fit_meg(config, **kwargs)
        if config.participant == "sim02":
            with mock.patch.object(MegTrainer, "enter_stage1", side_effect=lambda: os._exit(1)):
                return fit_meg(config, **kwargs)
        raise RuntimeError("not yet")
    return fit_meg(config, **kwargs)


def failing(config, *, calls, **kwargs):
    with (Path(calls) / config.participant).open("a") as handle:
        handle.write(f"{kwargs['resume']}\n")
    raise RuntimeError("no luck today")


def attempts(calls, person):
    path = Path(calls) / person
    return path.read_text().split() if path.exists() else []


def test_a_local_ray_is_started_and_stopped_and_the_runs_match(capsys, setup, reference, tmp_path):
    assert not ray.is_initialized()
    code, out, err = run(
        capsys, *command(setup, tmp_path / "people", "--backend", "ray", "--cpus-per-task", "1")
    )
    assert code == 0, err
    assert sorted(json.loads(out)) == PEOPLE
    assert not ray.is_initialized()
    assert_same_runs(reference, tmp_path / "people")


def test_failed_attempts_are_retried_from_their_checkpoints(local_ray, reference, tmp_path, capsys):
    calls = tmp_path / "calls"
    calls.mkdir()
    results = fit_individuals(
        template_of(reference),
        "all",
        tmp_path / "people",
        init="base",
        backend="ray",
        cpus_per_task=THREADS,
        max_retries=1,
        fit=functools.partial(flaky, calls=str(calls)),
    )
    assert list(results) == PEOPLE
    # sim01 and sim02 continued their checkpoints; sim03 had none
    assert [attempts(calls, p) for p in PEOPLE] == [
        ["False", "True"], ["False", "True"], ["False", "False"]
    ]  # fmt: skip
    assert_same_runs(reference, tmp_path / "people")
    err = capsys.readouterr().err
    assert "Participants" in err and "3/3" in err
    expected = json.loads((reference / "sim02" / "metrics.json").read_text())
    assert results["sim02"].best_val_loss == expected["best_val_loss"]
    assert results["sim02"].log == [
        json.loads(line) for line in (reference / "sim02" / "log.jsonl").read_text().splitlines()
    ]


def test_a_participant_that_keeps_failing_is_reported_after_the_others(
    local_ray, reference, tmp_path
):
    out, calls = tmp_path / "people", tmp_path / "calls"
    shutil.copytree(reference, out)
    calls.mkdir()
    RunDir(out / "sim02").mark("running")  # as a killed run: resumed, not skipped
    with pytest.raises(ParticipantsFailed, match="sim02 .RuntimeError: no luck today") as failed:
        fit_individuals(
            template_of(reference),
            "all",
            out,
            init="base",
            resume=True,
            backend="ray",
            max_retries=1,
            verbose=False,
            fit=functools.partial(failing, calls=str(calls)),
        )
    assert list(failed.value.errors) == ["sim02"]
    assert list(failed.value.results) == ["sim01", "sim03"]
    assert attempts(calls, "sim02") == ["True", "True"]  # the first try and one retry
    assert attempts(calls, "sim01") == attempts(calls, "sim03") == []  # finished: not redone
    status = json.loads((out / "sim02" / "status.json").read_text())
    assert status["status"] == "failed" and "no luck today" in status["error"]


def test_bad_settings_are_refused_before_any_work(local_ray, setup, reference, tmp_path, capsys):
    template = dataclasses.replace(template_of(reference))
    new = tmp_path / "new"
    for settings, message in (
        (dict(backend="dask"), "'sequential', 'ray'"),
        (dict(address="ray://head:10001"), "--backend ray"),
        (dict(backend="ray", max_retries=-1), "'max_retries'"),
        (dict(backend="ray", cpus_per_task=0), "'cpus_per_task'"),
    ):
        with pytest.raises(InputError, match=message):
            fit_individuals(template, "all", new, init="base", **settings)
    with pytest.raises(InputError, match="already holds a run of 'sim01', 'sim02'"):
        fit_individuals(template, "all", reference, init="base", backend="ray")
    for more, fragments in (
        (["--backend", "ray", "--gpus-per-task", "1"], ["--gpus-per-task 1", "GPU"]),
        (["--backend", "ray", "--max-retries", "-1"], ["'--max-retries'", "-1"]),
        (["--address", "ray://head:10001"], ["--backend ray"]),
        (["--backend", "ray", "--devices", "2"], ["--devices 2", "--gpus-per-task"]),
    ):
        code, out, err = run(capsys, *command(setup, new, *more))
        assert_one_line_error(code, out, err, *fragments)
    assert not new.exists()
    with mock.patch.dict(sys.modules, {"ray": None}):  # as if the extra were not installed
        code, out, err = run(capsys, *command(setup, new, "--backend", "ray"))
    assert_one_line_error(code, out, err, "pip install 'clip-hba[ray]'")
