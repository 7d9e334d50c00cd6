"""Whole jobs over run directories: embed with any model, evaluate MEG runs, the demo.

- `clip_hba.pipelines.embed`: `embed_run` (a behaviour run, a MEG run or a base model).
- `clip_hba.pipelines.meg`: `evaluate_meg_run`, `specificity_of_runs`, `evaluate_meg`.
- `clip_hba.pipelines.robustness`: `evaluate_corruptions` (behavioural scores on corrupted
  images).
- `clip_hba.pipelines.demo`: the offline demo (`run_demo`).
"""

from clip_hba.pipelines.demo import (
    demo_config,
    demo_meg_config,
    demo_simulation,
    minilm_path,
    run_demo,
    run_meg_demo,
)
from clip_hba.pipelines.embed import embed_run, run_inputs
from clip_hba.pipelines.meg import evaluate_meg, evaluate_meg_run, specificity_of_runs
from clip_hba.pipelines.robustness import evaluate_corruptions

__all__ = [
    "demo_config",
    "demo_meg_config",
    "demo_simulation",
    "embed_run",
    "evaluate_corruptions",
    "evaluate_meg",
    "evaluate_meg_run",
    "minilm_path",
    "run_demo",
    "run_inputs",
    "run_meg_demo",
    "specificity_of_runs",
]
