"""Time-resolved RSA: vectorised correlations, curves, noise ceiling, cluster test, recovery."""

import json

import numpy as np
import pytest
from scipy import stats

from clip_hba._validation import InputError
from clip_hba.data import load_spose
from clip_hba.evaluation import (
    ModelRDMs,
    TimeRSAConfig,
    load_model_rdms,
    save_time_rsa,
    time_resolved_rsa,
)
from clip_hba.meg import (
    RDMStore,
    SimulationConfig,
    StoreWriter,
    leave_one_out_correlations,
    simulate_meg,
)
from clip_hba.rsa import (
    COMPARISONS,
    METHODS,
    cluster_permutation_test,
    compare,
    correlate,
    mean_rdm,
    rdm,
    standardize,
)


@pytest.mark.parametrize("method", METHODS)
def test_correlate_matches_compare_row_by_row(rng, method):
    meg = rng.normal(size=(5, 45))
    meg[1, [3, 7]] = np.nan  # rows missing different pairs
    meg[2, 9] = np.nan
    models = rng.normal(size=(3, 45))
    models[0, :] = models[0, :] + meg[0]  # one related model
    models[2, 11] = np.nan  # pairs NaN in a model are skipped for all models
    out = correlate(meg, models, method)
    assert out.shape == (5, 3)
    for t in range(5):
        for m in range(3):
            keep = ~np.isnan(models).any(0) & ~np.isnan(meg[t])
            expected = COMPARISONS[method](meg[t, keep], models[m, keep])
            assert out[t, m] == pytest.approx(expected, abs=1e-10)


def test_correlate_gives_nan_without_enough_pairs():
    meg = np.array([[1.0, np.nan, np.nan, 2.0], [1.0, 2.0, 3.0, 4.0]])
    out = correlate(meg, np.array([[1.0, 2.0, 3.0, 5.0]]))
    assert np.isnan(out[0, 0]) and out[1, 0] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- the analysis


IDS = [f"k{n:02d}" for n in range(10)]
TIMES = np.arange(-20.0, 60.0, 10.0)  # 8 timepoints


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    rng = np.random.default_rng(7)
    values = rng.normal(size=(3, len(TIMES), 45)).astype(np.float32)
    values[2, :, 4] = np.nan
    path = tmp_path_factory.mktemp("rsa") / "s.h5"
    with StoreWriter(path, IDS, ["p1", "p2", "p3"], TIMES) as writer:
        for p in range(3):
            writer.write_block(p, 0, values[p])
    return path, values


def model_from(rng, name, ids=IDS):
    return ModelRDMs.from_features(name, rng.normal(size=(len(ids), 6)), ids)


def test_curves_and_noise_ceiling_match_direct_computation(small_store, rng):
    path, values = small_store
    model = model_from(rng, "m")
    result = time_resolved_rsa(path, [model], TimeRSAConfig(n_permutations=0), verbose=False)
    mean = np.nanmean(values, axis=0)
    for t in range(len(TIMES)):
        assert result.group["m"][t] == pytest.approx(compare(mean[t], model.values[0]))
        for p in range(3):
            expected = compare(values[p, t], model.values[0])
            assert result.participants["m"][p, t] == pytest.approx(expected)
        lower = [
            compare(values[p, t], np.nanmean(np.delete(values[:, t], p, axis=0), axis=0))
            for p in range(3)
        ]
        upper = [compare(values[p, t], mean[t]) for p in range(3)]
        assert result.noise_ceiling["lower"][t] == pytest.approx(np.mean(lower))
        assert result.noise_ceiling["upper"][t] == pytest.approx(np.mean(upper))


