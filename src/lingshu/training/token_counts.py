"""Per-group tallies of each gene's expression tokens: what the data-derived priors are made of."""

from __future__ import annotations

import numpy as np
import torch

from lingshu.data.loader import AlignedCounts
from lingshu.data.tokenizer import N_EXPRESSION_TOKENS, encode_counts


def token_counts(
    data: AlignedCounts,
    groups: np.ndarray,
    n_groups: int,
    *,
    width: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Token counts (n_groups, G, 281) per group of cells (``groups``: one index per cell, -1 =
    in no group); unobserved genes count nothing.

    With ``width`` the table is (n_groups, G, width + 1): column k counts token k for k < width
    and the last column every token >= width (the tail), for many groups at a fraction of the memory.
    """
    n_genes = len(data.observed)
    n_columns = N_EXPRESSION_TOKENS if width is None else width + 1
    totals = np.zeros((n_groups, n_genes * n_columns), dtype=np.int32)
    offsets = np.arange(n_genes, dtype=np.int64) * n_columns
    groups = np.asarray(groups)
    for start in range(0, data.n_cells, chunk_size):
        rows = np.arange(start, min(start + chunk_size, data.n_cells))
        tokens = encode_counts(data.rows(rows))
        tokens = (tokens if width is None else np.minimum(tokens, width)) + offsets
        observed = data.observed_of(rows)
        for group in np.unique(groups[rows]):
            if group >= 0:
                in_group = groups[rows] == group
                # A stacked file's cells count only the genes their panel measured.
                picked = (
                    tokens[in_group].ravel() if observed.ndim == 1 else tokens[in_group][observed[in_group]]
                )
                totals[group] += np.bincount(picked, minlength=totals.shape[1]).astype(np.int32)
    counts = totals.reshape(n_groups, n_genes, n_columns)
    counts[:, ~data.observed] = 0
    return torch.from_numpy(counts)
