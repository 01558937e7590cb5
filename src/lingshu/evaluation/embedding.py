"""Seeded subsampling, joint PCA and nearest-neighbour distances shared by several metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits


def subsample_index(n: int, max_n: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most ``max_n`` of ``n`` rows, drawn without replacement."""
    if max_n is None or n <= max_n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max_n, replace=False))


def fit_pca(matrix: np.ndarray, n_pcs: int, seed: int) -> PCA:
    """Centred PCA (no scaling, as scanpy's default) with at most ``n_pcs`` components.

    The number of components is capped by the number of rows and columns so that tiny inputs
    still work. BLAS runs single-threaded here: numpy and scipy ship separate OpenBLAS copies
    whose idle thread pools contend on small machines and made the small QR steps of the
    randomized SVD ~100x slower on 2 cores; the big products lose little.
    """
    n_components = int(max(1, min(n_pcs, matrix.shape[0] - 1, matrix.shape[1])))
    # randomized SVD is much faster than full SVD on ~16k genes and is seeded
    solver = "randomized" if n_components < min(matrix.shape) * 0.8 else "full"
    pca = PCA(n_components=n_components, svd_solver=solver, random_state=seed)
    with threadpool_limits(limits=1, user_api="blas"):
        pca.fit(matrix)
    return pca


@dataclass(frozen=True)
class JointEmbedding:
    """PCA coordinates of real and generated cells fitted together.

    ``real_index``/``generated_index`` give which rows of the original matrices were kept.
    """

    real: np.ndarray
    generated: np.ndarray
    real_index: np.ndarray
    generated_index: np.ndarray


def joint_pca(
    real: np.ndarray, generated: np.ndarray, n_pcs: int, max_cells: int | None, seed: int
) -> JointEmbedding:
    """Joint PCA of (subsampled) real and generated cells, as in the paper's MMD/iLISI code."""
    rng = np.random.default_rng(seed)
    real_index = subsample_index(real.shape[0], max_cells, rng)
    generated_index = subsample_index(generated.shape[0], max_cells, rng)
    pooled = np.vstack([real[real_index], generated[generated_index]])
    coords = fit_pca(pooled, n_pcs, seed).transform(pooled).astype(np.float64)
    n_real = real_index.size
    return JointEmbedding(coords[:n_real], coords[n_real:], real_index, generated_index)


def nearest_distances(query: np.ndarray, reference: np.ndarray, block_size: int = 1024) -> np.ndarray:
    """Euclidean distance from each query row to its nearest reference row (blocked, exact)."""
    if reference.shape[0] == 0:
        raise ValueError("the reference set is empty")
    query = np.asarray(query, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    reference_sq = np.einsum("ij,ij->i", reference, reference)
    out = np.empty(query.shape[0])
    for start in range(0, query.shape[0], block_size):
        block = query[start : start + block_size]
        # float32 expansion of ||q-r||^2 finds the nearest row cheaply; its distance is then
        # recomputed exactly in float64 so that an exact copy gives exactly zero
        sq = reference_sq[None, :] - 2.0 * block @ reference.T
        nearest = reference[np.argmin(sq, axis=1)].astype(np.float64)
        diff = block.astype(np.float64) - nearest
        out[start : start + block_size] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out
