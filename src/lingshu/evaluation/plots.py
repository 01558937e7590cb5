"""Report figures (matplotlib, object API so no display backend is needed); PNGs written atomically.

Each function takes precomputed numbers, draws one figure and writes it; none computes metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lingshu.data.writing import atomic_path
from lingshu.evaluation.metrics import Metric

KIND_COLOURS = {"model": "#1f77b4", "priors": "#9467bd", "baseline": "#ff7f0e", "ceiling": "#2ca02c"}
SOURCE_COLOURS = {"real": "#7f7f7f", "generated": "#d62728"}


def _save(fig: Figure, path: Path, dpi: int = 110) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return path


def _type_colours(types: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return {t: cmap(i % 20) for i, t in enumerate(sorted(types))}


def umap_coords(x: np.ndarray, seed: int, n_neighbors: int = 15, n_epochs: int = 200) -> np.ndarray:
    """2-D UMAP of ``x`` (umap-learn, seeded so that reruns give the same picture).

    200 epochs instead of umap-learn's 500 for small data: the layout of a few thousand cells
    has settled by then, and UMAP is the slowest step of a report.
    """
    import warnings

    import umap

    n_neighbors = int(max(2, min(n_neighbors, x.shape[0] - 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state" is expected
        return umap.UMAP(n_neighbors=n_neighbors, n_epochs=n_epochs, random_state=seed).fit_transform(x)


@dataclass(frozen=True)
class UmapPanel:
    """One method's joint embedding: 2-D coordinates, source of each cell, cell types."""

    name: str
    coords: np.ndarray
    is_generated: np.ndarray
    cell_types: np.ndarray | None


