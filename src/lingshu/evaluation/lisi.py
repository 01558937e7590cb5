"""Local Inverse Simpson's Index (LISI; Korsunsky et al. 2019, Nature Methods).

Written from the published algorithm (as in harmony's ``compute_lisi``): for every cell, take
its ``3 * perplexity`` nearest neighbours, turn their distances into Gaussian weights whose
bandwidth is found by binary search so that the weights have the requested perplexity, and
compute the inverse Simpson's index of the batch labels under those weights. A LISI of 1 means a
neighbourhood of one batch only; ``n_batches`` means perfectly mixed.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors


def _weights_for_perplexity(
    distances: np.ndarray, perplexity: float, tol: float = 1e-5, n_tries: int = 50
) -> np.ndarray:
    """Row-normalised Gaussian weights exp(-beta * d) calibrated to the target perplexity.

    The binary search over ``beta`` runs for all cells at once (vectorised harmony loop).
    """
    n = distances.shape[0]
    log_u = np.log(perplexity)
    beta = np.ones(n)
    beta_min = np.full(n, -np.inf)
    beta_max = np.full(n, np.inf)

    def entropy_and_weights(beta_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.exp(-distances * beta_[:, None])
        p_sum = p.sum(axis=1)
        safe = np.where(p_sum > 0, p_sum, 1.0)
        entropy = np.where(p_sum > 0, np.log(safe) + beta_ * (distances * p).sum(axis=1) / safe, 0.0)
        return entropy, p / safe[:, None]

    entropy, weights = entropy_and_weights(beta)
    for _ in range(n_tries):
        diff = entropy - log_u
        active = np.abs(diff) >= tol
        if not active.any():
            break
        too_flat = active & (diff > 0)  # entropy too high: sharpen (increase beta)
        too_sharp = active & (diff <= 0)
        beta_min = np.where(too_flat, beta, beta_min)
        beta_max = np.where(too_sharp, beta, beta_max)
        up = np.where(np.isinf(beta_max), beta * 2.0, (beta + beta_max) / 2.0)
        down = np.where(np.isinf(beta_min), beta / 2.0, (beta + beta_min) / 2.0)
        beta = np.where(too_flat, up, np.where(too_sharp, down, beta))
        entropy, weights = entropy_and_weights(beta)
    return weights


def compute_lisi(coords: np.ndarray, labels: np.ndarray, perplexity: float = 30.0) -> np.ndarray:
    """LISI of every cell with respect to ``labels`` on the Euclidean kNN graph of ``coords``.

    ``perplexity`` is lowered automatically when there are too few cells for ``3 * perplexity``
    neighbours.
    """
    coords = np.asarray(coords, dtype=np.float64)
    labels = np.asarray(labels)
    n = coords.shape[0]
    if n < 4:
        raise ValueError(f"LISI needs at least 4 cells, got {n}")
    perplexity = float(min(perplexity, (n - 1) // 3))
    n_neighbors = int(perplexity * 3)
    # +1 because each cell is its own nearest neighbour and is dropped, as in harmony
    nn = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(coords)
    distances, indices = nn.kneighbors(coords)
    distances, indices = distances[:, 1:], indices[:, 1:]
    weights = _weights_for_perplexity(distances, perplexity)
    codes = np.unique(labels, return_inverse=True)[1].reshape(-1)
    neighbour_codes = codes[indices]
    simpson = np.zeros(n)
    for code in np.unique(codes):
        mass = np.where(neighbour_codes == code, weights, 0.0).sum(axis=1)
        simpson += mass**2
    return 1.0 / simpson


def scaled_ilisi(coords: np.ndarray, batches: np.ndarray, perplexity: float = 30.0) -> float:
    """Median iLISI over cells, rescaled to [0, 1] as (LISI - 1) / (n_batches - 1).

    The median and the rescaling follow scib's ``ilisi_graph(scale=True)``, which produced the
    paper's values (about 0.9 for a good generator).
    """
    n_batches = np.unique(batches).size
    if n_batches < 2:
        raise ValueError("iLISI needs at least two batches")
    lisi = compute_lisi(coords, batches, perplexity)
    return float((np.median(lisi) - 1.0) / (n_batches - 1))
