"""Figures (matplotlib, headless), written atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator
from scipy import stats

from clip_hba._io import write_atomic
from clip_hba._validation import InputError
from clip_hba.rsa.rdms import RDM, align

__all__ = [
    "check_figure_path",
    "plot_corruptions",
    "plot_layer_time",
    "plot_layer_weights",
    "plot_learning_curves",
    "plot_rdm_comparison",
    "plot_rdms",
    "plot_rsa_curves",
    "plot_specificity",
]


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
    return _save(fig, path)


def _rank_square(rdm_: RDM) -> np.ndarray:
    ranks = stats.rankdata(rdm_.condensed, nan_policy="omit") / np.sum(~np.isnan(rdm_.condensed))
    square = RDM(ranks * 100, rdm_.concept_ids).square()
    np.fill_diagonal(square, np.nan)
    return square


def plot_rdms(rdms: dict[str, RDM], path: str | os.PathLike, title: str = "") -> Path:
    """RDMs side by side (percentile of dissimilarity), aligned by concept id to the first.

    Panel titles give each RDM's Spearman rho with the first (e.g. the human RDM).
    """
    check_figure_path(path)
    names = list(rdms)
    reference = rdms[names[0]]
    fig, axes = plt.subplots(
        1, len(names), figsize=(4.6 * len(names), 4.4), constrained_layout=True
    )
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        first, other = align(reference, rdms[name])
        image = ax.imshow(_rank_square(other), cmap="viridis", interpolation="nearest")
        keep = ~(np.isnan(first.condensed) | np.isnan(other.condensed))
        rho = stats.spearmanr(first.condensed[keep], other.condensed[keep]).statistic
        ax.set_title(name if rdms[name] is reference else f"{name} (rho = {rho:.3f})")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.8, label="percentile of dissimilarity")
    fig.suptitle(title)
    return _save(fig, path)


def plot_learning_curves(log: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Training and validation MSE, and the validation and held-out 48-object RDM rho, per epoch.

    The MSE panel shows the MSE term alone (``train_mse``/``val_mse``; logs of older versions:
    the loss, which was the MSE), so runs with and without the geometry term compare.
    """
    check_figure_path(path)
    return _save(_learning_curves_figure(log, title), path)


