"""Empirical-Bayes shrinkage of measured log fold changes towards zero, by their sampling noise.

A fold change measured in a context with few perturbed cells is mostly noise for lowly expressed
genes; carried to another context (which does not share that context's control cells), the noise
is all that arrives. Each fold is replaced by its posterior mean under a prior learnt from all the
genes of the same measurement: a mixture of zero-mean normals on a fixed grid of variances (a
point mass at zero included), with the mixture weights fitted by EM, in the manner of adaptive
shrinkage (Stephens 2017, "ash"). Large effects measured well are kept; small noisy ones shrink.
"""

from __future__ import annotations

import numpy as np

# Prior variances of a log fold change: none (the null), then 0.1 to 5.5 on the log scale.
PRIOR_VARIANCES = np.array([0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0])
# Below this a fold's sampling variance is taken as measured exactly (genes with no counts).
MIN_VARIANCE = 1e-6


def log_fold_variance(
    mean_perturbed: np.ndarray,
    var_perturbed: np.ndarray,
    n_perturbed: int,
    mean_control: np.ndarray,
    var_control: np.ndarray,
    n_control: int,
    pseudo_count: float,
) -> np.ndarray:
    """Sampling variance (delta method) of log((mean_p + c) / (mean_ctrl + c)) per gene, from the
    two groups' per-cell variances and sizes."""
    perturbed = var_perturbed / max(n_perturbed, 1) / (mean_perturbed + pseudo_count) ** 2
    control = var_control / max(n_control, 1) / (mean_control + pseudo_count) ** 2
    return perturbed + control


def shrink_log_folds(folds: np.ndarray, variances: np.ndarray, iterations: int = 200) -> np.ndarray:
    """Posterior mean of each true fold given its measured value and sampling variance (G,).

    The prior is a mixture of N(0, s_k) over :data:`PRIOR_VARIANCES`, its weights fitted by EM to
    these genes; each gene's posterior mean is sum_k p(k | fold) * s_k / (s_k + v) * fold.
    """
    folds = np.asarray(folds, dtype=np.float64)
    variances = np.maximum(np.asarray(variances, dtype=np.float64), MIN_VARIANCE)
    total = PRIOR_VARIANCES[None, :] + variances[:, None]
    log_likelihood = -0.5 * (folds[:, None] ** 2 / total + np.log(total))
    likelihood = np.exp(log_likelihood - log_likelihood.max(1, keepdims=True))
    weights = np.full(len(PRIOR_VARIANCES), 1.0 / len(PRIOR_VARIANCES))
    for _ in range(iterations):
        posterior = likelihood * weights
        posterior /= posterior.sum(1, keepdims=True)
        weights = posterior.mean(0) + 1e-12  # never exactly 0: every gene keeps a component
        weights /= weights.sum()
    posterior = likelihood * weights
    posterior /= posterior.sum(1, keepdims=True)
    return folds * (posterior * PRIOR_VARIANCES / total).sum(1)
