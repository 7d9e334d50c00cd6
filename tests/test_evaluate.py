"""Behavioural evaluation on the real THINGS files."""

import numpy as np
import pytest
from scipy import stats

from clip_hba._validation import InputError
from clip_hba.data import ConceptEmbedding, Triplets, load_rdm48, load_test_triplets
from clip_hba.evaluation import evaluate_behavior, odd_one_out_predictions
from clip_hba.meg import TimeRDMs


@pytest.fixture(scope="module")
def spose_scores(spose):
    return evaluate_behavior(spose)


def test_spose_reproduces_published_rdm48_rho(spose_scores):
    # data README: rho = 0.864; 0.8648 with the RDM48 "camera" row read as camera1
    assert spose_scores.rdm48_spearman == pytest.approx(0.864, abs=0.001)
    assert spose_scores.rdm48_spearman == pytest.approx(0.86482, abs=1e-5)
    low, high = spose_scores.rdm48_spearman_ci
    assert 0.75 < low < spose_scores.rdm48_spearman < high < 0.95
    assert spose_scores.n_rdm48_concepts == 48


def test_spose_odd_one_out_accuracy(spose, spose_scores):
    # the figure quoted for this file (63.6 %) reads its numbers in official order ...
    literal = evaluate_behavior(spose, triplet_index_order="unique_id", n_bootstrap=10)
    assert literal.odd_one_out_accuracy == pytest.approx(0.636, abs=0.001)
    # ... the file is indexed in sorted-name order (tests/test_things.py), which gives 64.3 %
    assert spose_scores.triplet_index_order == "sorted_names"
    assert spose_scores.odd_one_out_accuracy == pytest.approx(0.64255, abs=1e-9)
    assert spose_scores.n_triplets == spose_scores.n_triplets_total == 20000
    low, high = spose_scores.odd_one_out_ci
    assert low < 0.64255 < high and high - low == pytest.approx(0.0133, abs=0.001)
    assert spose_scores.n_concepts == 1854 and spose_scores.n_dims == 66


def test_rows_are_joined_by_id_not_position(spose, spose_scores, rng):
    order = rng.permutation(spose.n_concepts)
    shuffled = ConceptEmbedding(spose.values[order], [spose.concept_ids[k] for k in order])
    scores = evaluate_behavior(shuffled)
    assert scores.to_dict() == spose_scores.to_dict()


def test_subset_embedding_uses_complete_triplets_only(spose):
    keep = list(spose.concept_ids[::2]) + list(load_rdm48().concept_ids[:10])
    keep = list(dict.fromkeys(keep))
    scores = evaluate_behavior(spose.select(keep), n_bootstrap=50)
    triplets = load_test_triplets()
    complete = np.isin(triplets.concept_ids, keep).all(axis=1)
    assert scores.n_triplets == complete.sum() > 0
    assert scores.n_concepts == len(keep)
    rdm_present = [c for c in load_rdm48().concept_ids if c in keep]
    assert scores.n_rdm48_concepts == len(rdm_present)


def test_odd_one_out_rule_on_a_worked_example():
    embedding = ConceptEmbedding(
        np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.2]]), ["a", "b", "c", "d"]
    )
    triplets = Triplets(
        concept_ids=np.array([["a", "b", "c"], ["c", "a", "b"], ["a", "c", "b"], ["d", "a", "x"]]),
        odd_one_out=np.array([2, 0, 0, 0]),
        subject=np.zeros(4, int),
        index_order="unique_id",
    )
    # a and b are the most similar pair in each of the first three triplets; the 4th is skipped
    np.testing.assert_array_equal(odd_one_out_predictions(embedding, triplets), [True, True, False])


def test_cosine_similarity_differs_from_dot_when_norms_differ():
    embedding = ConceptEmbedding(np.array([[10.0, 1.0], [1.0, 1.2], [1.0, 1.0]]), ["a", "b", "c"])
    triplets = Triplets(np.array([["a", "b", "c"]]), np.array([0]), np.zeros(1, int), "unique_id")
    # dot: (a, b) and (a, c) beat (b, c) -> odd one out c or b; cosine: (b, c) most similar -> a
    assert not odd_one_out_predictions(embedding, triplets, "dot")[0]
    assert odd_one_out_predictions(embedding, triplets, "cosine")[0]


def test_rdm_metric_option_changes_the_model_rdm(spose, spose_scores):
    cosine = evaluate_behavior(spose, rdm_metric="cosine", n_bootstrap=10)
    assert cosine.rdm_metric == "cosine"
    assert cosine.rdm48_spearman != pytest.approx(spose_scores.rdm48_spearman, abs=1e-4)
    assert 0.7 < cosine.rdm48_spearman < 0.95