def _learning_curves_figure(log: list[dict], title: str = "") -> Figure:
    epochs = [r["epoch"] for r in log]
    fig, (loss_ax, rho_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    trained = [r for r in log if r.get("train_loss") is not None]
    loss_ax.plot(
        [r["epoch"] for r in trained],
        [r.get("train_mse", r["train_loss"]) for r in trained],
        label="train",
    )
    loss_ax.plot(epochs, [r.get("val_mse", r["val_loss"]) for r in log], label="validation")
    loss_ax.set(xlabel="epoch", ylabel="MSE (targets 0-100)", title="MSE")
    loss_ax.legend()
    if any(r.get("val_rdm_spearman") is not None for r in log):
        rho_ax.plot(epochs, [r.get("val_rdm_spearman") for r in log], label="validation concepts")
    rho_ax.plot(epochs, [r.get("rdm48_spearman") for r in log], label="held-out 48 (RDM48)")
    rho_ax.set(xlabel="epoch", ylabel="Spearman rho with the target RDM", title="geometry")
    rho_ax.legend()
    for ax in (loss_ax, rho_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    return fig


def plot_corruptions(result: dict, path: str | os.PathLike) -> Path:
    """RDM48 rho and odd-one-out accuracy against corruption severity, one line per corruption.

    ``result``: the output of `clip_hba.pipelines.robustness.evaluate_corruptions`; the clean
    images' scores are the dashed lines.
    """
    check_figure_path(path)
    return _save(_corruptions_figure(result), path)


def _corruptions_figure(result: dict) -> Figure:
    metrics = (("rdm48_spearman", "RDM48 Spearman rho"), ("odd_one_out_accuracy", "odd-one-out"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, (key, label) in zip(axes, metrics, strict=True):
        for k, (name, rows) in enumerate(result["corruptions"].items()):
            ax.plot(
                [r["severity"] for r in rows],
                [r[key] for r in rows],
                "o-",
                color=f"C{k}",
                label=name,
            )
        clean = result["clean"][key]
        if clean is not None:
            ax.axhline(clean, color="k", linestyle="--", label="clean")
        if clean is None and all(
            r[key] is None for rows in result["corruptions"].values() for r in rows
        ):
            # e.g. no test triplet among the concepts with images: say so, not an empty frame
            ax.text(
                0.5,
                0.5,
                f"no {label} score:\ntoo few of its concepts have images",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        ax.set(xlabel="severity", ylabel=label, title=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize="small")
    fig.suptitle(f"Robustness of {Path(str(result['model'])).name}")
    return fig


def plot_rsa_curves(result: Any, path: str | os.PathLike, max_curves: int = 8) -> Path:
    """RSA curves over time with the noise-ceiling band and significant clusters.

    ``result`` is a `time_rsa.TimeRSAResult`. Solid: the mean of the participants' own curves,
    which the noise-ceiling band bounds; dashed: the correlation with the participants' mean
    RDM, whose significant clusters are the bars under the curves. Layer-wise models show their
    best layer only (their layer x time matrix has its own figure).
    """
    check_figure_path(path)
    times = result.times_ms
    names = _curves_to_show(result, max_curves)
    fig, ax = plt.subplots(figsize=(9, 4.8), constrained_layout=True)
    lower, upper = result.noise_ceiling["lower"], result.noise_ceiling["upper"]
    if np.isfinite(upper).any():
        ax.fill_between(times, lower, upper, color="0.92", label="noise ceiling", linewidth=0)
        ax.plot(times, lower, color="0.6", linewidth=0.8)
    top = np.nanmax([np.nanmax(result.group[n]) for n in names] + [np.nanmax(upper, initial=0)])
    step = 0.03 * (top if np.isfinite(top) and top > 0 else 1.0)
    for k, name in enumerate(names):
        color = f"C{k % 10}"
        ax.plot(times, result.participant_mean(name), color=color, label=name, linewidth=1.6)
        ax.plot(times, result.group[name], color=color, linewidth=1.0, linestyle="--")
        clusters = result.clusters.get(name, {}).get("group", [])
        for cluster in clusters:
            if cluster.p_value < result.config.alpha:
                y = -step * (k + 1)
                ax.plot([cluster.start_ms, cluster.stop_ms], [y, y], color=color, linewidth=4)
    ax.axhline(0, color="k", linewidth=0.6)
    ax.axvline(0, color="k", linewidth=0.6, linestyle=":")
    ax.set(
        xlabel="time (ms)",
        ylabel=f"model-MEG correlation ({result.config.method})",
        title=(
            f"Time-resolved RSA, {len(result.participant_ids)} participant(s), "
            f"{len(result.concept_ids)} concepts\nsolid: mean of participants' curves; dashed: "
            f"vs mean RDM; bars: its clusters p < {result.config.alpha:g}"
        ),
    )
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def _curves_to_show(result: Any, max_curves: int) -> list[str]:
    layered = {f"{m}/{label}": m for m, labels in result.layer_labels.items() for label in labels}
    names = [n for n in result.group if n not in layered]
    for model, labels in result.layer_labels.items():
        best = max(labels, key=lambda lab: np.nanmax(result.group[f"{model}/{lab}"]))
        names.append(f"{model}/{best}")
    return names[:max_curves]


def plot_layer_time(
    matrix: np.ndarray,
    times_ms: np.ndarray,
    layer_labels: Sequence[str],
    path: str | os.PathLike,
    title: str = "Layer x time RSA",
    significant: np.ndarray | None = None,
) -> Path:
    """Heatmap of a layer x time correlation matrix (L, T), with each time's best layer.

    ``significant`` (T,) bool limits the best-layer trace to those times (e.g. where some
    layer's curve is in a significant cluster); with no such time there is no trace.
    """
    check_figure_path(path)
    return _save(_layer_time_figure(matrix, times_ms, layer_labels, title, significant), path)


def _layer_time_figure(
    matrix: np.ndarray,
    times_ms: np.ndarray,
    layer_labels: Sequence[str],
    title: str = "Layer x time RSA",
    significant: np.ndarray | None = None,
) -> Figure:
    fig, ax = plt.subplots(figsize=(9, 0.25 * len(layer_labels) + 2.5), constrained_layout=True)
    image = ax.imshow(
        matrix,
        aspect="auto",
        cmap="magma",
        extent=_extent(times_ms, len(layer_labels)),
        interpolation="nearest",
    )
    filled = np.nan_to_num(matrix, nan=-np.inf)
    shown = np.isfinite(filled).any(0)
    if significant is not None:
        shown &= significant
    if shown.any():
        ax.plot(
            times_ms,
            np.where(shown, np.argmax(filled, axis=0), np.nan),
            color="cyan",
            linewidth=1.0,
            marker="o",
            markersize=2,  # a lone significant time has no line segment
            label="best layer (significant times)" if significant is not None else "best layer",
        )
        ax.legend(fontsize=8, loc="upper right")
    ax.set_yticks(range(len(layer_labels)), layer_labels, fontsize=7)
    ax.axvline(0, color="w", linewidth=0.6, linestyle=":")
    ax.set(xlabel="time (ms)", ylabel="layer", title=title)
    fig.colorbar(image, ax=ax, label="correlation")
    return fig


def plot_layer_weights(
    weights: np.ndarray,
    times_ms: np.ndarray,
    layer_time: np.ndarray | None,
    rsa_times_ms: np.ndarray | None,
    path: str | os.PathLike,
    *,
    block_labels: Sequence[str] | None = None,
) -> Path:
    """The learned layer weights W (T, L) beside the base backbone's layer x time RSA (L, T).

    ``block_labels`` (L,) name the blocks on the y axes (e.g. the RSA's layer labels); by
    default they are numbered from 1, as in the run's ``evaluation.json``.
    """
    check_figure_path(path)
    figure = _layer_weights_figure(weights, times_ms, layer_time, rsa_times_ms, block_labels)
    return _save(figure, path)


def _layer_weights_figure(
    weights: np.ndarray,
    times_ms: np.ndarray,
    layer_time: np.ndarray | None,
    rsa_times_ms: np.ndarray | None,
    block_labels: Sequence[str] | None = None,
) -> Figure:
    n_layers = weights.shape[1]
    if block_labels is None:
        block_labels = [str(k) for k in range(1, n_layers + 1)]
    if len(block_labels) != n_layers:
        raise InputError(f"Got {len(block_labels)} block labels for {n_layers} blocks.")
    panels = 2 if layer_time is not None and rsa_times_ms is not None else 1
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(7 * panels, 0.25 * n_layers + 3),
        constrained_layout=True,
        squeeze=False,
    )
    weights_ax = axes[0, 0]
    image = weights_ax.imshow(
        weights.T,
        aspect="auto",
        cmap="viridis",
        extent=_extent(times_ms, n_layers),
        interpolation="nearest",
        vmin=0,
        vmax=1,
    )
    weights_ax.plot(
        times_ms, weights @ np.arange(n_layers), color="w", linewidth=1, label="weighted mean layer"
    )
    weights_ax.set(xlabel="time (ms)", ylabel="block", title="learned layer weights W")
    weights_ax.legend(fontsize=8, loc="upper right")
    fig.colorbar(image, ax=weights_ax, label="weight")
    if panels == 2:
        image = axes[0, 1].imshow(
            layer_time,
            aspect="auto",
            cmap="magma",
            extent=_extent(rsa_times_ms, n_layers),
            interpolation="nearest",
        )
        axes[0, 1].set(
            xlabel="time (ms)",
            ylabel="block",
            title="base model: layer x time RSA (held-out concepts)",
        )
        fig.colorbar(image, ax=axes[0, 1], label="correlation")
    for ax in axes[0]:
        _label_rows(ax, block_labels)
    return fig


def _extent(times_ms: np.ndarray, n_rows: int) -> tuple[float, float, float, float]:
    """imshow extent: one column per time (centred), row k at y = k, top to bottom."""
    step = np.median(np.diff(times_ms)) if len(times_ms) > 1 else 1.0
    return (times_ms[0] - step / 2, times_ms[-1] + step / 2, n_rows - 0.5, -0.5)


def _label_rows(ax: Axes, labels: Sequence[str]) -> None:
    """Ticks on whole rows only (thinned when there are many), each named by its label."""
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(
        FuncFormatter(lambda y, _: labels[round(y)] if 0 <= round(y) < len(labels) else "")
    )


_COLUMN_MAX_LABEL = "column maximum: the model that fits that participant's MEG best"


def plot_specificity(result: Any, path: str | os.PathLike) -> Path:
    """The specificity matrix S[i, j] (model of i vs MEG of j), each column's maximum framed."""
    check_figure_path(path)
    return _save(_specificity_figure(result), path)


def _specificity_figure(result: Any) -> Figure:
    matrix = np.asarray(result.matrix, dtype=np.float64)
    labels = list(result.participants)
    fig, ax = plt.subplots(
        figsize=(1.1 * len(labels) + 3, 1.0 * len(labels) + 2.5), constrained_layout=True
    )
    image = ax.imshow(matrix, cmap="viridis")
    for j in range(len(labels)):
        if np.isfinite(matrix[:, j]).any():
            i = int(np.nanargmax(matrix[:, j]))
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, color="r", linewidth=2))
        for k in range(len(labels)):
            colour = _text_colour(image, matrix[k, j])
            ax.text(j, k, f"{matrix[k, j]:.3f}", ha="center", va="center", color=colour, fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(
        xlabel="held-out MEG of participant",
        ylabel="model of participant",
        title=f"specificity: diag - off-diag = {result.difference:.3f}, p = {result.p_value:.3g}",
    )
    fig.colorbar(image, ax=ax, label="mean RSA")
    frame = Patch(fill=False, edgecolor="r", linewidth=2, label=_COLUMN_MAX_LABEL)
    fig.legend(handles=[frame], loc="outside lower center", fontsize=8, frameon=False)
    return fig


def _text_colour(image: AxesImage, value: float) -> str:
    """Black on light cells, white on dark ones, by the relative luminance of the cell colour.

    matplotlib has no luminance helper; this is WCAG 2's relative luminance, and 0.179 is where
    black and white text contrast equally with the cell.
    """
    if not np.isfinite(value):
        return "k"  # a NaN cell shows the white background
    rgb = np.asarray(image.cmap(image.norm(value))[:3])
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return "k" if linear @ np.array([0.2126, 0.7152, 0.0722]) > 0.179 else "w"


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    suffix = Path(path).suffix.lstrip(".").lower()
    written = write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=150, format=suffix))
    plt.close(fig)
    return written
