"""Bootstrap and permutation statistics for RDM comparisons, and proportion CIs."""

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import pdist, squareform

from clip_hba._validation import InputError
from clip_hba.data import ConceptEmbedding
from clip_hba.rsa import (
    METHODS,
    RDM,
    bootstrap_rdm_correlation,
    compare,
    permutation_test_rdm,
    proportion_ci,
)
from clip_hba.rsa.bootstrap import _batched_statistic, _resampled_statistic


def _related_rdms(rng, n=30, noise=1.0):
    latent = rng.normal(size=(n, 4))
    a = pdist(latent + noise * rng.normal(size=latent.shape))
    b = pdist(latent + noise * rng.normal(size=latent.shape))
    return a, b


def test_bootstrap_ci_covers_value_and_is_seeded(rng):
    a, b = _related_rdms(rng)
    result = bootstrap_rdm_correlation(a, b, n_bootstrap=300, seed=5)
    assert result.value == pytest.approx(compare(a, b))
    low, high = result.ci
    assert result.samples.min() <= low < result.value < high <= result.samples.max()
    assert result.samples.size == 300
    narrow = bootstrap_rdm_correlation(a, b, n_bootstrap=300, ci_level=0.5, seed=5)
    np.testing.assert_array_equal(narrow.samples, result.samples)
    assert low < narrow.ci[0] < narrow.ci[1] < high
    again = bootstrap_rdm_correlation(a, b, n_bootstrap=300, seed=5)
    np.testing.assert_array_equal(again.samples, result.samples)
    assert again.ci == result.ci
    assert bootstrap_rdm_correlation(a, b, n_bootstrap=300, seed=6).ci != result.ci


def test_bootstrap_ci_is_bca(rng):
    """The interval is scipy's BCa interval over conditions (jackknife acceleration)."""
    a, b = _related_rdms(rng, n=15)
    result = bootstrap_rdm_correlation(a, b, method="pearson", n_bootstrap=200, seed=3)

    def statistic(drawn):
        u, v = np.triu_indices(drawn.size, 1)
        keep = drawn[u] != drawn[v]
        sq_a, sq_b = squareform(a), squareform(b)
        pairs = (drawn[u][keep], drawn[v][keep])
        return np.corrcoef(sq_a[pairs], sq_b[pairs])[0, 1]

    expected = stats.bootstrap(
        (np.arange(15),), statistic, n_resamples=200, vectorized=False, method="BCa", rng=3
    )
    np.testing.assert_allclose(result.samples, expected.bootstrap_distribution)
    np.testing.assert_allclose(result.ci, tuple(expected.confidence_interval))


def test_bootstrap_resamples_conditions_not_pairs(rng):
    """A sample is the RDM of the drawn conditions, without the pairs of a condition with itself."""
    a, b = _related_rdms(rng, n=12)
    result = bootstrap_rdm_correlation(a, b, method="pearson", n_bootstrap=3, seed=9)
    draw_rng = np.random.default_rng(9)
    sq_a, sq_b = RDM(a, list("abcdefghijkl")).square(), RDM(b, list("abcdefghijkl")).square()
    for k in range(3):
        drawn = draw_rng.integers(0, 12, size=12)
        u, v = np.triu_indices(12, 1)
        p, q = drawn[u], drawn[v]
        keep = p != q
        expected = np.corrcoef(sq_a[p[keep], q[keep]], sq_b[p[keep], q[keep]])[0, 1]
        assert result.samples[k] == pytest.approx(expected)


def test_bootstrap_ci_narrows_with_more_conditions(rng):
    small = bootstrap_rdm_correlation(*_related_rdms(rng, n=15), n_bootstrap=200)
    large = bootstrap_rdm_correlation(*_related_rdms(rng, n=80), n_bootstrap=200)
    assert np.diff(large.ci)[0] < np.diff(small.ci)[0]