def test_only_shared_and_selected_concepts_are_compared(small_store, rng):
    path, _values = small_store
    ids = [*IDS[3:], "extra1", "extra2"]  # 7 shared concepts
    model = model_from(rng, "m", ids)
    config = TimeRSAConfig(n_permutations=0, concept_ids=["k09", "k04", "k05", "k06", "zz"])
    result = time_resolved_rsa(path, [model], config, verbose=False)
    assert result.concept_ids == ("k04", "k05", "k06", "k09")  # store order
    with pytest.raises(InputError, match="shares 2 concept"):
        time_resolved_rsa(path, [model_from(rng, "m", ["k00", "k01", "x"])], verbose=False)
    with pytest.raises(InputError, match="Only 2 of the 2 selected"):
        time_resolved_rsa(path, [model], TimeRSAConfig(concept_ids=["k03", "k04"]), verbose=False)


def test_layer_wise_and_time_resolved_models(small_store, rng):
    path, values = small_store
    layers = ModelRDMs.from_features(
        "net", rng.normal(size=(4, 10, 5)), IDS, kind="layers", labels=["b1", "b2", "b3", "b4"]
    )
    features = rng.normal(size=(len(TIMES), 10, 5))
    timed = ModelRDMs.from_features("timed", features, IDS, kind="time", times_ms=TIMES)
    result = time_resolved_rsa(
        path, [layers, timed], TimeRSAConfig(n_permutations=20), verbose=False
    )
    assert result.layer_time["net"].shape == (4, len(TIMES))
    np.testing.assert_array_equal(result.layer_time["net"][2], result.group["net/b3"])
    mean = np.nanmean(values, axis=0)
    for t in range(len(TIMES)):
        assert result.group["timed"][t] == pytest.approx(compare(mean[t], rdm(features[t])))
    summary = result.summary()
    assert set(summary["layers"]["net"]) == {"best_layer_per_time", "peak_layer"}
    wrong = ModelRDMs.from_features("bad", features[:3], IDS, kind="time", times_ms=TIMES[:3])
    with pytest.raises(InputError, match="has 3 timepoints"):
        time_resolved_rsa(path, [wrong], verbose=False)


def test_bad_settings(small_store, rng):
    path, _ = small_store
    with pytest.raises(InputError, match="'method'"):
        TimeRSAConfig(method="nope")
    with pytest.raises(InputError, match="pre-stimulus baseline"):
        time_resolved_rsa(
            path,
            [model_from(rng, "m")],
            TimeRSAConfig(baseline="prestimulus", window_ms=(0, 50)),
            verbose=False,
        )
    with pytest.raises(InputError, match="Unknown participant"):
        time_resolved_rsa(
            path, [model_from(rng, "m")], TimeRSAConfig(participants=["p9"]), verbose=False
        )


# ---------------------------------------------------------------------------- cluster test


def test_cluster_test_false_positive_rate_is_nominal():
    """Observed and null curves from one autocorrelated process: P(any cluster p < .05) ~ .05."""
    rng = np.random.default_rng(0)
    n_reps, n_perm, n_t = 600, 199, 40
    kernel = np.exp(-(np.arange(-6, 7) ** 2) / 8.0)

    def curves(n):
        white = rng.normal(size=(n, n_t + 12))
        return np.array([np.convolve(w, kernel, "valid") for w in white])

    times = np.arange(n_t)
    hits = 0
    for _ in range(n_reps):
        draws = curves(n_perm + 1)
        clusters = cluster_permutation_test(draws[0], draws[1:], times)
        hits += any(c.p_value < 0.05 for c in clusters)
    rate = hits / n_reps
    assert 0.025 <= rate <= 0.085, rate


def test_end_to_end_null_rate_is_near_nominal(tmp_path):
    """Pure-noise MEG and a random model: few false clusters through the whole pipeline."""
    rng = np.random.default_rng(1)
    ids = IDS[:8]
    hits = 0
    n_reps = 60
    times = np.arange(0.0, 150.0, 10.0)
    for rep in range(n_reps):
        path = tmp_path / f"null{rep}.h5"
        noise = rng.normal(size=(len(times), 28))
        noise = np.cumsum(noise, axis=0) * 0.5 + noise  # temporally correlated
        with StoreWriter(path, ids, ["p"], times) as writer:
            writer.write_block(0, 0, noise)
        model = ModelRDMs.from_features("m", rng.normal(size=(8, 4)), ids)
        config = TimeRSAConfig(n_permutations=99, seed=rep)
        result = time_resolved_rsa(path, [model], config, verbose=False)
        hits += any(c.p_value < 0.05 for c in result.clusters["m"]["group"])
    assert hits / n_reps <= 0.15


