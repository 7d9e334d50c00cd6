"""Settings of the evaluations, as small dataclasses (no heavy imports: the CLI reads defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clip_hba._validation import InputError, check_option, check_range
from clip_hba.rsa.methods import METHODS

__all__ = ["SPECIFICITY_WINDOW_MS", "TimeRSAConfig"]

SPECIFICITY_WINDOW_MS = (0.0, 1000.0)  # times averaged by the specificity matrix


@dataclass
class TimeRSAConfig:
    """Settings of `clip_hba.evaluation.time_rsa.time_resolved_rsa`."""

    method: str = "spearman"  # any of rsa.METHODS
    window_ms: tuple[float, float] | None = None  # analysed times (inclusive); None: all
    participants: list[str] | None = None  # None: all participants of the store
    exclude_participants: list[str] | None = None
    concept_ids: list[str] | None = None  # restrict to these concepts (e.g. held-out ones)
    n_permutations: int = 1000  # 0: no cluster test
    threshold_p: float = 0.05  # cluster-forming threshold (pointwise permutation p)
    alpha: float = 0.05  # cluster significance level
    baseline: Literal["zero", "prestimulus"] = "zero"  # test r > 0, or r above its mean before 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_option("method", self.method, METHODS)
        check_option("baseline", self.baseline, ("zero", "prestimulus"))
        if self.n_permutations < 0:
            raise InputError(
                f"Invalid value for 'n_permutations': expected >= 0, got {self.n_permutations}."
            )
        for name in ("threshold_p", "alpha"):
            check_range(name, getattr(self, name), 0, 1, low_open=True, high_open=True)
