"""Cross-validated RDMs from epochs: crossnobis against rsatoolbox, closed-form LDA against
scikit-learn, folds, NaN pairs and the inputs they refuse."""

import numpy as np
import pytest

from clip_hba._validation import InputError
from clip_hba.meg import (
    EpochsConfig,
    RDMStore,
    condition_rdms,
    crossnobis_rdms,
    crossval_folds,
    fold_covariances,
    import_epochs,
    lda_rdms,
)
from test_cli import assert_one_line_error, run

ORDER = [f"c{k}" for k in range(6)]  # sorted as rsatoolbox sorts its descriptor


def epochs(rng, n_conditions=6, repeats=4, n_channels=8, n_times=5, signal=0.6):
    """Epochs (n, ch, T) with condition patterns under noise; groups are the repeat number."""
    order = ORDER[:n_conditions]
    conditions = np.repeat(order, repeats)
    groups = np.tile(np.arange(repeats), n_conditions)
    patterns = rng.normal(size=(n_conditions, n_channels, n_times))
    data = signal * patterns[np.repeat(np.arange(n_conditions), repeats)]
    data = data + rng.normal(size=data.shape) + 2.0  # an offset: nothing may depend on it
    return data, conditions, groups, order


def residuals(data, conditions, train, t):
    x = data[train, :, t].copy()
    for c in np.unique(conditions[train]):
        rows = conditions[train] == c
        x[rows] -= x[rows].mean(0)
    return x


class FixedCovariance:
    """A scikit-learn covariance estimator that returns a given matrix."""

    def __init__(self, covariance=None):
        self.covariance = covariance

    def get_params(self, deep=True):
        return {"covariance": self.covariance}

    def set_params(self, **params):
        self.covariance = params["covariance"]
        return self

    def fit(self, X, y=None):
        self.covariance_ = self.covariance
        return self


# ---------------------------------------------------------------------------- crossnobis


@pytest.mark.parametrize("balanced", [True, False])
def test_crossnobis_equals_rsatoolbox_with_the_same_precision(rng, balanced):
    pytest.importorskip("rsatoolbox")
    from rsatoolbox.data import TemporalDataset
    from rsatoolbox.rdm import calc_rdm, calc_rdm_movie

    data, conditions, groups, order = epochs(rng)
    if not balanced:  # extra epochs: unequal counts per fold and condition
        extra = rng.normal(size=(4, *data.shape[1:]))
        data = np.concatenate([data[1:], extra])
        conditions = np.concatenate([conditions[1:], ["c0", "c0", "c3", "c5"]])
        groups = np.concatenate([groups[1:], [0, 2, 1, 1]])
    n_times, p = data.shape[2], data.shape[1]
    root = rng.normal(size=(3 * p, p))
    precision = np.linalg.inv(root.T @ root / (3 * p))
    dataset = TemporalDataset(
        data,
        obs_descriptors={"conds": conditions, "run": groups},
        time_descriptors={"time": np.arange(n_times)},
    )
    expected = calc_rdm_movie(
        dataset, method="crossnobis", descriptor="conds", cv_descriptor="run", noise=precision
    ).get_vectors()
    folds = crossval_folds(conditions, groups)
    ours = crossnobis_rdms(data, conditions, order, folds, precision=precision)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-8)
    # one precision per timepoint: rsatoolbox's calc_rdm at each time
    per_time = np.stack([precision * (1.0 + 0.2 * t) for t in range(n_times)])
    times = dataset.split_time("time")
    expected = np.concatenate(
        [
            calc_rdm(
                times[t].time_as_observations("time"),
                method="crossnobis",
                descriptor="conds",
                cv_descriptor="run",
                noise=per_time[t],
            ).get_vectors()
            for t in range(n_times)
        ]
    )
    ours = crossnobis_rdms(data, conditions, order, folds, precision=per_time)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("shrinkage", ["auto", 0.3, 0.0])
