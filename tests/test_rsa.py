"""RDMs from features and RDM comparisons, against scipy and rsatoolbox."""

import itertools
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import pdist, squareform

from clip_hba._validation import InputError
from clip_hba.data import ConceptEmbedding
from clip_hba.rsa import (
    METHODS,
    RDM,
    align,
    compare,
    correlate,
    from_rsatoolbox,
    mean_rdm,
    n_conditions,
    pair_index,
    rdm,
    rdm_torch,
    standardize,
    to_condensed,
    to_rsatoolbox,
    to_square,
)

SCIPY_METRIC = {"pearson": "correlation", "cosine": "cosine", "euclidean": "euclidean"}


@pytest.mark.parametrize("metric", ["pearson", "cosine", "euclidean"])
def test_rdm_matches_scipy_pdist(metric, rng):
    features = rng.normal(size=(30, 12))
    np.testing.assert_allclose(
        rdm(features, metric), pdist(features, SCIPY_METRIC[metric]), atol=1e-12
    )
    square = rdm(features, metric, condensed=False)
    np.testing.assert_allclose(
        square, squareform(pdist(features, SCIPY_METRIC[metric])), atol=1e-12
    )
    assert np.all(np.diag(square) == 0)


@pytest.mark.parametrize("metric", ["pearson", "cosine", "euclidean"])
def test_rdm_torch_batches_over_leading_axes(metric):
    torch.manual_seed(0)
    features = torch.randn(5, 3, 20, 8, dtype=torch.float64)  # layers x time x concepts x feats
    batched = rdm_torch(features, metric)
    assert batched.shape == (5, 3, 190)
    for a, b in itertools.product(range(5), range(3)):
        expected = pdist(features[a, b].numpy(), SCIPY_METRIC[metric])
        np.testing.assert_allclose(batched[a, b].numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("metric", ["pearson", "cosine", "euclidean"])
def test_rdm_torch_is_differentiable(metric):
    torch.manual_seed(0)
    features = torch.randn(4, 10, 6, dtype=torch.float64)
    features.data[:, 3] = features.data[:, 2]  # a zero distance must not give NaN gradients
    features.requires_grad_(True)
    rdm_torch(features, metric).square().sum().backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    sample = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: rdm_torch(x, metric), (sample,))


def test_rdm_torch_rejects_1d_features():
    with pytest.raises(InputError, match="n_conditions, n_features"):
        rdm_torch(torch.randn(5))
    with pytest.raises(InputError, match="'metric'.*'pearson'.*but got 'corr'"):
        rdm_torch(torch.randn(5, 3), metric="corr")


def test_square_condensed_roundtrip(rng):
    condensed = rng.random(45)
    assert n_conditions(45) == 10
    np.testing.assert_array_equal(to_condensed(to_square(condensed)), condensed)
    np.testing.assert_array_equal(to_square(condensed), squareform(condensed))
    with pytest.raises(InputError, match="n\\*\\(n-1\\)/2"):
        n_conditions(44)


