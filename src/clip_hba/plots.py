"""Figures (matplotlib, headless), written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from clip_hba._io import write_atomic
from clip_hba._validation import InputError
from clip_hba.rsa import RDM, align

__all__ = ["check_figure_path", "plot_rdm_comparison"]


def check_figure_path(path: str | os.PathLike) -> Path:
    """Raise `InputError` unless matplotlib can write the format named by ``path``'s suffix."""
    suffix = Path(path).suffix.lstrip(".").lower()
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if suffix not in formats:
        raise InputError(
            f"Cannot write a figure to {path}: the suffix must name one of the formats "
            f"{', '.join(sorted(formats))}."
        )
    return Path(path)


def plot_rdm_comparison(
    model: RDM, human: RDM, path: str | os.PathLike, title: str = "Model vs human RDM"
) -> Path:
    """Side-by-side RDMs (rank-transformed, human order) and a scatter of their pairs.

    The RDMs are aligned by concept id; the figure is saved to ``path`` (format from suffix).
    """
    check_figure_path(path)
    model, human = align(model, human)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), constrained_layout=True)
    for ax, rdm_, name in ((axes[0], human, "human"), (axes[1], model, "model")):
        square = _rank_square(rdm_)
        image = ax.imshow(square, cmap="viridis", interpolation="nearest")
        ax.set_title(f"{name} (percentile of dissimilarity)")
        labels = [c.replace("_", " ") for c in rdm_.concept_ids]
        if len(labels) <= 60:
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=5)
            ax.set_yticks(range(len(labels)), labels, fontsize=5)
    fig.colorbar(image, ax=axes[:2], shrink=0.8)
    keep = ~(np.isnan(model.condensed) | np.isnan(human.condensed))
    rho = stats.spearmanr(model.condensed[keep], human.condensed[keep]).statistic
    axes[2].scatter(human.condensed[keep], model.condensed[keep], s=4, alpha=0.4)
    axes[2].set_xlabel("human dissimilarity")
    axes[2].set_ylabel(f"model dissimilarity ({model.metric})")
    axes[2].set_title(f"Spearman rho = {rho:.3f} ({int(keep.sum())} pairs)")
    fig.suptitle(title)
    suffix = Path(path).suffix.lstrip(".").lower()
    written = write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=150, format=suffix))
    plt.close(fig)
    return written


def _rank_square(rdm_: RDM) -> np.ndarray:
    ranks = stats.rankdata(rdm_.condensed, nan_policy="omit") / np.sum(~np.isnan(rdm_.condensed))
    square = RDM(ranks * 100, rdm_.concept_ids).square()
    np.fill_diagonal(square, np.nan)
    return square
