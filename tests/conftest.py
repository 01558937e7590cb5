"""Shared fixtures: a tiny synthetic count AnnData builder and the real shared data."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lingshu.data.paths import dataset_path
from lingshu.runtime import keep_freed_memory

# Same allocator setting as the `lingshu` command: big per-step tensors reuse their pages.
keep_freed_memory()


def make_counts_adata(n_cells: int = 64, n_genes: int = 40, n_types: int = 3, seed: int = 0) -> ad.AnnData:
    """Negative-binomial counts with a few cell types whose mean profiles differ."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, n_types, n_cells)
    base = rng.gamma(0.5, 2.0, size=(n_types, n_genes))
    mean = base[types] * rng.lognormal(0, 0.3, size=(n_cells, 1))
    counts = rng.negative_binomial(2, 2 / (2 + mean)).astype(np.int32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([f"type{t}" for t in types])},
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"GENE{j}" for j in range(n_genes)])
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)


@pytest.fixture
def counts_adata() -> ad.AnnData:
    return make_counts_adata()


@pytest.fixture(scope="session")
def pbmc3k_path():
    """The shared pbmc3k file. Without it (a clone far from ../shared/data and no
    LINGSHU_DATA_DIR) real-data tests are reported as skipped, never as passed."""
    try:
        return dataset_path("pbmc3k", download=False)
    except FileNotFoundError as error:
        pytest.skip(f"real pbmc3k data not found: {error}")