def test_pair_index_matches_squareform(rng):
    n = 9
    position = squareform(np.arange(1, n * (n - 1) // 2 + 1)) - 1
    a, b = rng.integers(0, n, 50), rng.integers(0, n, 50)
    ok = a != b
    np.testing.assert_array_equal(pair_index(a[ok], b[ok], n), position[a[ok], b[ok]])


def _rsatoolbox_compare(x, y, method):
    from rsatoolbox.rdm import RDMs
    from rsatoolbox.rdm import compare as rsa_compare

    name = {
        "spearman": "spearman",
        "pearson": "corr",
        "kendall_tau_a": "tau-a",
        "rho_a": "rho-a",
        "cosine": "cosine",
    }[method]
    return float(rsa_compare(RDMs(x[None]), RDMs(y[None]), method=name)[0, 0])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ties", [False, True])
def test_compare_agrees_with_rsatoolbox(method, ties, rng):
    x, y = rng.random(190), rng.random(190) + 0.3 * np.arange(190) / 190
    if ties:
        x, y = np.round(x, 1), np.round(y, 1)
    assert compare(x, y, method) == pytest.approx(_rsatoolbox_compare(x, y, method), abs=1e-6)


def test_compare_agrees_with_scipy(rng):
    x, y = rng.random(300), rng.random(300) + np.linspace(0, 0.5, 300)
    assert compare(x, y, "spearman") == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert compare(x, y, "pearson") == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    # without ties tau-a equals scipy's tau-b
    assert compare(x, y, "kendall_tau_a") == pytest.approx(
        stats.kendalltau(x, y).statistic, abs=1e-12
    )
    cosine = 1 - pdist(np.stack([x, y]), "cosine")[0]
    assert compare(x, y, "cosine") == pytest.approx(cosine, abs=1e-12)


def test_kendall_tau_a_with_ties_matches_definition(rng):
    x, y = rng.integers(0, 4, 45).astype(float), rng.integers(0, 4, 45).astype(float)
    i, j = np.triu_indices(45, 1)
    tau_a = np.sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])) / len(i)
    assert compare(x, y, "kendall_tau_a") == pytest.approx(tau_a, abs=1e-12)
    assert compare(np.ones(45), y, "kendall_tau_a") == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_compare_ignores_nan_pairs(method, rng):
    x, y = rng.random(105), rng.random(105) + np.linspace(0, 1, 105)
    x_nan, y_nan = x.copy(), y.copy()
    x_nan[[3, 50]] = np.nan
    y_nan[[7]] = np.nan
    keep = np.ones(105, bool)
    keep[[3, 50, 7]] = False
    value = compare(x_nan, y_nan, method)
    assert value == pytest.approx(_rsatoolbox_compare(x[keep], y[keep], method), abs=1e-6)
    # NaN is never read as zero dissimilarity
    x_zero = np.where(np.isnan(x_nan), 0.0, x_nan)
    assert value != pytest.approx(compare(x_zero, np.where(np.isnan(y_nan), 0.0, y_nan), method))


def test_compare_accepts_square_numpy_and_torch(rng):
    x, y = rng.random(66), rng.random(66)
    expected = compare(x, y)
    assert compare(squareform(x), torch.from_numpy(squareform(y))) == pytest.approx(expected)
    assert compare(torch.from_numpy(x).float(), y) == pytest.approx(expected, abs=1e-6)


def test_compare_rejects_bad_rdms(rng):
    square = squareform(rng.random(45))
    asymmetric = square.copy()
    asymmetric[0, 1] += 0.5
    with pytest.raises(InputError, match="not symmetric"):
        compare(asymmetric, square)
    with pytest.raises(InputError, match="n x n"):
        compare(np.ones((4, 5)), square)
    with pytest.raises(InputError, match="n\\*\\(n-1\\)/2"):
        compare(np.ones(44), np.ones(44))
    with pytest.raises(InputError, match="differ in size"):
        compare(np.ones(45), np.ones(36))
    with pytest.raises(InputError, match="at least 3"):
        compare(np.array([1.0, np.nan, 2.0]), np.array([1.0, 2.0, 3.0]))
    with pytest.raises(InputError, match="constant"):
        compare(np.ones(45), rng.random(45))
    with pytest.raises(InputError, match="infinite"):
        compare(np.r_[np.inf, rng.random(44)], rng.random(45))
    with pytest.raises(InputError, match="'method'.*but got 'spearmen'"):
        compare(rng.random(45), rng.random(45), method="spearmen")


def test_square_rdm_with_one_triangle_filled(rng):
    condensed = rng.random(45)
    square = to_square(condensed)
    half = np.where(np.tril(np.ones((10, 10), bool)), np.nan, square)  # upper triangle only
    half[0, 1], half[1, 0] = np.nan, np.nan  # a pair missing in both halves stays missing
    result = to_condensed(half)
    assert np.isnan(result[0]) and np.isnan(result).sum() == 1
    np.testing.assert_array_equal(result[1:], condensed[1:])
    np.testing.assert_array_equal(to_condensed(half.T), result)


