"""Simulated MEG participants: planted truth, timing and determinism."""

import numpy as np
import pytest

from clip_hba._validation import InputError
from clip_hba.meg import (
    COMPONENTS,
    RDMStore,
    SimulationConfig,
    export_things_mat,
    import_things_mat,
    simulate_meg,
    time_course,
)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "sim.h5"
    config = SimulationConfig(n_concepts=30, n_participants=3, tmin_ms=-100, tmax_ms=600, seed=3)
    return simulate_meg(path, config, verbose=False)


def test_store_holds_the_truth(simulated):
    with RDMStore(simulated) as store:
        truth = store.ground_truth()
        info = store.info()
    assert info["n_participants"] == 3 and info["n_concepts"] == 30 and info["n_times"] == 141
    assert info["nan_share"] == 0.0 and info["has_ground_truth"]
    assert list(truth["components"]) == list(COMPONENTS)
    assert truth["time_courses"].shape == (3, 4, 141)
    assert truth["component_rdms"].shape == (4, 435)
    before = truth["times_ms"] < 0
    assert (truth["time_courses"][:, :, before] == 0).all()  # no signal before 0 ms
    onsets = truth["onset_ms"]
    assert (onsets >= 20).all()
    peaks = truth["times_ms"][truth["time_courses"].argmax(-1)]
    assert ((peaks >= 60) & (peaks <= 420)).all()
    # participants differ in latency, gain and mixture
    assert np.ptp(truth["peak_ms"][:, 2]) > 1 and np.ptp(truth["gain"]) > 0.01


def test_rdms_follow_the_planted_components(simulated):
    with RDMStore(simulated) as store:
        truth = store.ground_truth()
        mean = store.mean()
    times = mean.times_ms
    behaviour = truth["component_rdms"][2]
    r = np.array([np.corrcoef(v, behaviour)[0, 1] for v in mean.values])
    assert np.abs(r[times < 0]).max() < 0.2
    assert r.max() > 0.3
    assert 150 <= times[r.argmax()] <= 450


def test_same_seed_same_data(tmp_path):
    config = SimulationConfig(n_concepts=10, n_participants=2, tmin_ms=0, tmax_ms=50)
    a = simulate_meg(tmp_path / "a.h5", config, verbose=False)
    b = simulate_meg(tmp_path / "b.h5", config, verbose=False)
    with RDMStore(a) as first, RDMStore(b) as second:
        np.testing.assert_array_equal(first.read().values, second.read().values)
        assert first.concept_ids == second.concept_ids


def test_release_export_imports_back(simulated, tmp_path):
    mat = export_things_mat(simulated, tmp_path / "sim.mat", verbose=False)
    with RDMStore(simulated) as store:
        ids, times, original = store.concept_ids, store.times_ms, store.read().values
    imported = import_things_mat(
        mat, tmp_path / "back.h5", concept_ids=ids, times_ms=times, verbose=False
    )
    with RDMStore(imported) as store:
        np.testing.assert_array_equal(store.read().values, original)


def test_time_course_shape():
    times = np.arange(-100, 600, 5.0)
    curve = time_course(times, 50, 100, 2.0)
    assert curve[times <= 50].max() == 0
    assert times[curve.argmax()] == 100 and curve.max() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_concepts": 2}, "'concepts'"),
        ({"n_participants": 0}, "'participants'"),
        ({"tmin_ms": 10, "tmax_ms": 0}, "time axis"),
        ({"noise": 0}, "'noise'"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(InputError, match=message):
        SimulationConfig(**kwargs)


def test_attention_jitter_gives_each_participant_a_behavioural_space(tmp_path):
    base = SimulationConfig(n_concepts=30, n_participants=2, tmin_ms=200, tmax_ms=300, noise=0.01)
    plain = simulate_meg(tmp_path / "plain.h5", base, verbose=False)
    config = SimulationConfig(**{**base.__dict__, "attention_jitter": 1.0})
    personal = simulate_meg(tmp_path / "personal.h5", config, verbose=False)
    with RDMStore(plain) as store:
        assert (store.ground_truth()["attention"] == 1).all()
        same = store.read().values.mean(1)
    with RDMStore(personal) as store:
        truth = store.ground_truth()
        own = store.read().values.mean(1)
    assert truth["attention"].shape == (2, 66) and truth["attention"].std() > 0.5
    # without jitter the two participants differ by their mixtures only; with it, by more
    r_plain = np.corrcoef(same[0], same[1])[0, 1]
    r_personal = np.corrcoef(own[0], own[1])[0, 1]
    assert r_personal < r_plain
