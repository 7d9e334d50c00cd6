"""Simulated MEG participants: time-resolved RDMs with a known, planted structure.

For tests, demos and method checks when real MEG is absent. Each participant's RDM at time t is

    50 + scale * (offset(t) + sum_k a_pk(t) * z_k + noise_p(t))        (decoding accuracy, %)

over the concept pairs, where z_k are z-scored model-independent component RDMs:

- ``early_visual``: 1 - Pearson between random 20-d "low-level" feature vectors (seeded); onset
  50 ms, peak 100 ms;
- ``category``: cosine distance between the THINGS category memberships; onset 70, peak 170 ms;
- ``behaviour``: 1 - Pearson between SPoSE 66-d rows (the late behavioural component); onset
  90, peak 300 ms;
- ``stimulus_specific``: an unstructured pair pattern shared by all participants that no model
  predicts (it lifts the noise ceiling above any model); onset 60, peak 150 ms;

``a_pk(t) = gain_p * weight_pk * h_k(t - shift_pk)`` with ``h_k`` a gamma-shaped curve, zero
before the component's onset (so zero before 0 ms), and participant-specific latency shifts,
gains and mixture weights; with ``attention_jitter`` each participant also weighs the 66 SPoSE
dimensions differently in the behavioural component (a personal behavioural space). The noise
is Gaussian per pair and autocorrelated over time (AR(1), time constant 15 ms). The truth --
components, their RDMs, the per-participant time courses ``a_pk(t)`` and dimension weights --
is saved in the store's ``ground_truth`` group.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from clip_hba._io import refuse_existing
from clip_hba.data.things import load_concepts, load_spose
from clip_hba.meg.config import SimulationConfig
from clip_hba.meg.io import export_things_mat
from clip_hba.meg.writer import StoreWriter, check_mat_name
from clip_hba.rsa.rdms import rdm

__all__ = ["COMPONENTS", "SimulationConfig", "component_rdms", "simulate_meg", "time_course"]

# name: (onset ms, peak ms, gamma shape, mean weight)
COMPONENTS: dict[str, tuple[float, float, float, float]] = {
    "early_visual": (50.0, 100.0, 2.0, 0.6),
    "category": (70.0, 170.0, 2.0, 0.5),
    "behaviour": (90.0, 300.0, 2.5, 0.5),
    "stimulus_specific": (60.0, 150.0, 2.0, 0.4),
}
NOISE_TAU_MS = 15.0
DECODING_SCALE = 2.0  # percentage points per unit of signal or noise


def time_course(times_ms: np.ndarray, onset_ms: float, peak_ms: float, shape: float) -> np.ndarray:
    """Gamma-shaped curve: 0 up to ``onset_ms``, 1 at ``peak_ms``, decaying after."""
    x = np.clip((np.asarray(times_ms, dtype=np.float64) - onset_ms) / (peak_ms - onset_ms), 0, None)
    return x**shape * np.exp(shape * (1.0 - x))


def component_rdms(
    concept_ids: Sequence[str], seed: int = 0, data_dir: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
    """The z-scored condensed RDM of every component over ``concept_ids`` (n_pairs,)."""
    rng = np.random.default_rng([seed, 1])
    concepts = load_concepts(data_dir)
    rows = concepts.index(list(concept_ids))
    n = len(rows)
    low_level = rng.normal(size=(len(concepts), 20))[rows]
    # a concept without a category gets one of its own, so it is not identical to the others
    membership = np.concatenate(
        [concepts.category_matrix[rows].astype(np.float64), 0.3 * np.eye(n)], axis=1
    )
    spose = load_spose(data_dir).select(list(concept_ids)).values
    rdms = {
        "early_visual": rdm(low_level, "pearson"),
        "category": rdm(membership, "cosine"),
        "behaviour": rdm(spose, "pearson"),
        "stimulus_specific": rng.normal(size=n * (n - 1) // 2),
    }
    return {name: (v - v.mean()) / v.std() for name, v in rdms.items()}


def simulate_meg(
    out: str | os.PathLike,
    config: SimulationConfig | None = None,
    *,
    concept_ids: Sequence[str] | None = None,
    dtype: str = "float32",
    data_dir: str | os.PathLike | None = None,
    export_mat: str | os.PathLike | None = None,
    force: bool = True,
    verbose: bool = True,
) -> Path:
    """Write a simulated store (see the module docstring) and return its path.

    Parameters
    ----------
    out : path
        The store to write (``.h5``).
    config : SimulationConfig, optional
    concept_ids : sequence of str, optional
        THINGS concepts to use instead of a seeded sample of ``config.n_concepts``.
    export_mat : path, optional
        Also write the store in the THINGS-MEG release format (`export_things_mat`).
    force : bool
        Overwrite existing outputs (else an existing ``out`` or ``export_mat`` is refused).
    """
    refuse_existing(out, force)
    if export_mat is not None:
        check_mat_name(export_mat)  # before the store is written, not after
        refuse_existing(export_mat, force)
    _simulate(out, config or SimulationConfig(), concept_ids, dtype, data_dir, verbose)
    if export_mat is not None:
        export_things_mat(out, export_mat, verbose=verbose)
    return Path(out)


def _simulate(
    out: str | os.PathLike,
    config: SimulationConfig,
    concept_ids: Sequence[str] | None,
    dtype: str,
    data_dir: str | os.PathLike | None,
    verbose: bool,
) -> None:
    concepts = load_concepts(data_dir)
    rng = np.random.default_rng(config.seed)
    if concept_ids is None:
        picked = np.sort(rng.choice(len(concepts), size=config.n_concepts, replace=False))
        concept_ids = [concepts.ids[k] for k in picked]
    else:
        concept_ids = [concepts.ids[k] for k in np.sort(concepts.index(list(concept_ids)))]
    times = config.times_ms
    names = list(COMPONENTS)
    z = np.stack(list(component_rdms(concept_ids, config.seed, data_dir).values()))
    truth = _participant_truth(config, rng, times)
    attention = np.ones((config.n_participants, 66))
    if config.attention_jitter > 0:  # drawn only when used: other settings keep their data
        attention = np.exp(rng.normal(0.0, config.attention_jitter, attention.shape))
    spose = load_spose(data_dir).select(list(concept_ids)).values
    behaviour = names.index("behaviour")
    participants = [f"sim{p + 1:02d}" for p in range(config.n_participants)]
    attrs = {
        "kind": "simulated_decoding_accuracy",
        "source": "clip-hba simulate meg",
        "simulation": str(asdict(config)),
    }
    phi = np.exp(-config.step_ms / NOISE_TAU_MS)
    with StoreWriter(out, concept_ids, participants, times, dtype, attrs) as writer:
        writer.add_group(
            "ground_truth",
            {
                "components": np.array(names),
                "component_rdms": z.astype(np.float32),
                "attention": attention,  # (P, 66): each participant's SPoSE dimension weights
                **truth,
            },
        )
        bar = tqdm(
            total=len(participants) * len(times), desc="Simulating", unit="RDM", disable=not verbose
        )
        with bar:
            for p in range(len(participants)):
                z_p = z
                if config.attention_jitter > 0:  # this participant's own behavioural space
                    z_p = z.copy()
                    own = rdm(spose * attention[p], "pearson")
                    z_p[behaviour] = (own - own.mean()) / own.std()
                noise = rng.normal(size=z.shape[1])
                for t in range(len(times)):
                    if t:
                        noise = phi * noise + np.sqrt(1 - phi**2) * rng.normal(size=z.shape[1])
                    amplitudes = truth["time_courses"][p, :, t]
                    signal = amplitudes @ z_p + truth["offset"][p, t]
                    writer.write(p, t, 50.0 + DECODING_SCALE * (signal + config.noise * noise))
                    bar.update()


def _participant_truth(
    config: SimulationConfig, rng: np.random.Generator, times: np.ndarray
) -> dict[str, np.ndarray]:
    n_p, n_k = config.n_participants, len(COMPONENTS)
    onsets, peaks, shapes, weights = (np.array(v) for v in zip(*COMPONENTS.values(), strict=True))
    shift = rng.normal(0.0, config.latency_jitter_ms, size=(n_p, 1)) + rng.normal(
        0.0, config.latency_jitter_ms / 3, size=(n_p, n_k)
    )
    gain = np.exp(rng.normal(0.0, config.gain_jitter, size=n_p))
    weight = config.signal * weights * np.exp(rng.normal(0.0, config.weight_jitter, (n_p, n_k)))
    # latencies may not move an onset before 20 ms: the signal stays zero before stimulus onset
    onset = np.maximum(onsets + shift, 20.0)
    peak = onset + (peaks - onsets)
    courses = np.stack(
        [
            np.stack(
                [
                    gain[p] * weight[p, k] * time_course(times, onset[p, k], peak[p, k], shapes[k])
                    for k in range(n_k)
                ]
            )
            for p in range(n_p)
        ]
    )
    return {
        "time_courses": courses,  # (P, K, T)
        "offset": courses.sum(1),  # (P, T): decodability rises with the signal
        "onset_ms": onset,  # (P, K)
        "peak_ms": peak,  # (P, K)
        "gain": gain,  # (P,)
        "weights": weight,  # (P, K)
        "times_ms": times,
    }