def test_square_rdm_needs_zero_diagonal(rng):
    similarity = 1 - to_square(rng.random(45))  # a similarity matrix, diagonal 1
    with pytest.raises(InputError, match="non-zero diagonal.*similarity matrix"):
        compare(similarity, rng.random(45))
    with_nan_diagonal = to_square(rng.random(45))
    np.fill_diagonal(with_nan_diagonal, np.nan)
    assert to_condensed(with_nan_diagonal).shape == (45,)


def test_compare_refuses_to_mix_rdm_and_array(rng):
    rdm_ = RDM(rng.random(10), list("abcde"))
    with pytest.raises(TypeError, match="Cannot align an RDM with a plain array"):
        compare(rdm_, rng.random(10))


def test_rdm_objects_are_aligned_by_id(rng):
    ids = [f"c{k}" for k in range(12)]
    features = rng.normal(size=(12, 5))
    a = RDM.from_embedding(ConceptEmbedding(features, ids))
    order = rng.permutation(12)
    b = RDM.from_embedding(ConceptEmbedding(features[order], [ids[k] for k in order]))
    assert not np.allclose(a.condensed, b.condensed)  # same concepts, other order
    assert compare(a, b, "pearson") == pytest.approx(1.0)
    subset = b.select(ids[2:9])
    a_aligned, b_aligned = align(a, subset)
    assert a_aligned.concept_ids == tuple(ids[2:9]) == b_aligned.concept_ids
    np.testing.assert_allclose(a_aligned.condensed, b_aligned.condensed)
    np.testing.assert_allclose(subset.square(), a.square()[2:9, 2:9])


def test_rdm_validation():
    with pytest.raises(InputError, match="needs 4 concept ids"):
        RDM(np.ones(6), ["a", "b", "c"])
    with pytest.raises(InputError, match="repeats"):
        RDM(np.ones(3), ["a", "b", "a"])
    with pytest.raises(InputError, match="share 1 concept"):
        align(RDM(np.ones(3), ["a", "b", "c"]), RDM(np.ones(3), ["a", "x", "y"]))


def test_rsatoolbox_roundtrip(rng):
    original = RDM(rng.random(10), ["a", "b", "c", "d", "e"], metric="pearson")
    converted = to_rsatoolbox(original)
    assert converted.n_rdm == 1 and converted.n_cond == 5
    assert converted.pattern_descriptors["concept_id"] == ["a", "b", "c", "d", "e"]
    back = from_rsatoolbox(converted)
    assert back.concept_ids == original.concept_ids
    np.testing.assert_array_equal(back.condensed, original.condensed)
    assert back.metric == "pearson"
    with pytest.raises(InputError, match="no pattern descriptor 'stimulus'"):
        from_rsatoolbox(converted, descriptor="stimulus")


def test_read_rdm_formats(tmp_path, rng):
    from clip_hba.rsa import read_rdm

    condensed = rng.random(10)
    square = to_square(condensed)
    square[1, 3] = square[3, 1] = np.nan  # a missing pair stays missing
    np.savetxt(tmp_path / "square.txt", square)
    np.savetxt(tmp_path / "row.csv", condensed[None], delimiter=",")
    np.savetxt(tmp_path / "column.txt", condensed)
    (tmp_path / "ids.txt").write_text("a\nb\nc\nd\ne\n")
    from_square = read_rdm(tmp_path / "square.txt")
    assert np.isnan(from_square[pair_index(np.array([1]), np.array([3]), 5)]).all()
    np.testing.assert_allclose(
        from_square[~np.isnan(from_square)], condensed[~np.isnan(from_square)]
    )
    np.testing.assert_allclose(read_rdm(tmp_path / "row.csv"), condensed)
    np.testing.assert_allclose(read_rdm(tmp_path / "column.txt"), condensed)
    with_ids = read_rdm(tmp_path / "column.txt", ids=tmp_path / "ids.txt")
    assert isinstance(with_ids, RDM) and with_ids.concept_ids == ("a", "b", "c", "d", "e")


