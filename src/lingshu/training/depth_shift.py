"""The depth prior: each depth bin's mean fold in library size, as a per-gene logit tilt.

A deeper cell is, to first order, the same cell sampled deeper: every gene's mean scales with
the library size. For each context and depth bin the fold is the bin's mean library size over
the context's, and each gene's tilt is calibrated (as the perturbation shift prior's are) so that
the context's token distribution, tilted, has its mean scaled by that fold. One scalar per bin
rather than a fold per gene keeps the small bins of rare cell types from adding noise.

A library-size fold moves a gene's mean, not the shape of its distribution (a shallow cell has
more zeros than a scaled-down deep one), so on top of the tilt each bin gets a residual table:
the log ratio of the bin's own frequencies of the low tokens (and of the tail above them) to the
tilted distribution's, shrunk towards the tilt for small bins. Tilt and table together give each
(context, bin) its own per-gene marginal, from which the network learns the structure between genes.
"""

from __future__ import annotations

import numpy as np

from lingshu.model.tilt import calibrate_tilts, tilted_probabilities

# Pseudo-cells of the tilted distribution mixed into each bin's own token frequencies.
DEPTH_SHRINKAGE = 1.0


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


def calibrate_depth_tilts(
    bases: list[np.ndarray], log_folds: np.ndarray, table: np.ndarray, tail: np.ndarray | None = None
) -> np.ndarray:
    """Tilts (n_contexts, n_bins, G): context c's base (G, 281) tilted to each bin's fold
    (``table`` and ``tail`` as in :func:`~lingshu.model.tilt.calibrate_tilts`)."""
    n_genes = table.shape[0]
    return np.stack(
        [
            calibrate_tilts(base, np.repeat(folds[:, None], n_genes, axis=1), table, tail=tail)
            for base, folds in zip(bases, log_folds)
        ]
    )


def truncate_probabilities(probabilities: np.ndarray, width: int) -> np.ndarray:
    """(..., 281) token probabilities as (..., width + 1): the first ``width`` and the tail's sum."""
    return np.concatenate([probabilities[..., :width], probabilities[..., width:].sum(-1, keepdims=True)], -1)


def tilted_distributions(
    base: np.ndarray, tilts: np.ndarray, table: np.ndarray, width: int, tail: np.ndarray | None = None
) -> np.ndarray:
    """Truncated token distributions (n_bins, G, width + 1) of ``base`` (G, 281) under each
    bin's tilts (n_bins, G), as the model's logits form them."""
    return np.stack(
        [truncate_probabilities(tilted_probabilities(base, t, table, tail), width) for t in tilts]
    )


def depth_residuals(tilted: np.ndarray, counts: np.ndarray, shrinkage: float) -> np.ndarray:
    """Log-ratio offsets (..., G, width + 1) of each bin's own token frequencies to its tilted prior.

    ``tilted`` (..., G, width + 1) is the bin's tilted context distribution and ``counts`` the
    bin's token counts, both truncated (:func:`truncate_probabilities`, ``token_counts(..., width)``).
    The bin's frequencies are shrunk towards the tilted distribution by ``shrinkage`` pseudo-cells,
    so a bin of a few cells stays near the tilt; a bin without cells gets zeros.
    """
    floor = 1e-9
    cells = counts.sum(-1, keepdims=True)
    own = (counts + shrinkage * tilted) / np.maximum(cells + shrinkage, 1e-12)
    residual = np.log(np.clip(own, floor, None)) - np.log(np.clip(tilted, floor, None))
    return np.where(cells > 0, residual, 0.0)
