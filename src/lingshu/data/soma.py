"""Cells from a TileDB-SOMA experiment (optional extra ``lingshu-cell[large]``).

SOMA stores atlases of millions of cells as sparse arrays that are read by coordinates. Here the
``obs`` and ``var`` tables are read once; count rows are read on request by their ``soma_joinid``,
so training streams from the experiment with flat host memory, like a backed ``.h5ad``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from lingshu.data.disk_cells import DiskCells, row_array

SOMA_INSTALL_HINT = "pip install 'lingshu-cell[large]'"


def is_soma_experiment(path: str | Path) -> bool:
    """Whether ``path`` looks like a TileDB group (a SOMA experiment) rather than a folder of files."""
    path = Path(path)
    return path.is_dir() and ((path / "__tiledb_group.tdb").exists() or (path / "__group").is_dir())


def _import_soma():
    try:
        import tiledbsoma
    except ImportError as error:
        raise ImportError(f"reading TileDB-SOMA needs tiledbsoma: {SOMA_INSTALL_HINT}") from error
    return tiledbsoma


class SomaMatrix:
    """Row access to one X layer of a SOMA measurement: ``matrix[rows]`` -> CSR."""

    def __init__(self, array, shape: tuple[int, int]):
        self.array = array
        self.shape = shape

    def __getitem__(self, rows):
        rows = row_array(rows, self.shape[0])
        unique, inverse = np.unique(rows, return_inverse=True)
        table = self.array.read(coords=(unique, slice(None))).tables().concat()
        positions = np.searchsorted(unique, table["soma_dim_0"].to_numpy())
        block = sp.csr_matrix(
            (table["soma_data"].to_numpy(), (positions, table["soma_dim_1"].to_numpy())),
            shape=(len(unique), self.shape[1]),
        )
        return block[inverse]


class SomaCells(DiskCells):
    """The cells of a SOMA experiment's measurement (default ``RNA``), counts layer ``data``."""

    def __init__(self, uri: str | Path, measurement: str = "RNA", layer: str = "data"):
        soma = _import_soma()
        self.experiment = soma.Experiment.open(str(uri))
        if measurement not in self.experiment.ms:
            raise ValueError(
                f"{uri} has no measurement {measurement!r}; it has {list(self.experiment.ms.keys())}"
            )
        ms = self.experiment.ms[measurement]
        if layer not in ms.X:
            raise ValueError(
                f"{uri} measurement {measurement!r} has no X layer {layer!r}; it has {list(ms.X.keys())}"
            )
        obs = self.experiment.obs.read().concat().to_pandas()
        var = ms.var.read().concat().to_pandas()
        # Rows and columns are addressed by soma_joinid; keep them in that order.
        obs = obs.sort_values("soma_joinid")
        var = var.sort_values("soma_joinid")
        self.obs = obs.set_index(
            obs["obs_id"].astype(str) if "obs_id" in obs else obs["soma_joinid"].astype(str)
        )
        self.var = var.set_index(
            var["var_id"].astype(str) if "var_id" in var else var["soma_joinid"].astype(str)
        )
        array = ms.X[layer]
        shape = (int(obs["soma_joinid"].max()) + 1, int(var["soma_joinid"].max()) + 1)
        self.X = SomaMatrix(array, shape)