def test_fold_covariances_are_the_shrunk_training_residual_covariance(rng, shrinkage):
    from sklearn.covariance import empirical_covariance, ledoit_wolf, shrunk_covariance
    from sklearn.preprocessing import StandardScaler

    data, conditions, groups, order = epochs(rng, repeats=5)
    folds = crossval_folds(conditions, groups)
    lda = fold_covariances(data, conditions, order, folds, shrinkage)
    noise = fold_covariances(data, conditions, order, folds, shrinkage, unbiased=True)
    for f in range(5):
        for t in (0, 3):
            res = residuals(data, conditions, folds != f, t)
            if shrinkage == "auto":  # what sklearn's LDA does per class, on the pooled residuals
                scaler = StandardScaler().fit(res)
                expected = ledoit_wolf(scaler.transform(res))[0]
                expected = expected * np.outer(scaler.scale_, scaler.scale_)
            else:
                expected = shrunk_covariance(empirical_covariance(res), shrinkage)
            np.testing.assert_allclose(lda[f, t], expected, rtol=1e-9, atol=1e-12)
            dof = len(res) - len(order)
            np.testing.assert_allclose(noise[f, t], expected * len(res) / dof, rtol=1e-9)


def test_crossnobis_with_estimated_noise_is_the_per_fold_formula(rng):
    data, conditions, groups, order = epochs(rng)
    # c1 has no epoch in run 0, c5 only epochs in run 2 (never trained and tested at once)
    keep = ~((conditions == "c1") & (groups == 0)) & ~((conditions == "c5") & (groups != 2))
    data, conditions, groups = data[keep], conditions[keep], groups[keep]
    folds = crossval_folds(conditions, groups)
    ours = crossnobis_rdms(data, conditions, order, folds)
    noise = fold_covariances(data, conditions, order, folds, "auto", unbiased=True)
    p = data.shape[1]
    i, j = np.triu_indices(len(order), k=1)
    for t in range(data.shape[2]):
        for k, (a, b) in enumerate(zip(i, j, strict=True)):
            terms = []
            for f in range(4):

                def mean(c, rows, t=t):
                    return data[(conditions == order[c]) & rows, :, t].mean(0)

                train, test = folds != f, folds == f
                have = [
                    ((conditions == order[c]) & rows).any()
                    for c in (a, b)
                    for rows in (train, test)
                ]
                if all(have):
                    diff_train = mean(a, train) - mean(b, train)
                    diff_test = mean(a, test) - mean(b, test)
                    terms.append(diff_train @ np.linalg.inv(noise[f, t]) @ diff_test / p)
            if 5 in (a, b):
                assert np.isnan(ours[t, k])
            else:
                assert ours[t, k] == pytest.approx(np.mean(terms), rel=1e-9, abs=1e-12)


def test_crossnobis_through_condition_rdms_finds_the_planted_patterns(rng):
    data, conditions, groups, order = epochs(rng, repeats=6, n_channels=10, n_times=8, signal=0)
    patterns = rng.normal(size=(6, 10))
    data[:, :, 4:] += patterns[np.repeat(np.arange(6), 6)][:, :, None]  # onset at sample 4
    rdms = condition_rdms(data, conditions, np.arange(8) * 5.0, EpochsConfig("crossnobis"), groups)
    assert rdms.values.dtype == np.float32 and rdms.concept_ids == tuple(order)
    assert rdms.values[4:].mean() > 0.5  # true squared distances ~ 2 per channel
    assert abs(rdms.values[:4].mean()) < 0.1  # cross-validated: ~0 without a signal
    stratified = condition_rdms(data, conditions, np.arange(8) * 5.0, EpochsConfig("crossnobis"))
    assert np.corrcoef(stratified.values[4:].ravel(), rdms.values[4:].ravel())[0, 1] > 0.8


# ---------------------------------------------------------------------------- LDA


