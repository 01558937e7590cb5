"""The depth prior: each depth bin's mean fold in library size, as a per-gene logit tilt.

A deeper cell is, to first order, the same cell sampled deeper: every gene's mean scales with
the library size. For each context and depth bin the fold is the bin's mean library size over
the context's, and each gene's tilt is calibrated (as the perturbation shift prior's are) so that
the context's token distribution, tilted, has its mean scaled by that fold. One scalar per bin
rather than a fold per gene keeps the small bins of rare cell types from adding noise.
"""

from __future__ import annotations

import numpy as np

from lingshu.training.perturbation_shift import calibrate_tilts


def depth_log_folds(
    sizes: np.ndarray, bins: np.ndarray, contexts: np.ndarray, n_contexts: int, n_bins: int
) -> np.ndarray:
    """log(mean library size of bin / of its context), shape (n_contexts, n_bins); 0 where empty."""
    folds = np.zeros((n_contexts, n_bins))
    for context in range(n_contexts):
        members = contexts == context
        if not members.any() or sizes[members].mean() <= 0:
            continue
        overall = sizes[members].mean()
        for b in range(n_bins):
            chosen = members & (bins == b)
            if chosen.any() and sizes[chosen].mean() > 0:
                folds[context, b] = np.log(sizes[chosen].mean() / overall)
    return folds


def calibrate_depth_tilts(bases: list[np.ndarray], log_folds: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Tilts (n_contexts, n_bins, G): context c's base (G, 281) tilted to each bin's fold."""
    n_genes = table.shape[0]
    return np.stack(
        [
            calibrate_tilts(base, np.repeat(folds[:, None], n_genes, axis=1), table)
            for base, folds in zip(bases, log_folds)
        ]
    )
