"""Evaluations of concept embeddings against human data, as JSON-ready dataclasses."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from clip_hba._validation import InputError, check_option
from clip_hba.data.embeddings import ConceptEmbedding, read_embedding
from clip_hba.data.things import (
    INDEX_ORDERS,
    IndexOrder,
    Triplets,
    check_things_ids,
    load_concepts,
    load_rdm48,
    load_test_triplets,
    named_embedding,
)
from clip_hba.evaluation.plots import check_figure_path, plot_rdm_comparison
from clip_hba.rsa.bootstrap import bootstrap_rdm_correlation
from clip_hba.rsa.methods import METRICS, Metric
from clip_hba.rsa.rdms import RDM
from clip_hba.rsa.stats import proportion_ci

__all__ = [
    "BehaviorEvaluation",
    "evaluate_behavior",
    "evaluate_embedding_file",
    "odd_one_out_predictions",
    "rdm48_rdms",
]

Similarity = Literal["dot", "cosine"]
SIMILARITIES: tuple[str, ...] = ("dot", "cosine")


@dataclass(frozen=True)
class BehaviorEvaluation:
    """Alignment of a concept embedding with human behaviour.

    Attributes
    ----------
    rdm48_spearman, rdm48_spearman_ci : float, (float, float) or None
        Spearman rho between the embedding's RDM of the 48 held-out concepts and the human
        ``RDM48_triplet``, with its bootstrap CI over concepts; None with fewer than 3 of them.
    n_rdm48_concepts : int
        How many of the 48 concepts the embedding has.
    odd_one_out_accuracy, odd_one_out_ci : float, (float, float) or None
        Share of the usable test triplets predicted right, with its Wilson CI.
    n_triplets, n_triplets_total : int
        Test triplets whose three concepts are all in the embedding; all test triplets.
    n_concepts, n_dims : int
        Shape of the embedding.
    rdm_metric, similarity, ci_level, n_bootstrap, seed, triplet_index_order
        The settings used.
    """

    rdm48_spearman: float | None
    rdm48_spearman_ci: tuple[float, float] | None
    n_rdm48_concepts: int
    odd_one_out_accuracy: float | None
    odd_one_out_ci: tuple[float, float] | None
    n_triplets: int
    n_triplets_total: int
    n_concepts: int
    n_dims: int
    rdm_metric: str
    similarity: str
    ci_level: float
    n_bootstrap: int
    seed: int
    triplet_index_order: str

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_behavior(
    embedding: ConceptEmbedding,
    *,
    rdm_metric: Metric = "pearson",
    similarity: Similarity = "dot",
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    triplet_index_order: IndexOrder = "auto",
    data_dir: str | os.PathLike | None = None,
) -> BehaviorEvaluation:
    """Score ``embedding`` on the 48-object RDM and the test odd-one-out triplets.

    Parameters
    ----------
    embedding : ConceptEmbedding
        Rows keyed by THINGS concept id (any subset of at least 3 concepts).
    rdm_metric : {"pearson", "cosine", "euclidean"}
        How the model RDM is computed (``1 - Pearson r`` by default).
    similarity : {"dot", "cosine"}
        Similarity used to find the most similar pair of a triplet.
    n_bootstrap : int
        Bootstrap samples (over concepts) for the RDM48 CI.
    ci_level : float
    seed : int
    triplet_index_order : {"auto", "unique_id", "sorted_names"}
        See `clip_hba.things.load_test_triplets`.
    data_dir : path, optional
        THINGS data directory (default: the bundled files).

    Returns
    -------
    BehaviorEvaluation

    Examples
    --------
    >>> from clip_hba.data import load_spose
    >>> result = evaluate_behavior(load_spose())
    >>> round(result.rdm48_spearman, 3), round(result.odd_one_out_accuracy, 3)
    (0.865, 0.643)
    """
    check_option("rdm_metric", rdm_metric, METRICS)
    check_option("similarity", similarity, SIMILARITIES)
    check_option("triplet_index_order", triplet_index_order, INDEX_ORDERS)
    if embedding.n_concepts < 3:
        raise InputError(
            f"The embedding has {embedding.n_concepts} concept(s); at least 3 are needed."
        )
    check_things_ids(embedding.concept_ids, data_dir)

    rdms = rdm48_rdms(embedding, rdm_metric, data_dir)
    rho, rho_ci = None, None
    if rdms is not None:
        boot = bootstrap_rdm_correlation(*rdms, "spearman", n_bootstrap, ci_level, seed)
        rho, rho_ci = boot.value, boot.ci

    triplets = load_test_triplets(data_dir, triplet_index_order)
    correct = odd_one_out_predictions(embedding, triplets, similarity)
    accuracy, accuracy_ci = None, None
    if correct.size:
        accuracy = float(correct.mean())
        accuracy_ci = proportion_ci(int(correct.sum()), correct.size, ci_level)
    if rho is None and accuracy is None:
        raise InputError(
            "The embedding covers fewer than 3 of the 48 RDM concepts and no complete test "
            "triplet: nothing to evaluate."
        )
    return BehaviorEvaluation(
        rdm48_spearman=rho,
        rdm48_spearman_ci=rho_ci,
        n_rdm48_concepts=0 if rdms is None else rdms[0].n_concepts,
        odd_one_out_accuracy=accuracy,
        odd_one_out_ci=accuracy_ci,
        n_triplets=int(correct.size),
        n_triplets_total=len(triplets),
        n_concepts=embedding.n_concepts,
        n_dims=embedding.n_dims,
        rdm_metric=rdm_metric,
        similarity=similarity,
        ci_level=ci_level,
        n_bootstrap=n_bootstrap,
        seed=seed,
        triplet_index_order=triplets.index_order,
    )


def rdm48_rdms(
    embedding: ConceptEmbedding,
    rdm_metric: Metric = "pearson",
    data_dir: str | os.PathLike | None = None,
) -> tuple[RDM, RDM] | None:
    """The model's RDM of the 48 held-out concepts it has, and the human RDM48 of the same.

    Returns
    -------
    (model, human) : two RDMs over the same concepts in RDM48 order, or None when the
        embedding has fewer than 3 of them.
    """
    human = load_rdm48(data_dir)
    present = [c for c in human.concept_ids if c in embedding]
    if len(present) < 3:
        return None
    rows = embedding.select(present)
    _check_rows(rows, rdm_metric, "the model RDM")
    return RDM.from_embedding(rows, metric=rdm_metric), human.select(present)


def odd_one_out_predictions(
    embedding: ConceptEmbedding, triplets: Triplets, similarity: Similarity = "dot"
) -> np.ndarray:
    """Whether the embedding predicts each usable triplet's odd one out.

    The predicted odd one out is the concept outside the most similar pair (ties go to the
    first pair in the order (1, 2), (0, 2), (0, 1)). Triplets with a concept missing from the
    embedding are skipped.

    Returns
    -------
    ndarray of bool, shape (n_usable_triplets,)
    """
    check_option("similarity", similarity, SIMILARITIES)
    usable = np.isin(triplets.concept_ids, embedding.concept_ids).all(axis=1)
    ids = triplets.concept_ids[usable]
    rows = embedding.rows(ids.ravel().tolist()).reshape(ids.shape)
    values = embedding.values
    if similarity == "cosine":
        _check_rows(embedding.select(np.unique(ids).tolist()), "cosine", "cosine similarity")
        values = values / np.linalg.norm(values, axis=1, keepdims=True)
    a, b, c = values[rows[:, 0]], values[rows[:, 1]], values[rows[:, 2]]
    # column k = similarity of the pair that leaves out item k
    pair_similarity = np.stack(
        [np.einsum("nd,nd->n", b, c), np.einsum("nd,nd->n", a, c), np.einsum("nd,nd->n", a, b)],
        axis=1,
    )
    return pair_similarity.argmax(axis=1) == triplets.odd_one_out[usable]


def _check_rows(embedding: ConceptEmbedding, metric: str, used_for: str) -> None:
    """Rows for which ``metric`` is undefined are an input error, never a NaN in the output."""
    values = embedding.values
    if metric == "pearson":
        bad, what, fix = (
            np.ptp(values, axis=1) == 0,
            "constant",
            " Choose the euclidean RDM metric (evaluate behavior --rdm-metric euclidean).",
        )
    elif metric == "cosine":
        bad, what, fix = ~values.any(axis=1), "all zero", ""
    else:
        return
    if bad.any():
        first = embedding.concept_ids[int(np.argmax(bad))]
        raise InputError(
            f"{int(bad.sum())} embedding row(s) used for {used_for} are {what} (first: "
            f"{first!r}); {metric} is undefined for them.{fix}"
        )


def evaluate_embedding_file(
    path: str | os.PathLike,
    ids: str | os.PathLike | None = None,
    *,
    plot: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    **settings: object,
) -> BehaviorEvaluation:
    """`evaluate_behavior` of an embedding file, and optionally the figure of its RDM48.

    Parameters
    ----------
    path : path
        Any file `read_embedding` reads; without ``ids`` (and without ids of its own) it must
        hold the 1,854 THINGS concepts in official order.
    ids : path, optional
        The concept id of each row.
    plot : path, optional
        Write the model's and the human 48-object RDMs side by side (format from the suffix).
    settings
        Keyword arguments of `evaluate_behavior`.
    """
    if plot is not None:
        check_figure_path(plot)
    default_ids = None if ids is not None else load_concepts(data_dir).ids
    embedding = named_embedding(path, data_dir)
    if embedding is not None and ids is not None:
        raise InputError(f"--embedding {path} is the bundled SPoSE embedding: it takes no --ids.")
    embedding = embedding or read_embedding(path, ids=ids, default_ids=default_ids)
    result = evaluate_behavior(embedding, data_dir=data_dir, **settings)  # type: ignore[arg-type]
    if plot is not None:
        rdms = rdm48_rdms(embedding, result.rdm_metric, data_dir)  # type: ignore[arg-type]
        if rdms is None:
            raise InputError(
                "Cannot plot the RDM48: the embedding has fewer than 3 of its concepts."
            )
        plot_rdm_comparison(*rdms, plot, title=Path(path).name)
    return result