def test_recovers_the_planted_behavioural_component(tmp_path):
    config = SimulationConfig(n_concepts=60, n_participants=3, tmin_ms=-100, tmax_ms=800, seed=5)
    path = simulate_meg(tmp_path / "sim.h5", config, verbose=False)
    with RDMStore(path) as store:
        truth = store.ground_truth()
        ids = store.concept_ids
    spose = ModelRDMs.from_features("spose", load_spose().select(ids).values, ids)
    result = time_resolved_rsa(path, [spose], TimeRSAConfig(n_permutations=200), verbose=False)
    summary = result.summary()["curves"]["spose"]
    course = truth["time_courses"][:, 2].mean(0)  # behaviour component, mean over participants
    window = truth["times_ms"][course >= 0.5 * course.max()]
    assert window[0] <= summary["peak_latency_ms"] <= window[-1]
    assert summary["onset_ms"] is not None and 20 <= summary["onset_ms"] <= 250
    assert summary["peak"] > 0.2


def test_outputs_written(small_store, rng, tmp_path):
    path, _ = small_store
    layers = ModelRDMs.from_features(
        "net", rng.normal(size=(3, 10, 5)), IDS, kind="layers", labels=["b1", "b2", "b3"]
    )
    result = time_resolved_rsa(
        path, [model_from(rng, "m"), layers], TimeRSAConfig(n_permutations=10), verbose=False
    )
    summary = save_time_rsa(result, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "rsa.json").read_text())
    assert written["curves"]["m"].keys() >= {"peak", "peak_latency_ms", "onset_ms", "auc"}
    assert written["noise_ceiling"].keys() >= {"upper_peak", "lower_peak"}
    for name in (
        "curves.csv",
        "curves.npz",
        "layer_time_net.npy",
        "layer_time_net.png",
        "rsa_curves.png",
    ):
        assert (tmp_path / "out" / name).is_file(), name
    header = (tmp_path / "out" / "curves.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["time_ms", "m"] and "m@p2" in header
    assert np.load(tmp_path / "out" / "layer_time_net.npy").shape == (3, len(TIMES))
    assert summary["files"]["curves_png"].endswith("rsa_curves.png")


def test_load_model_rdms_kinds(tmp_path, rng):
    np.savez(
        tmp_path / "layers.npz",
        embedding=rng.normal(size=(2, 5, 3)),
        concept_ids=np.array(IDS[:5]),
        layers=np.array(["b1", "b2"]),
    )
    np.savez(
        tmp_path / "timed.npz",
        embedding=rng.normal(size=(3, 5, 3)),
        concept_ids=np.array(IDS[:5]),
        times_ms=np.array([0.0, 5.0, 10.0]),
    )
    np.savetxt(tmp_path / "static.txt", rng.normal(size=(5, 3)))
    ids_file = tmp_path.parent / f"{tmp_path.name}_ids.txt"
    ids_file.write_text("\n".join(IDS[:5]))
    models = load_model_rdms(tmp_path, ids=ids_file)
    kinds = {m.name: m.kind for m in models}
    assert kinds == {"layers": "layers", "static": "static", "timed": "time"}
    np.savez(
        tmp_path / "odd.npz", embedding=rng.normal(size=(2, 5, 3)), concept_ids=np.array(IDS[:5])
    )
    with pytest.raises(InputError, match="neither 'times_ms' nor 'layers'"):
        load_model_rdms(tmp_path / "odd.npz")


@pytest.mark.parametrize("method", ["spearman", "pearson", "rho_a", "cosine"])
def test_fast_path_equals_the_general_path(tmp_path, rng, method):
    path = tmp_path / "s.h5"
    with StoreWriter(path, IDS, ["a", "b"], TIMES) as writer:
        for p in range(2):
            writer.write_block(p, 0, rng.normal(size=(len(TIMES), 45)))
    models = [
        model_from(rng, "static"),
        ModelRDMs.from_features(
            "timed", rng.normal(size=(8, 10, 3)), IDS, kind="time", times_ms=TIMES
        ),
    ]
    config = TimeRSAConfig(method=method, n_permutations=30)
    fast = time_resolved_rsa(path, models, config, verbose=False)
    slow = time_resolved_rsa(path, models, config, verbose=False, fast=False)
    for name in ("static", "timed"):
        np.testing.assert_allclose(fast.group[name], slow.group[name], atol=1e-10)
        np.testing.assert_allclose(fast.participants[name], slow.participants[name], atol=1e-10)
        for target, clusters in slow.clusters[name].items():
            assert [c.p_value for c in fast.clusters[name][target]] == [c.p_value for c in clusters]


# ---------------------------------------------------------------------- rows standardised once


def test_curves_and_noise_ceiling_without_missing_pairs_match_scipy(tmp_path, rng):
    """The complete path (every MEG row ranked once, shared by curves and ceiling), with ties."""
    values = np.round(rng.normal(size=(3, len(TIMES), 45)), 1).astype(np.float32)
    path = tmp_path / "ties.h5"
    with StoreWriter(path, IDS, ["p1", "p2", "p3"], TIMES) as writer:
        for p in range(3):
            writer.write_block(p, 0, values[p])
    model = model_from(rng, "m")
    result = time_resolved_rsa(path, [model], TimeRSAConfig(n_permutations=0), verbose=False)
    data = values.astype(np.float64)

    def rho(x, y):
        return stats.spearmanr(x, y).statistic

    for t in range(len(TIMES)):
        mean = data[:, t].mean(0)
        assert result.group["m"][t] == pytest.approx(rho(mean, model.values[0]), abs=1e-12)
        for p in range(3):
            expected = rho(data[p, t], model.values[0])
            assert result.participants["m"][p, t] == pytest.approx(expected, abs=1e-12)
        lower = np.mean([rho(data[p, t], np.delete(data[:, t], p, 0).mean(0)) for p in range(3)])
        upper = np.mean([rho(data[p, t], mean) for p in range(3)])
        assert result.noise_ceiling["lower"][t] == pytest.approx(lower, abs=1e-12)
        assert result.noise_ceiling["upper"][t] == pytest.approx(upper, abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_leave_one_out_correlations_reuse_and_reference(method, rng):
    block = np.round(rng.normal(size=(4, 5, 36)), 1).astype(np.float32)
    others, everyone = leave_one_out_correlations(block, method)
    mean = mean_rdm(block)
    for p in range(4):
        rest = mean_rdm(np.delete(block, p, 0))
        for t in range(5):
            assert others[p, t] == pytest.approx(compare(block[p, t], rest[t], method), abs=1e-12)
            assert everyone[p, t] == pytest.approx(compare(block[p, t], mean[t], method), abs=1e-12)
    if method != "kendall_tau_a":  # rows standardised by the caller give the same numbers
        reuse = np.stack([standardize(rows, method) for rows in [mean, *block]])
        again = leave_one_out_correlations(block, method, standardized=reuse)
        np.testing.assert_array_equal(again[0], others)
        np.testing.assert_array_equal(again[1], everyone)


# ------------------------------------------------------------------ nulls of many timepoints


def test_square_indices_gather_the_permuted_condensed_rdm(rng):
    from clip_hba.evaluation.rsa_nulls import Permutations

    n = 9
    condensed = rng.normal(size=n * (n - 1) // 2)
    square = np.zeros((n, n))
    square[np.triu_indices(n, 1)] = condensed
    square = square + square.T
    permutations = Permutations(n, 4, seed=3)
    for k, (_, pairs) in enumerate(
        (start + j, p) for start, chunk in permutations.chunks() for j, p in enumerate(chunk)
    ):
        order = permutations.orders[k]
        expected = square[np.ix_(order, order)][np.triu_indices(n, 1)]
        np.testing.assert_array_equal(condensed[pairs], expected)
        np.testing.assert_array_equal(square.ravel()[permutations.square_indices(k)], expected)


def test_nulls_deferred_over_several_blocks_and_missing_pairs(tmp_path, rng, monkeypatch):
    """Blocks of 3 timepoints read one at a time, chunks of a few permutations, and a
    participant missing pairs at some timepoints: the same curves and clusters as computing
    every permuted correlation directly, and as one block of everything."""
    from clip_hba.evaluation import rsa_nulls, time_rsa

    values = rng.normal(size=(3, len(TIMES), 45)).astype(np.float32)
    structure = rng.normal(size=45)
    values[:, 3:, :] += 2 * structure.astype(np.float32)  # from the 4th timepoint on
    values[2, 2:5, 4] = np.nan  # p3 misses a pair at 3 timepoints: computed directly there
    values[:, 6, 7] = np.nan  # everyone misses one at the 7th: no target is complete there
    path = tmp_path / "s.h5"
    with StoreWriter(path, IDS, ["p1", "p2", "p3"], TIMES) as writer:
        for p in range(3):
            writer.write_block(p, 0, values[p])
    layers = ModelRDMs.from_features(
        "layers", rng.normal(size=(2, len(IDS), 4)), IDS, kind="layers", labels=["b1", "b2"]
    )
    models = [ModelRDMs("static", structure + rng.normal(size=45), IDS), layers]
    config = TimeRSAConfig(n_permutations=40, seed=2)
    nulls = []  # each run's null curves, as the cluster test receives them
    clusters = time_rsa._clusters
    monkeypatch.setattr(
        time_rsa, "_clusters", lambda c, n, *a: nulls.append(n) or clusters(c, n, *a)
    )
    whole = time_resolved_rsa(path, models, config, verbose=False)
    slow = time_resolved_rsa(path, models, config, verbose=False, fast=False)
    monkeypatch.setattr(time_rsa, "RSA_READ_BYTES", 4 * 3 * 45)  # one timepoint per read
    monkeypatch.setattr(rsa_nulls, "DEFERRED_BYTES", 4 * 4 * 45 * 3)  # 3 timepoints per block
    monkeypatch.setattr(rsa_nulls, "NULL_BYTES", 4 * 45 * 2 * 7)  # 7 permutations per product
    assert rsa_nulls.DeferredNulls.block_times(4, 45, len(TIMES), 1) == 3
    blocked = time_resolved_rsa(path, models, config, verbose=False)
    for name, direct in nulls[1].items():
        for found in (nulls[0][name], nulls[2][name]):
            np.testing.assert_array_equal(np.isnan(found), np.isnan(direct))
            np.testing.assert_allclose(found, direct, rtol=0, atol=1e-6)
    for result in (whole, blocked):
        for name in slow.group:
            np.testing.assert_allclose(result.group[name], slow.group[name], atol=1e-10)
            np.testing.assert_allclose(
                result.participants[name], slow.participants[name], atol=1e-10
            )
            for target, clusters in slow.clusters[name].items():
                found = result.clusters[name][target]
                assert [(c.start_ms, c.stop_ms, c.p_value) for c in found] == [
                    (c.start_ms, c.stop_ms, c.p_value) for c in clusters
                ]
    assert [c.start_ms for c in slow.clusters["static"]["group"] if c.p_value < 0.05] == [10.0]


def test_models_with_one_name_are_refused(small_store, rng):
    path, _ = small_store
    layers = ModelRDMs.from_features(
        "x", rng.normal(size=(2, len(IDS), 4)), IDS, kind="layers", labels=["b1", "b2"]
    )
    for second in (model_from(rng, "x"), layers):  # the same curve name, or only the model name
        with pytest.raises(InputError, match="Model names repeat"):
            time_resolved_rsa(path, [model_from(rng, "x"), second], verbose=False)
