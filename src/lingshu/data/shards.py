"""A directory of ``.h5ad`` shards read as one disk-backed dataset.

Large atlases often come as many files (one per donor, sample or batch). ``ShardedCells`` opens
every shard with ``backed='r'`` and presents them, in file-name order, as one set of cells: the
small ``obs`` tables are concatenated in memory, the count matrices stay on disk and are read
row block by row block (:class:`ShardedMatrix`), behind the interface of ``data.disk_cells``.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from lingshu.data.disk_cells import DiskCells, row_array


class ShardedMatrix:
    """Row access to the vertically stacked count matrices of several backed AnnData files."""

    def __init__(self, shards: list[ad.AnnData]):
        self.shards = shards
        self.starts = np.cumsum([0] + [s.n_obs for s in shards])
        self.shape = (int(self.starts[-1]), shards[0].n_vars)

    def __getitem__(self, rows) -> sp.csr_matrix:
        rows = row_array(rows, self.shape[0])
        order = np.argsort(rows, kind="stable")
        shard_of = np.searchsorted(self.starts, rows[order], side="right") - 1
        blocks = []
        for shard in np.unique(shard_of):
            local = rows[order][shard_of == shard] - self.starts[shard]
            block = self.shards[shard].X[local]
            blocks.append(sp.csr_matrix(block))
        stacked = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, self.shape[1]))
        return stacked[np.argsort(order)]  # back to the requested order


class ShardedCells(DiskCells):
    """The cells of every ``*.h5ad`` file in a directory, as one disk-backed dataset."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        paths = sorted(directory.glob("*.h5ad"))
        if not paths:
            raise FileNotFoundError(f"{directory} holds no .h5ad shards")
        self.paths = paths
        self.shards = [ad.read_h5ad(p, backed="r") for p in paths]
        genes = self.shards[0].var_names
        for path, shard in zip(paths[1:], self.shards[1:]):
            if not shard.var_names.equals(genes):
                raise ValueError(
                    f"shard {path.name} has other genes than {paths[0].name} (or another order); "
                    "all shards must share one gene list"
                )
        self.var = self.shards[0].var
        self.obs = pd.concat([s.obs for s in self.shards])
        self.X = ShardedMatrix(self.shards)
