"""The names of RDM metrics, comparison methods and square-matrix policies (no heavy imports)."""

from typing import Literal

__all__ = ["ASYMMETRY_POLICIES", "METHODS", "METRICS", "Asymmetry", "Method", "Metric"]

Metric = Literal["pearson", "cosine", "euclidean"]  # features -> dissimilarities
METRICS: tuple[str, ...] = ("pearson", "cosine", "euclidean")
Method = Literal["spearman", "pearson", "kendall_tau_a", "rho_a", "cosine"]  # RDM vs RDM
METHODS: tuple[str, ...] = ("spearman", "pearson", "kendall_tau_a", "rho_a", "cosine")
Asymmetry = Literal["raise", "mean"]  # a pair defined in both triangles with two values
ASYMMETRY_POLICIES: tuple[str, ...] = ("raise", "mean")
