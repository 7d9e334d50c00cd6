"""CLIP-HBA-MEG: every block's pooled feature, mixed per timepoint, -> 66-d embeddings and RDMs.

For each MEG timepoint t the model mixes the L per-block features (`Tower.layer_features`,
without the tower's final norm by default, as the reference implementation) with
non-negative weights W[t] that sum to 1 (smoothed over +-window timepoints), scores the mix
against the 66 frozen label embeddings (100 x cosine, the prompt-cosine head) and, while
training, injects noise whose size follows the target MEG's temporal reliability:

    embedding_t = relu(gate_t * (raw_t + eps * std(raw_t) * noise_t))
    rdm_t       = gate_t * (1 - Pearson(embedding_t))

with ``eps ~ N(0, 1)``. The gate (``gating="richness"``) is the targets' mean dissimilarity
at t, min-max scaled and zero before 0 ms: model RDMs carry no structure before onset, and
their overall level follows how distinct the MEG RDMs are at each moment, which the flat
RDM correlation of the loss rewards. (The reference multiplies the features by the curve; a
1 - Pearson RDM ignores such a factor except where it is zero, so ours scales the RDM.)
Optionally (``dimension_gains``) each of the 66 dimensions of ``raw_t`` is multiplied by a
learned positive gain shared over time, ``exp(g_k)`` with ``g = 0`` at the start: how
strongly the person (or group) weighs each behavioural dimension (only their ratios matter).
A run started from a MEG run keeps that run's gains.
Unlike the reference implementation, ``std`` is each sample's own standard deviation over the
66 dimensions, so even training outputs do not depend on which other concepts share the batch;
at evaluation and inference the noise is off. The output for a batch is (T, B, 66) and its
RDMs (T, pairs) come from one batched computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clip_hba._validation import InputError, check_option
from clip_hba.models.backbones import Backbone, Inputs
from clip_hba.models.config import GATINGS, MegModelConfig
from clip_hba.models.precision import float32_region, full_precision
from clip_hba.rsa.rdms import RDM_EPS, rdm_torch

__all__ = [
    "GATE_FLOOR",
    "LayerWeights",
    "MegModel",
    "NoiseCurves",
    "noise_curves",
    "relative_gains",
    "richness_curve",
]

GATE_FLOOR = 1e-3  # after 0 ms every timepoint keeps its structure, even at the curve's minimum


class LayerWeights(nn.Module):
    """W [T x L]: per-timepoint layer weights, smoothed over time, non-negative, summing to 1.

    The parameter ``raw`` (T, L) starts with all weight on the last block and is kept
    non-negative by `project` after every optimiser step; W is ``raw`` averaged over +-window
    timepoints and divided by its sum over layers. (A softmax would need infinite logits to
    start at exactly one layer, and its gradients vanish near there.)
    """

    def __init__(self, n_times: int, n_layers: int, window: int) -> None:
        super().__init__()
        raw = torch.zeros(n_times, n_layers)
        raw[:, -1] = 1.0
        self.raw = nn.Parameter(raw)
        self.window = window

    def forward(self) -> torch.Tensor:
        """Weights, shape (T, L)."""
        raw = self.raw
        if self.window > 0:
            size = 2 * self.window + 1
            padded = F.pad(raw.T[None], (self.window, self.window), mode="replicate")
            raw = F.avg_pool1d(padded, size, stride=1)[0].T
        return raw / raw.sum(dim=-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def project(self) -> None:
        """Clamp ``raw`` to >= 0 (and keep every timepoint's sum positive)."""
        self.raw.clamp_(min=0.0)
        empty = self.raw.sum(dim=-1) <= 1e-8
        self.raw[empty, -1] = 1.0


@dataclass
class NoiseCurves:
    """Fixed per-timepoint curves: ``gate`` scales the model RDMs, ``noise`` sizes the noise."""

    gate: np.ndarray  # (T,)
    noise: np.ndarray  # (T,)


def richness_curve(target: np.ndarray, times_ms: np.ndarray) -> np.ndarray:
    """The targets' mean dissimilarity per timepoint, min-max scaled, zero before 0 ms.

    After 0 ms the curve is floored at `GATE_FLOOR`, so that no timepoint after onset loses
    its structure where the mean happens to be lowest.

    Parameters
    ----------
    target : ndarray, shape (T, n_pairs)
        The training concepts' MEG RDMs (NaN pairs are left out).
    times_ms : ndarray, shape (T,)

    Returns
    -------
    ndarray, shape (T,), in [0, 1]
    """
    with np.errstate(invalid="ignore"):  # (summed in float64: no float64 copy of the targets)
        richness = np.nanmean(target, axis=1, dtype=np.float64)
    after = np.asarray(times_ms) >= 0
    gate = np.zeros(len(richness))
    low, high = np.nanmin(richness), np.nanmax(richness)
    scaled = (richness - low) / (high - low) if high > low else np.ones_like(richness)
    gate[after] = np.maximum(np.nan_to_num(scaled[after]), GATE_FLOOR)
    return gate


def noise_curves(
    target: np.ndarray,
    times_ms: np.ndarray,
    window: int = 3,
    gating: str = "richness",
    pairs_per_row: int = 200_000,
) -> NoiseCurves:
    """The gate and noise curves from the target RDMs (training concepts only!).

    The noise follows the temporal reliability: the mean temporal-generalisation correlation
    of timepoint t (its RDM's Pearson r with every timepoint's RDM), min-max scaled over
    t >= 0 to [0, 1] and zero before 0 ms, gives ``noise_t = 1 - reliability_t`` smoothed over
    +-window. The gate is `richness_curve` (``gating="richness"``) or 1 (``"none"``).

    Parameters
    ----------
    target : ndarray, shape (T, n_pairs)
        The training concepts' MEG RDMs (NaN pairs are left out).
    times_ms : ndarray, shape (T,)
    gating : {"richness", "none"}
    pairs_per_row : int
        At most this many pairs (evenly spaced) enter the correlations, to bound the work.
    """
    check_option("gating", gating, GATINGS)
    target = np.asarray(target)  # float32 at THINGS size: 1.1 M pairs x 281 times, 1.2 GB
    valid = ~np.isnan(target).any(0)
    columns = np.flatnonzero(valid)
    if columns.size < 3:
        raise InputError("The training targets hold fewer than 3 pairs without NaN.")
    if columns.size > pairs_per_row:
        columns = columns[np.linspace(0, columns.size - 1, pairs_per_row).astype(int)]
    rows = target[:, columns].astype(np.float64)
    rows = rows - rows.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    generalisation = np.nan_to_num(rows @ rows.T)
    reliability = generalisation.mean(1)
    after = times_ms >= 0
    scaled = np.zeros(len(times_ms))
    if after.any():
        low, high = reliability[after].min(), reliability[after].max()
        scaled[after] = (reliability[after] - low) / (high - low) if high > low else 1.0
    noise = 1.0 - scaled
    if window > 0:
        kernel = np.ones(2 * window + 1) / (2 * window + 1)
        noise = np.convolve(np.pad(noise, window, mode="edge"), kernel, mode="valid")
    gate = richness_curve(target, times_ms) if gating == "richness" else np.ones(len(times_ms))
    return NoiseCurves(gate, noise)


def relative_gains(log_gains: torch.Tensor) -> np.ndarray:
    """Dimension gains ``exp(log_gains)`` scaled to geometric mean 1, shape (n_labels,)."""
    log_gains = log_gains.detach().double().cpu()
    return (log_gains - log_gains.mean()).exp().numpy()


class MegModel(nn.Module):
    """Backbone tower + layer weights + frozen label embeddings (+ training noise).

    Parameters
    ----------
    backbone : Backbone
    label_features : Tensor, shape (n_labels, P)
        The 66 label prompts' features (computed once, frozen).
    times_ms : array-like, shape (T,)
    config : MegModelConfig
    curves : NoiseCurves, optional
        Required for noise injection and gating; the gate is 1 without it.
    """

    def __init__(
        self,
        backbone: Backbone,
        label_features: torch.Tensor,
        times_ms: np.ndarray,
        config: MegModelConfig,
        curves: NoiseCurves | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.backbone_model = backbone.model
        self.config = config
        self.times_ms = np.asarray(times_ms, dtype=np.float64)
        n_times, n_layers = len(self.times_ms), backbone.concept_tower.n_blocks
        self.weights = LayerWeights(n_times, n_layers, config.window)
        labels = F.normalize(label_features.detach().float(), dim=-1)
        self.log_gains = nn.Parameter(
            torch.zeros(len(labels)), requires_grad=config.dimension_gains
        )
        self.register_buffer("label_features", labels)
        gate = np.ones(n_times) if curves is None else curves.gate
        noise = np.zeros(n_times) if curves is None else curves.noise
        self.register_buffer("gate", torch.as_tensor(gate, dtype=torch.float32))
        self.register_buffer("noise", torch.as_tensor(noise, dtype=torch.float32))

    @property
    def device(self) -> torch.device:
        return self.label_features.device

    @property
    def dimension_gains(self) -> np.ndarray:
        """Relative gain of each output dimension, shape (n_labels,), geometric mean 1.

        All 1 unless learned (in this run or in the MEG run it started from). Only ratios
        matter: the RDMs (1 - Pearson per sample) do not change when every gain is scaled.
        """
        return relative_gains(self.log_gains)

    @property
    def n_layers(self) -> int:
        return self.backbone.concept_tower.n_blocks

    def layer_features(self, inputs: Inputs) -> torch.Tensor:
        """Every block's pooled feature, shape (L, B, P) (final norm per ``layer_features``)."""
        normed = self.config.layer_features == "normed"
        return self.backbone.concept_tower.layer_features(inputs, normed=normed)

    def embed_features(
        self,
        features: torch.Tensor,
        noise: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-timepoint embeddings from layer features (L, B, P) -> (T, B, n_labels).

        In float32 whatever the precision of the backbone (`float32_region`): the mixing,
        noise and gate define the RDMs.
        """
        with float32_region(features.device):
            features = full_precision(features)
            mixed = torch.einsum("tl,lbp->tbp", self.weights(), features)
            raw = self.config.logit_scale * F.normalize(mixed, dim=-1) @ self.label_features.T
            raw = raw * self.log_gains.exp()  # all 1 unless learned here or in the parent run
            if noise and self.config.noise and self.config.noise_scale > 0:
                eps = torch.randn(raw.shape, generator=generator, device="cpu").to(raw.device)
                spread = raw.detach().std(dim=-1, keepdim=True)  # per sample: batch-independent
                raw = raw + eps * spread * (self.config.noise_scale * self.noise)[:, None, None]
            return F.relu(self.gate[:, None, None] * raw)

    def forward(self, inputs: Inputs) -> torch.Tensor:
        """Embeddings without noise, shape (T, B, n_labels)."""
        return self.embed_features(self.layer_features(inputs))

    def rdms(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Gated 1 - Pearson RDMs of embeddings (T, B, D) -> (T, B * (B - 1) / 2), batched.

        An all-zero embedding (every dimension cut by the relu) is at dissimilarity 1 from all
        others rather than NaN, so one such sample cannot poison a training step; where the
        gate is zero the RDM is zero.
        """
        with float32_region(embeddings.device):
            return self.gate[:, None] * rdm_torch(
                full_precision(embeddings), "pearson", eps=RDM_EPS
            )