def test_asymmetric_square_rdms_need_an_explicit_policy(rng):
    condensed = rng.uniform(1, 2, 45)
    square = to_square(condensed)
    square[7, 3] += 0.5  # the largest asymmetry
    square[2, 0] += 0.1
    with pytest.raises(InputError) as err:
        to_condensed(square, name="RDM x")
    message = str(err.value)
    assert "RDM x is not symmetric: [3, 7] =" in message and "the largest of 2" in message
    assert "a difference of 0.5" in message and "% of the largest |value|" in message
    assert "--asymmetric average|upper|lower" in message
    k = pair_index(np.array([3]), np.array([7]), 10)[0]
    upper, lower = square[3, 7], square[7, 3]
    assert to_condensed(square, asymmetry="average")[k] == pytest.approx((upper + lower) / 2)
    assert to_condensed(square, asymmetry="upper")[k] == upper
    assert to_condensed(square, asymmetry="lower")[k] == lower
    np.testing.assert_array_equal(to_condensed(square.T, asymmetry="lower"), condensed + 0)
    # float round-off is no asymmetry
    off = to_square(condensed)
    off[np.tril_indices(10, -1)] *= 1 + 1e-7
    np.testing.assert_array_equal(to_condensed(off), condensed)


def test_to_condensed_diagonal_check_can_be_skipped(rng):
    similarity = 1 - to_square(rng.random(45))
    with pytest.raises(InputError, match="non-zero diagonal"):
        to_condensed(similarity, asymmetry="average")
    assert to_condensed(similarity, check_diagonal=False).shape == (45,)


def test_read_rdm_takes_the_asymmetry_policy(tmp_path, rng):
    from clip_hba.rsa import read_rdm

    square = to_square(rng.random(10))
    square[1, 0] += 1.0
    np.save(tmp_path / "asym.npy", square)
    with pytest.raises(InputError, match="not symmetric"):
        read_rdm(tmp_path / "asym.npy")
    assert read_rdm(tmp_path / "asym.npy", asymmetry="lower")[0] == square[1, 0]


# ---------------------------------------------------------------------------- batched ranks


def _reference_standardize(row, method):
    """The plain way: scipy's ranks (ties averaged), centred, scaled."""
    ranks = stats.rankdata(row)
    n = ranks.size
    if method == "rho_a":
        return (ranks - (n + 1) / 2) * np.sqrt(12.0 / (n**3 - n))
    centred = ranks - ranks.mean()
    with np.errstate(invalid="ignore"):  # a constant row: NaN
        return centred / np.linalg.norm(centred)


def _awkward_rows(rng, n=400):
    """Rows that exercise every branch of the rank transform."""
    rows = rng.normal(size=(12, n))
    rows[1] = np.round(rows[1], 1)  # many runs of ties
    rows[2] = rng.integers(0, 3, n)  # few distinct values, long runs
    rows[3] = 1.0 + rng.integers(0, 50, n) * 1e-12  # distinct in float64, tied in float32
    rows[4, :5] = [-0.0, 0.0, -0.0, np.inf, -np.inf]  # signed zeros tie; infinities rank last/first
    rows[5] = -np.abs(rows[5])  # all negative
    rows[6] = np.exp(30 * rows[6])  # beyond float32's range
    rows[7, ::2] = rows[7, 1::2]  # every value twice
    # an outlier spreads the float64 keys: values 1e-13 apart share a key, some exactly tied
    rows[8] = 1.0 + rng.integers(0, 30, n) * 1e-13
    rows[8, 0] = 1e6
    rows[9, ::3] = 1.0 + rng.integers(0, 5, rows[9, ::3].size) * 1e-14
    rows[9, 1] = -1e7
    return rows


