"""Bootstrap and permutation statistics for RDM comparisons, and proportion CIs."""

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from clip_hba._validation import InputError
from clip_hba.data import ConceptEmbedding
from clip_hba.rsa import (
    RDM,
    bootstrap_rdm_correlation,
    compare,
    permutation_test_rdm,
    proportion_ci,
)


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
    assert low < result.value < high
    assert result.samples.size == 300
    np.testing.assert_allclose(result.ci, np.percentile(result.samples, [2.5, 97.5]))
    narrow = bootstrap_rdm_correlation(a, b, n_bootstrap=300, ci_level=0.5, seed=5)
    np.testing.assert_allclose(narrow.ci, np.percentile(result.samples, [25, 75]))
    again = bootstrap_rdm_correlation(a, b, n_bootstrap=300, seed=5)
    np.testing.assert_array_equal(again.samples, result.samples)
    assert bootstrap_rdm_correlation(a, b, n_bootstrap=300, seed=6).ci != result.ci


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