def sklearn_accuracies(data, conditions, order, folds, **lda_options):
    """Pairwise accuracy (%) of sklearn's LDA refitted per pair, fold and time."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    i, j = np.triu_indices(len(order), k=1)
    out = np.full((data.shape[2], len(i)), np.nan)
    for k, (a, b) in enumerate(zip(i, j, strict=True)):
        rows = np.flatnonzero(np.isin(conditions, [order[a], order[b]]))
        y = (conditions[rows] == order[b]).astype(int)
        for t in range(data.shape[2]):
            right = tested = 0
            for f in np.unique(folds):
                train, test = folds[rows] != f, folds[rows] == f
                if len(np.unique(y[train])) < 2 or not test.any():
                    continue
                options = {
                    key: value(f, t) if callable(value) else value
                    for key, value in lda_options.items()
                }
                lda = LinearDiscriminantAnalysis(solver="lsqr", **options)
                lda.fit(data[rows[train], :, t], y[train])
                right += (lda.predict(data[rows[test], :, t]) == y[test]).sum()
                tested += test.sum()
            if tested:
                out[t, k] = 100.0 * right / tested
    return out


@pytest.mark.parametrize("shrinkage", ["auto", 0.3])
@pytest.mark.parametrize("by_group", [True, False, "missing"])
def test_lda_equals_sklearn_on_the_shared_covariance(rng, shrinkage, by_group):
    data, conditions, groups, order = epochs(rng, repeats=5)
    if by_group == "missing":  # c1 has no epoch in run 0, c5 only epochs in run 2
        keep = ~((conditions == "c1") & (groups == 0)) & ~((conditions == "c5") & (groups != 2))
        data, conditions, groups = data[keep], conditions[keep], groups[keep]
    folds = crossval_folds(conditions, groups if by_group else None, n_splits=3, seed=1)
    covariances = fold_covariances(data, conditions, order, folds, shrinkage)
    expected = sklearn_accuracies(
        data,
        conditions,
        order,
        folds,
        covariance_estimator=lambda f, t: FixedCovariance(covariances[f, t]),
    )
    ours = lda_rdms(data, conditions, order, folds, shrinkage)
    np.testing.assert_allclose(ours, expected, rtol=1e-12)  # one epoch more would be 100/20


def test_lda_of_two_conditions_equals_plain_sklearn_shrinkage(rng):
    data, conditions, groups, order = epochs(rng, n_conditions=2, repeats=9, signal=0.4)
    keep = np.arange(len(conditions)) != 3  # unequal training counts: the prior term matters
    data, conditions, groups = data[keep], conditions[keep], groups[keep] % 3
    folds = crossval_folds(conditions, groups)
    expected = sklearn_accuracies(data, conditions, order, folds, shrinkage=0.4)
    ours = lda_rdms(data, conditions, order, folds, 0.4)
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    assert 0 < ours.min() and ours.max() <= 100


def test_lda_pairs_without_a_fold_to_decode_them_are_nan(rng):
    data, conditions, groups, order = epochs(rng)
    only_run_0 = np.isin(conditions, ["c4", "c5"]) & (groups != 0)
    data, conditions, groups = data[~only_run_0], conditions[~only_run_0], groups[~only_run_0]
    accuracy = lda_rdms(data, conditions, order, crossval_folds(conditions, groups))
    pairs = list(zip(*np.triu_indices(6, k=1), strict=True))
    nan = np.isnan(accuracy)
    assert nan[:, pairs.index((4, 5))].all()  # neither is ever trained with the other
    assert nan.sum() == data.shape[2]
    rdms = condition_rdms(
        data, conditions, np.arange(5.0), EpochsConfig("decoding", n_splits=3), groups=groups
    )
    np.testing.assert_array_equal(np.isnan(rdms.values), nan)


# ---------------------------------------------------------------------------- folds, inputs


def test_folds_by_group_or_dealt_per_condition(rng):
    conditions = np.repeat(ORDER[:3], [7, 5, 2])
    runs = np.array(list("abcabcababcabc"))
    np.testing.assert_array_equal(
        crossval_folds(conditions, runs), np.unique(runs, return_inverse=True)[1]
    )
    folds = crossval_folds(conditions, n_splits=3, seed=4)
    for c, n in zip(ORDER[:3], (7, 5, 2), strict=True):
        counts = np.bincount(folds[conditions == c], minlength=3)
        assert counts.max() - counts.min() <= 1 and counts.sum() == n
    np.testing.assert_array_equal(folds, crossval_folds(conditions, n_splits=3, seed=4))
    assert not np.array_equal(folds, crossval_folds(conditions, n_splits=3, seed=5))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d, c, g: EpochsConfig(method="svm"), "'correlation', 'decoding', 'crossnobis'"),
        (lambda d, c, g: EpochsConfig(shrinkage=1.5), "'shrinkage'.*got 1.5"),
        (lambda d, c, g: EpochsConfig(shrinkage="oas"), "expected 'auto' or a number"),
        (lambda d, c, g: crossval_folds(c, np.zeros(len(c))), "at least 2 sessions/runs"),
        (lambda d, c, g: crossval_folds(c, g[:-1]), "23 fold labels for 24 epochs"),
        (
            lambda d, c, g: crossnobis_rdms(d, c, ORDER, g % 2, precision=np.eye(3)),
            r"precision of shape \(3, 3\).*expected \(8, 8\) or \(5, 8, 8\)",
        ),
        (lambda d, c, g: lda_rdms(d, c, ORDER, g, shrinkage=-1), "'shrinkage'"),
        (
            lambda d, c, g: crossnobis_rdms(d[g < 2], c[g < 2], ORDER, g[g < 2]),
            "single training epoch",
        ),
        (
            lambda d, c, g: lda_rdms(d, c, ORDER, g % 2, shrinkage=0.0),
            "fold 0 is singular: 6 residual degrees of freedom .* for 8 channels",
        ),
        (
            lambda d, c, g: condition_rdms(d, c, np.arange(5.0), EpochsConfig("crossnobis"), g[:3]),
            "3 fold labels for 24 epochs",
        ),
    ],
)
def test_bad_inputs_are_one_clear_error(rng, call, message):
    data, conditions, groups, _ = epochs(rng)
    with pytest.raises(InputError, match=message):
        call(data, conditions, groups)


def test_cli_imports_crossnobis_epochs_and_names_a_bad_shrinkage(tmp_path, rng, capsys):
    import mne
    import pandas as pd

    data, conditions, groups, _ = epochs(rng, n_channels=6)
    ids = ["aardvark", "abacus", "accordion", "acorn", "air_conditioner", "air_mattress"]
    concept = np.array(ids)[np.searchsorted(ORDER, conditions)]
    info = mne.create_info(6, 200.0, "mag")
    events = np.column_stack(
        [np.arange(len(concept)) * 300, np.zeros(len(concept), int), np.ones(len(concept), int)]
    )
    frame = pd.DataFrame({"concept": concept, "run": groups})
    mne.EpochsArray(data * 1e-13, info, events, metadata=frame, verbose="error").save(
        tmp_path / "sub-01-epo.fif", verbose="error"
    )
    args = ["meg", "import", str(tmp_path / "sub-01-epo.fif"), "--concept-column", "concept"]
    code, out, err = run(
        capsys,
        *args,
        "--out",
        str(tmp_path / "a.h5"),
        "--method",
        "crossnobis",
        "--shrinkage",
        "lots",
    )
    assert_one_line_error(code, out, err, "'--shrinkage'", "'lots'")
    code, _, err = run(
        capsys,
        *args,
        "--out",
        str(tmp_path / "s.h5"),
        "--method",
        "crossnobis",
        "--fold-column",
        "run",
        "--shrinkage",
        "0.2",
        "--quiet",
    )
    assert code == 0, err
    with RDMStore(tmp_path / "s.h5") as store:
        assert store.attrs["kind"] == "crossnobis_distance"
        values = store.read().values[0]
    config = EpochsConfig("crossnobis", shrinkage=0.2)
    direct = condition_rdms(data, concept, np.arange(5) * 5.0, config, groups, order=ids)
    np.testing.assert_allclose(values, direct.values, rtol=1e-4, atol=1e-6)
    path = import_epochs(
        [tmp_path / "sub-01-epo.fif"],
        tmp_path / "d.h5",
        config=EpochsConfig("decoding"),
        concept_column="concept",
        fold_column="run",
        verbose=False,
    )
    with RDMStore(path) as store:
        assert store.attrs["kind"] == "decoding_accuracy"
