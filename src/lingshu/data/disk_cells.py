"""The part of the AnnData interface the training path uses, for cells that live on disk.

``ShardedCells`` (a directory of ``.h5ad`` files) and ``SomaCells`` (a TileDB-SOMA experiment)
keep the small ``obs``/``var`` tables in memory and read count rows from disk on request, so the
vocabulary, the loader, the data fingerprint and the prior work on them unchanged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def row_array(rows, n_rows: int) -> np.ndarray:
    """Rows given as a slice or integer array, as an int64 array checked against ``n_rows``."""
    if isinstance(rows, slice):
        rows = np.arange(*rows.indices(n_rows))
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise IndexError(f"row index out of range for {n_rows} cells")
    return rows


class DiskCells:
    """Base: ``obs``, ``var`` (DataFrames) and ``X`` (an object with ``shape`` and ``[rows]``)."""

    isbacked = True
    obs: pd.DataFrame
    var: pd.DataFrame
    X: object

    @property
    def var_names(self) -> pd.Index:
        return self.var.index

    @property
    def obs_names(self) -> pd.Index:
        return self.obs.index

    @property
    def n_obs(self) -> int:
        return self.X.shape[0]

    @property
    def n_vars(self) -> int:
        return self.X.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return self.X.shape
