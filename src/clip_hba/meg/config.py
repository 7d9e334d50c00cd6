"""Settings of the MEG stage, as small dataclasses (no heavy imports: the CLI reads defaults).

`EpochsConfig` (epochs -> RDMs), `BidsEpoching` (raw BIDS runs -> epochs) and
`SimulationConfig` (simulated participants).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from clip_hba._validation import InputError, check_option

__all__ = ["QUALITY_WINDOW_MS", "BidsEpoching", "EpochsConfig", "SimulationConfig"]

QUALITY_WINDOW_MS = (0.0, 1000.0)  # times averaged by the participant-quality check

Method = Literal["correlation", "decoding", "crossnobis"]


@dataclass
class EpochsConfig:
    """How epochs become RDMs (`clip_hba.meg.epochs`, `clip_hba.meg.crossval`)."""

    method: Method = "correlation"
    bin_ms: float | None = None  # average consecutive samples into bins of this width
    n_splits: int = 5  # decoding/crossnobis folds when no fold label is given
    seed: int = 0  # decoding/crossnobis fold shuffling
    shrinkage: float | str = "auto"  # covariance: 'auto' (Ledoit-Wolf) or a number in [0, 1]

    def __post_init__(self) -> None:
        check_option("method", self.method, get_args(Method))
        if self.bin_ms is not None and self.bin_ms <= 0:
            raise InputError(f"Invalid value for 'bin_ms': expected > 0, got {self.bin_ms}.")
        if self.n_splits < 2:
            raise InputError(f"Invalid value for 'n_splits': expected >= 2, got {self.n_splits}.")
        auto = self.shrinkage == "auto"
        if not auto and (isinstance(self.shrinkage, str) or not 0.0 <= self.shrinkage <= 1.0):
            raise InputError(
                f"Invalid value for 'shrinkage': expected 'auto' or a number in [0, 1], got "
                f"{self.shrinkage!r}."
            )


@dataclass
class BidsEpoching:
    """How raw BIDS runs are cut into epochs."""

    event_column: str = "trial_type"  # events.tsv column that names the concept
    concept_pattern: str | None = None  # regex; group 1 (or the match) is the concept id
    tmin_s: float = -0.1
    tmax_s: float = 1.3
    baseline: tuple[float | None, float] | None = (None, 0.0)
    decim: int = 1
    task: str | None = None
    session: str | None = None


@dataclass
class SimulationConfig:
    """Settings of `simulate_meg` (saved in the store's attributes)."""

    n_concepts: int = 100  # concepts sampled (seeded) from the 1,854, kept in official order
    n_participants: int = 4
    seed: int = 0
    tmin_ms: float = -100.0
    tmax_ms: float = 1300.0
    step_ms: float = 5.0
    signal: float = 1.0  # multiplies every component's weight (1: the defaults above)
    noise: float = 3.0  # noise standard deviation, in the units of the component weights
    latency_jitter_ms: float = 15.0  # sd of each participant's shift of all latencies
    gain_jitter: float = 0.25  # sd of log gain across participants
    weight_jitter: float = 0.3  # sd of log mixture weight across participants and components
    attention_jitter: float = 0.0  # sd of log weight of each SPoSE dimension per participant

    def __post_init__(self) -> None:
        if not 3 <= self.n_concepts <= 1854:
            raise InputError(
                f"Invalid value for 'concepts': expected 3..1854, got {self.n_concepts}."
            )
        if self.n_participants < 1:
            raise InputError(
                f"Invalid value for 'participants': expected >= 1, got {self.n_participants}."
            )
        times = (self.tmin_ms, self.tmax_ms, self.step_ms)
        if not (all(np.isfinite(times)) and self.step_ms > 0 and self.tmax_ms > self.tmin_ms):
            raise InputError(
                f"Invalid time axis {self.tmin_ms:g}..{self.tmax_ms:g} ms in steps of "
                f"{self.step_ms:g} ms."
            )
        if not (self.noise > 0 and np.isfinite(self.noise)):
            raise InputError(
                f"Invalid value for 'noise': expected a finite number > 0, got {self.noise}."
            )
        if not self.signal >= 0:
            raise InputError(f"Invalid value for 'signal': expected >= 0, got {self.signal}.")

    @property
    def times_ms(self) -> np.ndarray:
        n = int(np.floor((self.tmax_ms - self.tmin_ms) / self.step_ms + 1e-9)) + 1
        return self.tmin_ms + self.step_ms * np.arange(n)