def plot_umaps(
    panels: Sequence[UmapPanel],
    path: Path,
    label_title: str = "cell type (generated: label or classifier call)",
) -> Path:
    """Real vs generated UMAPs, one row per method: by source, and by cell type (or other label)."""
    with_types = any(p.cell_types is not None for p in panels)
    n_cols = 2 if with_types else 1
    fig = Figure(figsize=(5.0 * n_cols + (2.5 if with_types else 0), 4.2 * len(panels)))
    axes = fig.subplots(len(panels), n_cols, squeeze=False)
    all_types = sorted({str(t) for p in panels if p.cell_types is not None for t in p.cell_types})
    colours = _type_colours(all_types)
    for row, panel in enumerate(panels):
        ax = axes[row, 0]
        order = np.argsort(panel.is_generated, kind="stable")  # real first, generated on top
        for source, mask in (("real", ~panel.is_generated), ("generated", panel.is_generated)):
            ax.scatter(
                *panel.coords[mask].T,
                s=4,
                alpha=0.6,
                c=SOURCE_COLOURS[source],
                label=source,
                linewidths=0,
                rasterized=True,
            )
        ax.set_title(f"{panel.name}: real vs generated")
        ax.legend(loc="best", markerscale=3, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if not with_types:
            continue
        ax = axes[row, 1]
        if panel.cell_types is None:
            ax.axis("off")
            continue
        types = np.asarray(panel.cell_types).astype(str)[order]
        ax.scatter(
            *panel.coords[order].T,
            s=4,
            alpha=0.7,
            linewidths=0,
            rasterized=True,
            c=[colours[t] for t in types],
        )
        ax.set_title(f"{panel.name}: {label_title}")
        ax.set_xticks([])
        ax.set_yticks([])
        if row == 0:
            for t in all_types:
                ax.scatter([], [], c=[colours[t]], label=t, s=20)
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    return _save(fig, path)


def plot_proportions(table: pd.DataFrame, path: Path) -> Path:
    """Grouped horizontal bars: fraction of each cell type per source (columns of ``table``)."""
    fig = Figure(figsize=(8.0, 0.5 + 0.45 * len(table) * max(1, len(table.columns)) / 2))
    ax = fig.subplots()
    n_sources = len(table.columns)
    height = 0.8 / n_sources
    positions = np.arange(len(table))
    for i, source in enumerate(table.columns):
        ax.barh(positions + i * height, table[source].to_numpy(), height=height, label=source)
    ax.set_yticks(positions + height * (n_sources - 1) / 2)
    ax.set_yticklabels(table.index)
    ax.invert_yaxis()
    ax.set_xlabel("fraction of cells (generated: classifier call)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Cell-type proportions")
    return _save(fig, path)


def plot_marker_dots(
    summaries: Mapping[str, tuple[np.ndarray, np.ndarray]],
    types: Sequence[str],
    genes: Sequence[str],
    path: Path,
) -> Path:
    """Marker dot plots, one panel per source: dot size = fraction expressing, colour = mean.

    ``summaries[source] = (fraction, mean)``, each of shape (len(types), len(genes)).
    """
    n = len(summaries)
    fig = Figure(
        figsize=(max(6.0, 0.38 * len(genes) + 3), (0.35 * len(types) + 1.6) * n),
        layout="constrained",
    )
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    vmax = (
        max(float(np.nanmax(mean)) if np.isfinite(mean).any() else 0.0 for _, mean in summaries.values())
        or 1.0
    )
    xs, ys = np.meshgrid(np.arange(len(genes)), np.arange(len(types)))
    scatter = None
    for ax, (source, (fraction, mean)) in zip(axes, summaries.items(), strict=True):
        sizes = np.nan_to_num(fraction) * 120
        scatter = ax.scatter(
            xs.ravel(),
            ys.ravel(),
            s=sizes.ravel(),
            c=np.nan_to_num(mean).ravel(),
            cmap="Reds",
            vmin=0,
            vmax=vmax,
            edgecolors="grey",
            linewidths=0.3,
        )
        ax.set_yticks(np.arange(len(types)))
        ax.set_yticklabels(types, fontsize=8)
        ax.set_xticks(np.arange(len(genes)))
        ax.set_xticklabels(genes, rotation=90, fontsize=8)
        ax.set_xlim(-0.6, len(genes) - 0.4)
        ax.set_ylim(len(types) - 0.4, -0.6)
        ax.set_title(source, fontsize=10, loc="left")
    if scatter is not None:
        fig.colorbar(scatter, ax=list(axes), label="mean log1p(CP10k)", shrink=0.3)
    return _save(fig, path)


def plot_metric_bars(
    metrics: pd.DataFrame, registry: Mapping[str, Metric], kinds: pd.Series, path: Path
) -> Path:
    """One bar chart per metric (methods as bars, coloured by model / baseline / ceiling)."""
    names = [m for m in registry if m in metrics and metrics[m].notna().any()]
    n_cols = min(3, max(1, len(names)))
    n_rows = max(1, int(np.ceil(len(names) / n_cols)))
    fig = Figure(figsize=(4.6 * n_cols, 0.6 + (0.32 * len(metrics) + 1.2) * n_rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False).ravel())
    for ax, name in zip(axes, names, strict=False):
        values = metrics[name]
        colours = [KIND_COLOURS.get(kinds.get(m, "model"), "#1f77b4") for m in values.index]
        ax.barh(np.arange(len(values)), values.to_numpy(dtype=float), color=colours)
        ax.set_yticks(np.arange(len(values)))
        ax.set_yticklabels(values.index, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{name} {registry[name].direction}", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(4))
    for ax in axes[len(names) :]:
        ax.axis("off")
    return _save(fig, path)


def plot_condition_bars(
    values: pd.DataFrame, metric: str, path: Path, kinds: Mapping[str, str] | None = None
) -> Path:
    """Grouped bars of one metric per condition (rows of ``values``), one bar per method (columns)."""
    kinds = kinds or {}
    n_rows, n_methods = values.shape
    fig = Figure(figsize=(max(5.0, 0.9 + n_rows * (0.25 * n_methods + 0.35)), 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, n_methods)
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    for i, method in enumerate(values.columns):
        colour = KIND_COLOURS["model"] if kinds.get(method) == "model" else cmap(i % 10)
        hatch = "//" if kinds.get(method) == "ceiling" else None
        ax.bar(
            np.arange(n_rows) + (i - (n_methods - 1) / 2) * width,
            values[method].to_numpy(dtype=float),
            width,
            label=method,
            color=colour,
            hatch=hatch,
            edgecolor="white" if hatch else None,
        )
    ax.set_xticks(np.arange(n_rows))
    ax.set_xticklabels([str(i) for i in values.index], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _save(fig, path)


def plot_fold_change_scatter(points: Mapping[str, pd.DataFrame], path: Path) -> Path:
    """Predicted vs real log2 fold change, one panel per method (columns ``real``, ``predicted``)."""
    names = list(points)
    n_cols = min(3, max(1, len(names)))
    n_rows = max(1, int(np.ceil(len(names) / n_cols)))
    fig = Figure(figsize=(3.8 * n_cols, 3.6 * n_rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False).ravel())
    finite = [df[["real", "predicted"]].to_numpy(dtype=float) for df in points.values() if len(df)]
    stacked = np.concatenate(finite) if finite else np.zeros((1, 2))
    stacked = stacked[np.isfinite(stacked).all(axis=1)]
    limit = float(np.abs(stacked).max()) * 1.05 if stacked.size else 1.0
    for ax, name in zip(axes, names, strict=False):
        frame = points[name]
        ax.plot([-limit, limit], [-limit, limit], color="#7f7f7f", linewidth=0.8)
        ax.axhline(0, color="#bbbbbb", linewidth=0.5)
        ax.axvline(0, color="#bbbbbb", linewidth=0.5)
        ax.scatter(frame["real"], frame["predicted"], s=8, alpha=0.6, linewidths=0)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("real log2 fold change", fontsize=8)
        ax.set_ylabel("predicted log2 fold change", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(names) :]:
        ax.axis("off")
    return _save(fig, path)


def plot_learning_curve(curve: pd.DataFrame, path: Path) -> Path:
    """Validation NLL per gene against optimisation step and against training seconds."""
    fig = Figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, column, label in (
        (axes[0], "step", "optimisation step"),
        (axes[1], "train_seconds", "training seconds"),
    ):
        ax.plot(curve[column], curve["val_nll"], marker="o", markersize=3)
        best = curve["val_nll"].idxmin()
        ax.scatter([curve[column][best]], [curve["val_nll"][best]], color="tab:red", zorder=3, label="kept")
        ax.set_xlabel(label)
    axes[0].set_ylabel("validation NLL (nats/gene)")
    axes[1].legend(frameon=False)
    fig.tight_layout()
    return _save(fig, path)
