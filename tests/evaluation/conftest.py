"""Synthetic negative-binomial count data shared by the evaluation tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData


def make_counts(
    n_cells: int = 300,
    n_genes: int = 120,
    n_types: int = 3,
    seed: int = 0,
    shift: float = 0.0,
    profile_seed: int = 1234,
    dispersion: float = 0.3,
    type_weights: tuple[float, ...] | None = None,
    n_unassigned: int = 0,
) -> AnnData:
    """NB counts with ``n_types`` cell types that differ in their marker genes.

    The gene profiles come from ``profile_seed`` so that different ``seed`` values are
    independent samples of the *same* distribution. ``shift`` multiplies the means of a fixed
    half of the genes by ``exp(shift)``, a distribution shift whose size is known.
    """
    profile = np.random.default_rng(profile_seed)
    base = np.exp(profile.normal(0.0, 1.2, size=n_genes))
    type_means = np.tile(base, (n_types, 1))
    markers_per_type = max(2, n_genes // (4 * n_types))
    for t in range(n_types):
        markers = profile.choice(n_genes, size=markers_per_type, replace=False)
        type_means[t, markers] *= 10.0
    shifted = profile.permutation(n_genes)[: n_genes // 2]
    type_means[:, shifted] *= np.exp(shift)

    rng = np.random.default_rng(seed)
    weights = np.asarray(type_weights or np.linspace(2.0, 1.0, n_types))
    types = rng.choice(n_types, size=n_cells, p=weights / weights.sum())
    size_factor = rng.lognormal(0.0, 0.3, size=n_cells)
    mu = type_means[types] * size_factor[:, None]
    theta = 1.0 / dispersion
    counts = rng.negative_binomial(theta, theta / (theta + mu))
    labels = np.array([f"type{t}" for t in types], dtype=object)
    labels[rng.choice(n_cells, size=n_unassigned, replace=False)] = "unassigned"
    return AnnData(
        X=sp.csr_matrix(counts.astype(np.int32)),
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical(labels)},
            index=[f"cell{seed}-{i}" for i in range(n_cells)],
        ),
        var=pd.DataFrame(index=[f"GENE{i:04d}" for i in range(n_genes)]),
    )


@pytest.fixture(scope="session")
def counts_factory() -> Callable[..., AnnData]:
    """The synthetic count builder, as a fixture (see :func:`make_counts`)."""
    return make_counts
