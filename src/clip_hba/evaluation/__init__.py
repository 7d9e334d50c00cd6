"""Evaluation of embeddings and RDMs: behaviour benchmarks, time-resolved RSA, specificity.

Everything here works on id-keyed arrays (embeddings, model RDMs, MEG stores), not on runs.

- `clip_hba.evaluation.config`: `TimeRSAConfig`.
- `clip_hba.evaluation.behavior`: the 48-object RDM and odd-one-out benchmarks.
- `clip_hba.evaluation.model_rdms`: static, time-resolved and layer-wise model RDMs.
- `clip_hba.evaluation.time_rsa`, `clip_hba.evaluation.time_rsa_result`: RSA over time with
  cluster tests and the noise ceiling, and its summaries and files.
- `clip_hba.evaluation.rsa_nulls`: its permutation nulls, as float32 products of many
  timepoints with each permuted model.
- `clip_hba.evaluation.specificity`: the specificity matrix of personal models.
- `clip_hba.evaluation.plots`: every figure.
"""

from clip_hba._lazy import lazy_names
from clip_hba.evaluation.config import SPECIFICITY_WINDOW_MS, TimeRSAConfig

_MODULES = {
    "BehaviorEvaluation": "behavior",
    "evaluate_behavior": "behavior",
    "evaluate_embedding_file": "behavior",
    "odd_one_out_predictions": "behavior",
    "rdm48_rdms": "behavior",
    "ModelRDMs": "model_rdms",
    "load_model_rdms": "model_rdms",
    "resolve_concepts": "time_rsa",
    "time_resolved_rsa": "time_rsa",
    "time_rsa_files": "time_rsa",
    "DeferredNulls": "rsa_nulls",
    "Permutations": "rsa_nulls",
    "TimeRSAResult": "time_rsa_result",
    "save_time_rsa": "time_rsa_result",
    "summarize_curve": "time_rsa_result",
    "Specificity": "specificity",
    "SecondOrder": "specificity",
    "second_order": "specificity",
    "difference": "specificity",
    "permuted_differences": "specificity",
    "save_specificity": "specificity",
    "specificity_matrix": "specificity",
    "strict_column_max": "specificity",
    "check_figure_path": "plots",
    "plot_layer_time": "plots",
    "plot_layer_weights": "plots",
    "plot_learning_curves": "plots",
    "plot_rdm_comparison": "plots",
    "plot_rdms": "plots",
    "plot_rsa_curves": "plots",
    "plot_corruptions": "plots",
    "plot_specificity": "plots",
    "EMBEDDING_SUFFIXES": "model_rdms",
    "Kind": "model_rdms",
}
__getattr__ = lazy_names(__name__, _MODULES)
__all__ = [
    "EMBEDDING_SUFFIXES",
    "SPECIFICITY_WINDOW_MS",
    "BehaviorEvaluation",
    "DeferredNulls",
    "Kind",
    "ModelRDMs",
    "Permutations",
    "SecondOrder",
    "Specificity",
    "TimeRSAConfig",
    "TimeRSAResult",
    "check_figure_path",
    "difference",
    "evaluate_behavior",
    "evaluate_embedding_file",
    "load_model_rdms",
    "odd_one_out_predictions",
    "permuted_differences",
    "plot_corruptions",
    "plot_layer_time",
    "plot_layer_weights",
    "plot_learning_curves",
    "plot_rdm_comparison",
    "plot_rdms",
    "plot_rsa_curves",
    "plot_specificity",
    "rdm48_rdms",
    "resolve_concepts",
    "save_specificity",
    "save_time_rsa",
    "second_order",
    "specificity_matrix",
    "strict_column_max",
    "summarize_curve",
    "time_resolved_rsa",
    "time_rsa_files",
]