@pytest.mark.parametrize("method", ["spearman", "rho_a"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_standardize_ranks_match_scipy_rankdata(method, dtype, rng):
    with np.errstate(over="ignore"):  # the huge row overflows float32 to inf
        rows = _awkward_rows(rng).astype(dtype)
    out = standardize(rows, method)
    assert out.dtype == np.float64
    for row, got in zip(rows, out, strict=True):
        expected = _reference_standardize(row.astype(np.float64), method)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_standardize_marks_nan_and_constant_rows(rng):
    rows = rng.normal(size=(3, 50))
    rows[0, 7] = np.nan
    rows[1] = 2.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning for 0 / 0
        out = standardize(rows, "spearman")
        rho_a = standardize(rows, "rho_a")
    assert np.isnan(out[0]).all() and np.isnan(out[1]).all() and np.isfinite(out[2]).all()
    assert np.isnan(rho_a[0]).all() and (rho_a[1] == 0).all()
    buffer = np.empty((3, 50))
    assert standardize(rows, "pearson", out=buffer) is buffer
    with pytest.raises(InputError, match="'out' must be float64"):
        standardize(rows, "pearson", out=np.empty((3, 50), dtype=np.float32))


def test_standardize_in_threads_equals_one_chunk(rng, torch_threads):
    """Over 2**20 values the rows are split into chunks ranked in parallel threads."""
    rows = np.round(rng.normal(size=(24, 50_000)), 2).astype(np.float32)
    torch_threads(2)
    parallel = standardize(rows, "spearman")
    torch_threads(1)
    serial = standardize(rows, "spearman")
    np.testing.assert_array_equal(parallel, serial)
    for k in (0, 23):
        np.testing.assert_allclose(parallel[k], _reference_standardize(rows[k], "spearman"))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_correlate_spearman_matches_scipy_row_by_row(dtype, rng):
    n = 300
    model = rng.normal(size=n)
    meg = 0.3 * model + rng.normal(size=(6, n))
    meg[1] = np.round(meg[1], 1)  # ties
    meg[2, [5, 9]] = np.nan  # rows missing different pairs
    meg[3, 11] = np.nan
    meg = meg.astype(dtype)
    models = np.stack([model, np.round(model, 1)])
    out = correlate(meg, models, "spearman")
    for t in range(len(meg)):
        keep = ~np.isnan(meg[t])
        for m in range(len(models)):
            expected = stats.spearmanr(meg[t, keep].astype(np.float64), models[m, keep]).statistic
            assert out[t, m] == pytest.approx(expected, abs=1e-12)


def test_mean_rdm_skips_nan_with_and_without_missing_pairs(rng):
    values = rng.normal(size=(3, 4, 10)).astype(np.float32)
    np.testing.assert_allclose(mean_rdm(values), values.astype(np.float64).mean(0), rtol=1e-15)
    values[0, 1, 2] = np.nan
    values[:, 2, 3] = np.nan  # missing for everyone: stays NaN, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean = mean_rdm(values)
    assert mean.dtype == np.float64 and np.isnan(mean[2, 3]) and np.isnan(mean).sum() == 1
    assert mean[1, 2] == pytest.approx(values[1:, 1, 2].astype(np.float64).mean())


def test_rank_rows_is_scipys_rankdata_exactly():
    from clip_hba.rsa import rank_rows

    rng = np.random.default_rng(3)
    rows = [
        rng.random((6, 200)),
        rng.integers(0, 4, (6, 200)).astype(np.float64),  # many ties
        rng.integers(0, 4, (6, 200)).astype(np.float32),
        np.where(rng.random((6, 200)) < 0.3, np.inf, rng.normal(size=(6, 200))),
        np.full((2, 5), 1.5),  # one run of ties per row
        np.array([[0.3, np.nan, 0.1], [0.2, 0.2, 0.5]]),  # NaN: a row of NaN
        np.empty((3, 0)),
    ]
    for values in rows:
        np.testing.assert_array_equal(rank_rows(values), stats.rankdata(values, axis=1))
    with pytest.raises(ValueError, match="2-d"):
        rank_rows(np.zeros((2, 2, 2)))