@pytest.mark.parametrize("method", METHODS)
def test_bootstrap_ci_of_identical_rdms_is_one(rng, method):
    """Copies of a drawn condition tie their pairs; tau-a and rho-a must not count that."""
    a = pdist(rng.normal(size=(25, 4)))
    result = bootstrap_rdm_correlation(a, a, method=method, n_bootstrap=100, seed=2)
    assert result.value == pytest.approx(1.0)
    assert result.ci[0] <= result.value <= result.ci[1]
    assert result.ci[0] <= 1.0 <= result.ci[1]
    np.testing.assert_allclose(result.samples, 1.0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_bootstrap_ci_of_near_identical_rdms_holds_the_estimate(method):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        a = pdist(rng.normal(size=(30, 5)))
        b = a + 1e-3 * rng.normal(size=a.size)
        result = bootstrap_rdm_correlation(a, b, method=method, n_bootstrap=200, seed=seed)
        assert result.ci[0] <= result.value <= result.ci[1] <= 1.0 + 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_bootstrap_ci_of_related_rdms_is_sensible(rng, method):
    a, b = _related_rdms(rng, n=30)
    result = bootstrap_rdm_correlation(a, b, method=method, n_bootstrap=300, seed=4)
    low, high = result.ci
    assert low < result.value < high
    spread = 2 * 1.96 * result.samples.std()
    assert 0.7 * spread < high - low < 1.3 * spread
    assert 0.01 < high - low < 0.5


def test_bootstrap_keeps_the_ties_of_the_data(rng):
    """Tau-a and rho-a of a categorical RDM with itself stay below 1 in resamples too."""
    categories = np.repeat(np.arange(4), 6)
    model = pdist(categories[:, None], "hamming")  # 0 within, 1 between categories
    for method in ("kendall_tau_a", "rho_a"):
        result = bootstrap_rdm_correlation(model, model, method=method, n_bootstrap=200)
        assert result.value < 0.9
        assert result.ci[0] <= result.value <= result.ci[1] < 1.0
        assert 0.2 < np.mean(result.samples < result.value) < 0.8


def test_resampled_tau_a_leaves_out_comparisons_of_a_pair_with_its_copies(rng):
    a, b = _related_rdms(rng, n=8)
    drawn = np.array([0, 0, 1, 2, 2, 2, 5, 7])
    u, v = np.triu_indices(8, 1)
    keep = drawn[u] != drawn[v]
    p, q = np.minimum(drawn[u], drawn[v])[keep], np.maximum(drawn[u], drawn[v])[keep]
    sq_a, sq_b = squareform(a), squareform(b)
    concordance, count = 0.0, 0
    for i in range(p.size):
        for j in range(i + 1, p.size):
            if (p[i], q[i]) == (p[j], q[j]):
                continue  # one pair and its copy
            dx = sq_a[p[i], q[i]] - sq_a[p[j], q[j]]
            dy = sq_b[p[i], q[i]] - sq_b[p[j], q[j]]
            concordance += np.sign(dx) * np.sign(dy)
            count += 1
    statistic = _resampled_statistic(a, b, "kendall_tau_a")
    assert statistic(drawn) == pytest.approx(concordance / count)
    assert statistic(np.arange(8)) == pytest.approx(compare(a, b, "kendall_tau_a"))


def test_resampled_rho_a_is_one_for_identical_rdms_and_rho_a_without_copies(rng):
    a, b = _related_rdms(rng, n=8)
    statistic = _resampled_statistic(a, a, "rho_a")
    assert statistic(np.array([0, 0, 1, 2, 2, 2, 5, 7])) == pytest.approx(1.0)
    assert _resampled_statistic(a, b, "rho_a")(np.arange(8)) == pytest.approx(
        compare(a, b, "rho_a")
    )


def test_bootstrap_aligns_rdm_objects_by_id(rng):
    features = rng.normal(size=(20, 6))
    ids = [f"c{k}" for k in range(20)]
    order = rng.permutation(20)
    a = RDM.from_embedding(ConceptEmbedding(features, ids))
    b = RDM.from_embedding(ConceptEmbedding(features[order] + 0.1, [ids[k] for k in order]))
    result = bootstrap_rdm_correlation(a, b, n_bootstrap=50)
    assert result.value == pytest.approx(1.0)


def test_permutation_test(rng):
    a, b = _related_rdms(rng, n=25, noise=0.5)
    related = permutation_test_rdm(a, b, n_permutations=200, seed=1)
    assert related.p_value == pytest.approx(1 / 201)
    assert related.null.size == 200 and abs(related.null.mean()) < 0.1
    c = pdist(rng.normal(size=(25, 4)))
    unrelated = permutation_test_rdm(a, c, n_permutations=200, seed=1)
    assert unrelated.p_value > 0.05
    two_sided = permutation_test_rdm(a, c, n_permutations=200, alternative="two-sided", seed=1)
    expected = (1 + np.sum(np.abs(unrelated.null) >= abs(unrelated.value))) / 201
    assert two_sided.p_value == pytest.approx(expected)
    less = permutation_test_rdm(a, b, n_permutations=200, alternative="less", seed=1)
    assert less.p_value == pytest.approx(1.0)


def test_permutation_null_relabels_conditions(rng):
    """Each null value is the statistic against b with its rows and columns permuted together."""
    a, b = _related_rdms(rng, n=10)
    result = permutation_test_rdm(a, b, method="pearson", n_permutations=4, seed=11)
    order_rng = np.random.default_rng(11)
    square_b = squareform(b)
    for k in range(4):
        order = order_rng.permutation(10)
        permuted = squareform(square_b[np.ix_(order, order)], checks=False)
        assert result.null[k] == pytest.approx(np.corrcoef(a, permuted)[0, 1])


def test_proportion_ci_is_wilson():
    low, high = proportion_ci(60, 100)
    z = 1.959963984540054
    centre = (0.6 + z**2 / 200) / (1 + z**2 / 100)
    half = z / (1 + z**2 / 100) * np.sqrt(0.6 * 0.4 / 100 + z**2 / 40000)
    assert (low, high) == pytest.approx((centre - half, centre + half))


def test_statistics_reject_bad_arguments(rng):
    a, b = _related_rdms(rng, n=10)
    with pytest.raises(InputError, match="n_bootstrap"):
        bootstrap_rdm_correlation(a, b, n_bootstrap=0)
    with pytest.raises(InputError, match="ci_level"):
        bootstrap_rdm_correlation(a, b, ci_level=95)
    with pytest.raises(InputError, match="'alternative'"):
        permutation_test_rdm(a, b, alternative="bigger")
    with pytest.raises(InputError, match="at least one trial"):
        proportion_ci(0, 0)


@pytest.mark.parametrize("method", METHODS)
def test_bootstrap_ci_holds_the_estimate_over_a_grid_of_near_identical_rdms(method):
    """Where BCa misses the estimate (nearly every resample below it), the interval falls back
    to the percentile interval centred on the estimate."""
    for n, noise, seed in [(30, 1e-2, 0), (48, 1e-3, 1), (48, 3e-2, 2), (48, 1e-2, 3)]:
        rng = np.random.default_rng(seed)
        a = pdist(rng.normal(size=(n, 5)))
        b = a + noise * rng.normal(size=a.size)
        result = bootstrap_rdm_correlation(a, b, method=method, n_bootstrap=100, seed=seed)
        assert result.ci[0] <= result.value <= result.ci[1] <= 1.0, (n, noise, seed)


def test_bootstrap_jackknife_is_grouped_for_many_conditions(rng, monkeypatch):
    from clip_hba.rsa import bootstrap as rsa_bootstrap

    calls = []
    original = rsa_bootstrap._groups
    monkeypatch.setattr(rsa_bootstrap, "_groups", lambda c: calls.append(c.size) or original(c))
    a, b = _related_rdms(rng, n=250)
    result = bootstrap_rdm_correlation(a, b, method="pearson", n_bootstrap=20, seed=0)
    assert calls == [250] and len(original(np.arange(250))) == 200
    assert result.ci[0] < result.value < result.ci[1]


@pytest.mark.parametrize("method", ["spearman", "pearson", "cosine"])
def test_resamples_compared_at_once_equal_one_at_a_time(rng, method):
    n = 12
    a, b = _related_rdms(rng, n=n)
    a[3], b[20] = np.nan, np.nan  # pairs left out of every resample holding them
    a[30:45] = a[30]  # ties
    drawn = rng.integers(0, n, size=(60, n))
    drawn[0] = 4  # one condition only: no pair, undefined
    drawn[1] = [5] * (n - 1) + [6]  # one pair, copied: constant (undefined but for cosine)
    one, batched = _resampled_statistic(a, b, method), _batched_statistic(a, b, method)
    expected = np.array([one(d) for d in drawn])
    got = batched(drawn)
    assert got.shape == (60,) and np.isnan(got[0]) and np.isnan(expected[0])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got[1:], expected[1:], rtol=1e-12)
    # scipy's layout, resamples along the first axis, and one resample alone (the jackknife)
    np.testing.assert_allclose(batched(drawn[2:].T, axis=0), expected[2:], rtol=1e-12)
    assert batched(drawn[7]) == pytest.approx(one(drawn[7]), rel=1e-12)


def test_bootstrap_in_batches_draws_the_resamples_of_one_batch(rng, monkeypatch):
    from clip_hba.rsa import bootstrap as rsa_bootstrap

    a, b = _related_rdms(rng, n=20)
    whole = bootstrap_rdm_correlation(a, b, n_bootstrap=200, seed=1)
    monkeypatch.setattr(rsa_bootstrap, "_BATCH_VALUES", 190 * 7)  # batches of 7 resamples
    batched = bootstrap_rdm_correlation(a, b, n_bootstrap=200, seed=1)
    np.testing.assert_allclose(batched.samples, whole.samples, rtol=1e-12)
    assert batched.ci == pytest.approx(whole.ci, rel=1e-12)