def test_bad_embeddings_are_rejected(spose):
    with pytest.raises(InputError, match="at least 3"):
        evaluate_behavior(spose.select(["aardvark", "abacus"]))
    with pytest.raises(InputError, match="unknown concept id.*'camera'"):
        evaluate_behavior(
            ConceptEmbedding(np.ones((3, 2)) + np.eye(3, 2), ["aardvark", "abacus", "camera"])
        )
    values = spose.values.copy()
    values[spose.rows(["pizza"])[0]] = 0.5  # an RDM48 concept: 1 - Pearson undefined
    with pytest.raises(InputError, match="constant.*'pizza'.*euclidean RDM metric"):
        evaluate_behavior(ConceptEmbedding(values, spose.concept_ids))
    assert evaluate_behavior(ConceptEmbedding(values, spose.concept_ids), rdm_metric="euclidean")
    values = spose.values.copy()
    values[0] = 0.0  # aardvark is not in the RDM48: only the cosine similarity needs it
    scores = evaluate_behavior(ConceptEmbedding(values, spose.concept_ids), n_bootstrap=10)
    assert scores.rdm48_spearman == pytest.approx(0.86482, abs=1e-5)
    with pytest.raises(InputError, match="cosine similarity are all zero.*'aardvark'"):
        evaluate_behavior(ConceptEmbedding(values, spose.concept_ids), similarity="cosine")
    with pytest.raises(InputError, match="'similarity'"):
        evaluate_behavior(spose, similarity="euclid")
    with pytest.raises(InputError, match="nothing to evaluate"):
        evaluate_behavior(spose.select(["aardvark", "abacus", "accordion"]))


def personal_population(n_people, seed=0, n_times=6, n_pairs=45):
    """MEG of ``n_people`` who share a structure and differ by personal ones of various sizes."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=n_pairs)
    personal = rng.normal(size=(n_people, n_pairs)) * rng.uniform(0.3, 2.0, size=(n_people, 1))
    meg = shared + personal[:, None, :] + 0.3 * rng.normal(size=(n_people, n_times, n_pairs))
    models = {
        f"p{k:02d}": shared + personal[k] + 0.3 * rng.normal(size=(n_times, n_pairs))
        for k in range(n_people)
    }
    times = np.arange(n_times) * 10.0
    ids = tuple(f"c{k}" for k in range(10))
    return models, TimeRDMs(meg, ids, times, tuple(models))


def test_specificity_for_many_participants_uses_a_monte_carlo_permutation():
    from clip_hba.evaluation import specificity_matrix

    models, meg = personal_population(15)
    result = specificity_matrix(models, meg, (0.0, 50.0), n_permutations=999, seed=3)
    assert result.permutations == "monte_carlo" and result.n_permutations == 999
    assert result.min_p_value == pytest.approx(1 / 1000)
    assert result.p_value == pytest.approx(result.min_p_value)  # every model is its person's
    assert all(result.diagonal_is_column_max)
    again = specificity_matrix(models, meg, (0.0, 50.0), n_permutations=999, seed=3)
    assert again.to_dict() == result.to_dict()  # seeded
    small = specificity_matrix(
        dict(list(models.items())[:4]),
        TimeRDMs(meg.values[:4], meg.concept_ids, meg.times_ms, meg.participant_ids[:4]),
        (0.0, 50.0),
    )
    assert small.permutations == "exact" and small.n_permutations == 23


def test_second_order_finds_models_that_differ_as_their_participants_do():
    from clip_hba.evaluation import second_order

    models, meg = personal_population(6, seed=1)
    result = second_order(list(models.values()), list(meg.values), n_permutations=10000)
    assert result.permutations == "exact" and result.n_permutations == 719
    assert result.rho > 0.6 and result.p_value < 0.01
    upper = np.triu_indices(6, k=1)
    first, second = meg.values[0], meg.values[1]
    by_hand = 1 - np.mean([stats.spearmanr(a, b)[0] for a, b in zip(first, second, strict=True)])
    assert result.meg_dissimilarity[0, 1] == pytest.approx(by_hand, rel=1e-9)
    shuffled = [models[p] for p in np.random.default_rng(0).permutation(list(models))]
    unrelated = second_order(shuffled, list(meg.values), n_permutations=10000)
    assert unrelated.p_value > result.p_value
    assert unrelated.model_dissimilarity[upper].size == 15
    assert second_order(list(models.values())[:2], list(meg.values)[:2]) is None


def test_identical_personal_models_are_specific_to_nobody():
    from clip_hba.evaluation import specificity_matrix, strict_column_max

    models, meg = personal_population(4, seed=2)
    same = {p: models["p00"] for p in models}
    result = specificity_matrix(same, meg, (0.0, 50.0))
    assert result.diagonal_is_column_max == [False] * 4  # ties: nobody's own model wins
    assert strict_column_max(np.array([[2.0, 0.0], [1.0, 1.0]])) == [True, True]
