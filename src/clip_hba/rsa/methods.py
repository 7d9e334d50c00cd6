"""The names of RDM metrics, comparison methods and square-matrix policies (no heavy imports)."""

from typing import Literal

__all__ = ["ASYMMETRY_POLICIES", "METHODS", "METRICS", "Asymmetry", "Method", "Metric"]

Metric = Literal["pearson", "cosine", "euclidean"]  # features -> dissimilarities
METRICS: tuple[str, ...] = ("pearson", "cosine", "euclidean")
Method = Literal["spearman", "pearson", "kendall_tau_a", "rho_a", "cosine"]  # RDM vs RDM
METHODS: tuple[str, ...] = ("spearman", "pearson", "kendall_tau_a", "rho_a", "cosine")
# A pair defined in both triangles of a square RDM with two values: refuse the matrix, or
# take the mean of the two, the upper triangle's value ([i, j], i < j) or the lower's ([j, i]).
Asymmetry = Literal["raise", "average", "upper", "lower"]
ASYMMETRY_POLICIES: tuple[str, ...] = ("raise", "average", "upper", "lower")
