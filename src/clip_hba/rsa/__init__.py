"""RSA core: RDMs with concept ids, every comparison method, and their statistics.

- `clip_hba.rsa.methods`: the names of metrics, comparison methods and policies.
- `clip_hba.rsa.rdms`: RDMs from features (torch, batched, differentiable), square <-> condensed
  under one policy, `RDM` (condensed + ids), RDM files, the NaN-aware mean RDM.
- `clip_hba.rsa.comparisons`: the comparison methods, for two RDMs and batched over rows.
- `clip_hba.rsa.bootstrap`: bootstrap CIs of a comparison (BCa, resampling conditions).
- `clip_hba.rsa.stats`: permutation and cluster tests, Wilson CIs, comparing RDM files.
- `clip_hba.rsa.interop`: rsatoolbox.
"""

from clip_hba._lazy import lazy_names
from clip_hba.rsa.methods import ASYMMETRY_POLICIES, METHODS, METRICS, Asymmetry, Method, Metric

_MODULES = {
    "RDM": "rdms",
    "RDM_EPS": "rdms",
    "Embedding": "rdms",
    "align": "rdms",
    "mean_rdm": "rdms",
    "n_conditions": "rdms",
    "pair_index": "rdms",
    "rdm": "rdms",
    "rdm_torch": "rdms",
    "read_rdm": "rdms",
    "subset_pairs": "rdms",
    "to_condensed": "rdms",
    "to_numpy": "rdms",
    "to_square": "rdms",
    "COMPARISONS": "comparisons",
    "compare": "comparisons",
    "correlate": "comparisons",
    "correlate_rowwise": "comparisons",
    "paired_condensed": "comparisons",
    "rank_rows": "comparisons",
    "standardize": "comparisons",
    "BootstrapResult": "bootstrap",
    "Cluster": "stats",
    "PermutationResult": "stats",
    "RDMComparison": "stats",
    "bootstrap_rdm_correlation": "bootstrap",
    "cluster_permutation_test": "stats",
    "compare_rdm_files": "stats",
    "permutation_test_rdm": "stats",
    "proportion_ci": "stats",
    "rdm_comparison": "stats",
    "from_rsatoolbox": "interop",
    "to_rsatoolbox": "interop",
}
__getattr__ = lazy_names(__name__, _MODULES)
__all__ = [
    "ASYMMETRY_POLICIES",
    "COMPARISONS",
    "METHODS",
    "METRICS",
    "RDM",
    "RDM_EPS",
    "Asymmetry",
    "BootstrapResult",
    "Cluster",
    "Embedding",
    "Method",
    "Metric",
    "PermutationResult",
    "RDMComparison",
    "align",
    "bootstrap_rdm_correlation",
    "cluster_permutation_test",
    "compare",
    "compare_rdm_files",
    "correlate",
    "correlate_rowwise",
    "from_rsatoolbox",
    "mean_rdm",
    "n_conditions",
    "pair_index",
    "paired_condensed",
    "permutation_test_rdm",
    "proportion_ci",
    "rank_rows",
    "rdm",
    "rdm_comparison",
    "rdm_torch",
    "read_rdm",
    "standardize",
    "subset_pairs",
    "to_condensed",
    "to_numpy",
    "to_rsatoolbox",
    "to_square",
]
