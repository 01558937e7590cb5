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


def train_one_step(
    adata: ad.AnnData,
    out,
    condition_keys: dict,
    control_label=None,
    depth_bins: int = 0,
    val_fraction: float = 0.0,
):
    """A tiny model after one training step: its priors and an untrained network."""
    from lingshu.training.run import train

    return train(
        adata,
        out,
        preset="tiny",
        train_overrides={"max_steps": 1, "batch_size": 8, "val_fraction": val_fraction},
        progress=False,
        condition_keys=condition_keys,
        control_label=control_label,
        depth_bins=depth_bins,
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


# --- A toy perturbation task: two contexts (c2 sequenced twice as deep), A, B and A+B ---

PERT_GENES = 60
PERT_DEPTH = {"c1": 1.0, "c2": 2.0}


def perturbation_true_mean(context: str, pert: str) -> np.ndarray:
    mean = np.full(PERT_GENES, 3.0) * PERT_DEPTH[context]
    mean[40:] *= 3.0  # a few genes expressed higher, as real panels have
    for single in pert.split("+"):
        if single == "A":
            mean[:8] *= 6.0
        elif single == "B":
            mean[8:16] *= 0.1
            mean[16:24] *= 5.0
    return mean


def draw_perturbed(rng, context: str, pert: str, n: int) -> np.ndarray:
    mean = perturbation_true_mean(context, pert)
    return rng.negative_binomial(4, 4 / (4 + mean), size=(n, PERT_GENES))


def write_perturbation_task(folder) -> dict:
    """Synthetic data file plus a user split record that points at it (the --split FILE format)."""
    rng = np.random.default_rng(0)
    groups = [(c, p) for c in PERT_DEPTH for p in ("control", "A", "B")] + [("c1", "A+B")]
    x = np.vstack([draw_perturbed(rng, c, p, 50) for c, p in groups]).astype(np.int32)
    obs = pd.DataFrame(
        {
            "line": [c for c, _ in groups for _ in range(50)],
            "pert": [p for _, p in groups for _ in range(50)],
        },
        index=[f"cell{i}" for i in range(len(x))],
    )
    path = folder / "toy.h5ad"
    ad.AnnData(
        X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(PERT_GENES)])
    ).write_h5ad(path)
    return {
        "dataset": "toy",
        "kind": "perturbation",
        "file": str(path),
        "context_key": "line",
        "perturbation_key": "pert",
        "control_label": "control",
        "rationale": "synthetic",
        "held_out": [
            {"context": "c2", "perturbation": "A", "block": "new context"},
            {"context": "c2", "perturbation": "B", "block": "new context"},
            {"context": "c1", "perturbation": "A+B", "block": "doubles"},
        ],
    }


def perturbation_oracle(train, split, requests, seed):
    """Draws from the true distributions the test data came from: the best any method can do."""
    rng = np.random.default_rng(seed + 100)
    x = np.vstack([draw_perturbed(rng, r.context, r.perturbation, r.n_cells) for r in requests]).astype(
        np.int32
    )
    obs = pd.DataFrame(
        {
            "line": [r.context for r in requests for _ in range(r.n_cells)],
            "pert": [r.perturbation for r in requests for _ in range(r.n_cells)],
        },
        index=[f"oracle{i}" for i in range(len(x))],
    )
    return ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=train.var_names))


@pytest.fixture(scope="session")
def toy_perturbation_task(tmp_path_factory):
    """(split record pointing at a written toy .h5ad, oracle predictor drawing from the truth)."""
    return write_perturbation_task(tmp_path_factory.mktemp("toy_perturbation")), perturbation_oracle
