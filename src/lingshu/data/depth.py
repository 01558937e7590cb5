"""Library-size (depth) bins: each cell's sequencing-depth quantile within its context.

A depth bin is a condition like a cell type: a model trained with ``depth_bins`` sees each
cell's bin as a condition token, and generation draws a bin with each cell's context in
training proportions. Bins hold equal numbers of cells within a context (cell type, cell line),
so bin 1 is the shallowest fifth, eighth, ... of *that* context's cells, whatever its depth.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lingshu.data.loader import AlignedCounts

# The obs column the bins live in while training (never written into the user's AnnData).
DEPTH_KEY = "lingshu_depth"
DEPTH_SLOT = "depth"


def depth_label(index: int, n_bins: int) -> str:
    """The label of bin ``index`` (0-based) of ``n_bins``, e.g. ``03/08``: sorts as it counts."""
    width = len(str(n_bins))
    return f"{index + 1:0{width}d}/{n_bins:0{width}d}"


def library_sizes(data: AlignedCounts, chunk_size: int = 2048) -> np.ndarray:
    """Total counts of each cell over the model's genes (float64, one per cell)."""
    sizes = np.zeros(data.n_cells)
    for start in range(0, data.n_cells, chunk_size):
        rows = np.arange(start, min(start + chunk_size, data.n_cells))
        sizes[rows] = data.rows(rows).sum(axis=1)
    return sizes


def depth_bins(sizes: np.ndarray, n_bins: int, contexts: np.ndarray | None = None) -> np.ndarray:
    """Bin index (0..n_bins-1) of each cell: equal-count library-size quantiles per context.

    Ties are broken by cell order (stable), so the bins are a pure function of the data.
    """
    if n_bins < 1:
        raise ValueError(f"the number of depth bins must be >= 1, got {n_bins}")
    sizes = np.asarray(sizes, dtype=np.float64)
    contexts = np.zeros(len(sizes), dtype=int) if contexts is None else np.asarray(contexts)
    bins = np.zeros(len(sizes), dtype=np.int64)
    for context in pd.unique(contexts):
        members = np.flatnonzero(contexts == context)
        ranks = np.empty(len(members), dtype=np.int64)
        ranks[np.argsort(sizes[members], kind="stable")] = np.arange(len(members))
        bins[members] = ranks * n_bins // len(members)
    return bins


def with_depth_column(
    obs: pd.DataFrame, data: AlignedCounts, n_bins: int, context_key: str | None
) -> pd.DataFrame:
    """A copy of ``obs`` with each cell's depth-bin label in :data:`DEPTH_KEY`."""
    if DEPTH_KEY in obs.columns:
        raise ValueError(f"obs already has a column {DEPTH_KEY!r}; rename it before training with depth bins")
    contexts = obs[context_key].astype(str).to_numpy() if context_key else None
    largest = pd.Series(contexts).value_counts().max() if contexts is not None else len(obs)
    if largest < n_bins:
        raise ValueError(
            f"{n_bins} depth bins need a context with at least {n_bins} cells; the largest has {largest}"
        )
    bins = depth_bins(library_sizes(data), n_bins, contexts)
    return obs.assign(**{DEPTH_KEY: [depth_label(b, n_bins) for b in bins]})
