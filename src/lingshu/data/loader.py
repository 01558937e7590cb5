"""Mini-batches of cells read from an in-memory or disk-backed AnnData, aligned to a vocabulary.

Only the rows of the current batch are densified. The order of cells is a pure function of
(seed, epoch), so training can resume at any step without saved loader state. For disk-backed
files the order is a *block shuffle*: contiguous blocks of cells in random order, then shuffled
within a window, which keeps reads sequential enough to be fast.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp

from lingshu.data.panels import panel_masks
from lingshu.data.vocabulary import GeneAlignment


def epoch_order(n_cells: int, seed: int, epoch: int, block_size: int = 1) -> np.ndarray:
    """Permutation of ``range(n_cells)`` for one epoch; ``block_size > 1`` gives a block shuffle."""
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    if block_size <= 1:
        return rng.permutation(n_cells)
    starts = rng.permutation(np.arange(0, n_cells, block_size))
    order = np.concatenate([np.arange(s, min(s + block_size, n_cells)) for s in starts])
    window = block_size * 8
    for start in range(0, n_cells, window):
        rng.shuffle(order[start : start + window])
    return order


class AlignedCounts:
    """Row access to raw counts in vocabulary gene order.

    ``rows(indices)`` returns a dense int32 array (len(indices), n_vocab_genes). Unobserved genes
    hold 0 there; ``observed`` says which genes carry real measurements. ``cells`` restricts the
    data to those rows of ``adata`` (e.g. after capping controls) without copying the matrix;
    indices passed to ``rows`` then count within that subset.
    """

    def __init__(self, adata: ad.AnnData, alignment: GeneAlignment, cells: np.ndarray | None = None):
        self.adata = adata
        self.alignment = alignment
        self.observed = alignment.observed
        self.backed = bool(adata.isbacked)
        self.cells = None if cells is None else np.asarray(cells, dtype=np.int64)
        # A stacked file of several gene panels: each cell observes its own panel's genes.
        self.panels = panel_masks(adata, alignment.columns)
        if self.panels is not None:
            self.observed = self.observed & self.panels[1].any(0)

    def observed_of(self, indices: np.ndarray) -> np.ndarray:
        """Which genes these cells observe: ``observed`` (G,) for a plain file, where every cell
        observes the same genes, else (len(indices), G), each cell its own panel's genes."""
        if self.panels is None:
            return self.observed
        indices = np.asarray(indices, dtype=np.int64)
        if self.cells is not None:
            indices = self.cells[indices]
        panel_of, masks = self.panels
        return masks[panel_of[indices]] & self.observed

    @property
    def n_cells(self) -> int:
        return self.adata.n_obs if self.cells is None else len(self.cells)

    def rows(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if self.cells is not None:
            indices = self.cells[indices]
        # h5py needs increasing indices: read sorted, then restore the requested order.
        order = np.argsort(indices, kind="stable")
        sorted_rows = self.adata.X[indices[order]]
        block = sp.csr_matrix(sorted_rows) if not isinstance(sorted_rows, np.ndarray) else sorted_rows
        dense = np.zeros((len(indices), len(self.alignment.columns)), dtype=np.int32)
        observed = self.observed
        picked = block[:, self.alignment.columns[observed]]
        picked = picked.toarray() if sp.issparse(picked) else np.asarray(picked)
        dense[np.ix_(order, np.flatnonzero(observed))] = picked
        return dense

    def iter_batches(self, batch_size: int, seed: int, start_step: int = 0, shard: slice = slice(None)):
        """Yield ``(step, cell_indices, counts)`` forever, epoch after epoch, from ``start_step``.

        ``shard`` picks part of each global batch (one data-parallel process's share): the
        batches are the same whatever the shard, and only the shard's rows are read.
        """
        per_epoch = max(self.n_cells // batch_size, 1)
        block = 64 if self.backed else 1
        step = start_step
        while True:
            epoch, offset = divmod(step, per_epoch)
            order = epoch_order(self.n_cells, seed, epoch, block)
            for batch_index in range(offset, per_epoch):
                idx = order[batch_index * batch_size : (batch_index + 1) * batch_size]
                if len(idx) < batch_size:  # fewer cells than one batch: sample with replacement
                    idx = np.resize(order, batch_size)
                idx = idx[shard]
                yield step, idx, self.rows(idx)
                step += 1
