"""Reading AnnData counts from ``.h5ad`` files without densifying the whole matrix."""

from __future__ import annotations

from pathlib import Path

import anndata as ad

from lingshu.data.shards import ShardedCells
from lingshu.data.soma import SomaCells, is_soma_experiment
from lingshu.data.validation import CountsValidationError, validate_counts


def read_counts(
    path: str | Path, layer: str | None = None, backed: bool = False
) -> ad.AnnData | ShardedCells | SomaCells:
    """Read an ``.h5ad`` file and return an AnnData whose ``X`` holds validated raw counts.

    ``layer`` names the layer with raw counts (default ``X``). With ``backed=True`` the matrix stays
    on disk (``backed='r'``) and is only read in row chunks; ``layer`` must then be ``None``.
    A directory is read as shards (every ``*.h5ad`` in it, backed, see ``data.shards``), or as a
    TileDB-SOMA experiment (measurement ``RNA``; ``layer`` names its X layer, default ``data``).
    """
    path = Path(path)
    if path.is_dir():
        if is_soma_experiment(path):
            cells = SomaCells(path, layer=layer or "data")
        elif layer is not None:
            raise ValueError("a directory of shards is read from X only; drop --layer")
        else:
            cells = ShardedCells(path)
        validate_counts(cells.X)
        return cells
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise CountsValidationError(f"{path} is empty (0 bytes)")
    if backed and layer is not None:
        raise ValueError("backed reading supports counts in X only; drop --layer or read into memory")
    try:
        adata = ad.read_h5ad(path, backed="r" if backed else None)
    except OSError as error:
        raise CountsValidationError(f"{path} is not a readable .h5ad file: {error}") from error
    if layer is not None:
        if layer not in adata.layers:
            raise CountsValidationError(
                f"layer {layer!r} not found in {path}; available layers: {list(adata.layers) or 'none'}"
            )
        adata = ad.AnnData(X=adata.layers[layer], obs=adata.obs, var=adata.var, uns=adata.uns)
    validate_counts(adata.X, layer)
    return adata
