"""Several files with different gene panels stacked into one training file.

Files measure different genes (pbmc3k its whole transcriptome, a Kang file 1,267 to 9,015
genes). Stacked over the union of their genes, a gene a file did not measure must be
*unobserved* for that file's cells (never scored, never read as zero), not a zero count. A stacked
file says which cell came from which panel in ``obs["panel"]`` and which genes each panel
measured in boolean ``var["measured_in_<panel>"]`` columns; :func:`panel_masks` turns them into
per-panel observed masks in vocabulary order, which :class:`~lingshu.data.loader.AlignedCounts`
applies to each cell.
"""

from __future__ import annotations

from collections.abc import Mapping

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

PANEL_KEY = "panel"
MEASURED_PREFIX = "measured_in_"


def stack_panels(files: Mapping[str, ad.AnnData]) -> ad.AnnData:
    """Stack ``files`` (panel name -> raw counts) over the union of their genes, recording each
    cell's panel and each panel's measured genes. Cell names are prefixed with the panel name."""
    if not files:
        raise ValueError("no files to stack")
    genes = pd.Index([])
    for adata in files.values():
        genes = genes.append(pd.Index(adata.var_names).difference(genes, sort=False))
    blocks, obs = [], []
    var = pd.DataFrame(index=genes.astype(str))
    for name, adata in files.items():
        if adata.var_names.duplicated().any():
            raise ValueError(f"panel {name!r} has duplicate gene names; run var_names_make_unique()")
        columns = genes.get_indexer(adata.var_names)
        # A 0/1 matrix moves each of the file's genes to its column of the union.
        mover = sp.csr_matrix(
            (np.ones(adata.n_vars, dtype=np.int32), (np.arange(adata.n_vars), columns)),
            shape=(adata.n_vars, len(genes)),
        )
        blocks.append((sp.csr_matrix(adata.X).astype(np.int32) @ mover).tocsr())
        obs.append(pd.DataFrame({PANEL_KEY: name}, index=[f"{name}:{cell}" for cell in adata.obs_names]))
        var[MEASURED_PREFIX + name] = np.isin(np.arange(len(genes)), columns)
    frame = pd.concat(obs)
    frame[PANEL_KEY] = pd.Categorical(frame[PANEL_KEY], categories=list(files))
    return ad.AnnData(X=sp.vstack(blocks, format="csr"), obs=frame, var=var)


def panel_masks(adata: ad.AnnData, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(panel index of each cell, (n_panels, n_vocabulary) observed masks) of a stacked file, with
    ``columns`` the vocabulary's column in ``adata`` (-1: not in it); None for a plain file."""
    flags = [c for c in adata.var.columns if str(c).startswith(MEASURED_PREFIX)]
    if PANEL_KEY not in adata.obs or not flags:
        return None
    names = [str(c)[len(MEASURED_PREFIX) :] for c in flags]
    labels = adata.obs[PANEL_KEY].astype(str).to_numpy()
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise ValueError(f"cells of panels {unknown} but no var['{MEASURED_PREFIX}<panel>'] column for them")
    measured = adata.var[flags].to_numpy(dtype=bool)  # (dataset genes, panels)
    masks = np.zeros((len(names), len(columns)), dtype=bool)
    present = columns >= 0
    masks[:, present] = measured[columns[present]].T
    return pd.Index(names).get_indexer(labels).astype(np.int64), masks
