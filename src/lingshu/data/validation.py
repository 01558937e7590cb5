"""Checks that a matrix holds raw UMI counts, with errors that say what was found and what to do."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp


class CountsValidationError(ValueError):
    """Raised when input is not a usable matrix of raw, non-negative integer counts."""


def _where(layer: str | None) -> str:
    return f"layer {layer!r}" if layer else "X"


def iter_row_chunks(matrix, chunk_size: int = 2048) -> Iterator[sp.csr_matrix | np.ndarray]:
    """Yield consecutive row blocks of a dense, sparse or h5py-backed matrix."""
    for start in range(0, matrix.shape[0], chunk_size):
        yield matrix[start : start + chunk_size]


def validate_counts(
    matrix, layer: str | None = None, chunk_size: int = 2048, require_counts: bool = True
) -> None:
    """Raise ``CountsValidationError`` unless ``matrix`` is non-empty, finite, non-negative integers.

    Works chunk by chunk, so a disk-backed matrix is never loaded whole. ``require_counts=False``
    accepts a matrix of zeros (e.g. generated cells being scored, however poor).
    """
    where = _where(layer)
    n_cells, n_genes = matrix.shape
    if n_cells == 0:
        raise CountsValidationError(f"{where} has no cells (0 rows); nothing to train on or score")
    if n_genes == 0:
        raise CountsValidationError(f"{where} has no genes (0 columns)")
    total = 0.0
    for chunk in iter_row_chunks(matrix, chunk_size):
        values = chunk.data if sp.issparse(chunk) else np.asarray(chunk).ravel()
        if values.size == 0:
            continue
        if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
            raise CountsValidationError(f"{where} has non-numeric dtype {values.dtype}")
        if np.issubdtype(values.dtype, np.floating):
            if not np.all(np.isfinite(values)):
                raise CountsValidationError(
                    f"{where} contains NaN or infinite values; raw UMI counts are finite integers"
                )
            fractional = values != np.round(values)
            if fractional.any():
                hint = (
                    "it looks log1p-normalised (small fractional values); pass the raw counts, "
                    "e.g. --layer counts, or the matrix before sc.pp.normalize_total/log1p"
                    if values.max() < 30
                    else "it looks normalised or imputed; pass the raw UMI counts (e.g. --layer counts)"
                )
                raise CountsValidationError(
                    f"{where} holds non-integer values (e.g. {values[fractional][0]:.4g}): {hint}"
                )
        if values.min() < 0:
            raise CountsValidationError(
                f"{where} has negative values (min {values.min()}); it looks scaled or centred "
                "(sc.pp.scale?); pass the raw UMI counts"
            )
        total += float(values.sum())
    if require_counts and total == 0:
        raise CountsValidationError(f"{where} holds only zeros; no counts to learn from")
