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


def make_perturbation_adata(n_per_group: int = 24, n_genes: int = 30, seed: int = 0) -> ad.AnnData:
    """Two contexts x {control, KO1, KO2, KO1+KO2} of negative-binomial counts.

    Knocking out KOk silences gene KOk itself and its two targets DOWNk_a/DOWNk_b (control mean
    12), in both contexts; the contexts differ in their baseline profile.
    """
    rng = np.random.default_rng(seed)
    genes = ["KO1", "KO2", "DOWN1_a", "DOWN1_b", "DOWN2_a", "DOWN2_b"]
    genes += [f"GENE{j}" for j in range(n_genes - len(genes))]
    rows, labels = [], []
    for context in ("ctxA", "ctxB"):
        base = rng.gamma(1.0, 3.0, size=n_genes)
        base[:6] = 12.0
        for perturbation in ("control", "KO1", "KO2", "KO1+KO2"):
            mean = np.tile(base, (n_per_group, 1))
            for target in perturbation.split("+"):
                if target != "control":
                    k = target[-1]
                    mean[:, [genes.index(g) for g in (target, f"DOWN{k}_a", f"DOWN{k}_b")]] = 0.05
            rows.append(rng.negative_binomial(4, 4 / (4 + mean)))
            labels += [(context, perturbation)] * n_per_group
    obs = pd.DataFrame(labels, columns=["cell_line", "perturbation"])
    obs.index = [f"cell{i}" for i in range(len(obs))]
    return ad.AnnData(
        X=sp.csr_matrix(np.vstack(rows).astype(np.int32)), obs=obs, var=pd.DataFrame(index=genes)
    )


@pytest.fixture
def counts_adata() -> ad.AnnData:
    return make_counts_adata()


@pytest.fixture
def perturbation_adata() -> ad.AnnData:
    return make_perturbation_adata()


@pytest.fixture(scope="session")
def pbmc3k_path():
    """The shared pbmc3k file. Without it (a clone far from ../shared/data and no
    LINGSHU_DATA_DIR) real-data tests are reported as skipped, never as passed."""
    try:
        return dataset_path("pbmc3k", download=False)
    except FileNotFoundError as error:
        pytest.skip(f"real pbmc3k data not found: {error}")
