"""The depth prior: a model trained with depth bins generates each bin at its depth."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lingshu.data.depth import DEPTH_KEY
from lingshu.inference.generate import generate
from lingshu.training.depth_shift import depth_log_folds
from lingshu.training.run import train


def test_log_folds_are_each_bins_mean_depth_over_its_contexts():
    sizes = np.array([1.0, 3.0, 10.0, 30.0])
    bins = np.array([0, 1, 0, 1])
    contexts = np.array([0, 0, 1, 1])
    folds = depth_log_folds(sizes, bins, contexts, n_contexts=2, n_bins=2)
    np.testing.assert_allclose(np.exp(folds), [[0.5, 1.5], [0.5, 1.5]])


def _deep_and_shallow_cells(n_cells: int = 160, n_genes: int = 40, seed: int = 0) -> ad.AnnData:
    """Two cell types whose cells differ ~20-fold in depth (lognormal sd 1 on every gene)."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 2, n_cells)
    profile = rng.gamma(1.0, 2.0, size=(2, n_genes))
    depth = rng.lognormal(0, 1.0, size=(n_cells, 1))
    counts = rng.poisson(profile[types] * depth).astype(np.int32)
    obs = pd.DataFrame({"cell_type": [f"type{t}" for t in types]}, index=[f"c{i}" for i in range(n_cells)])
    return ad.AnnData(
        X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)])
    )


def _train_one_step(adata: ad.AnnData, out, depth_bins: int):
    """A cell-type model after one step: its generated cells show its priors, not learning."""
    return train(
        adata,
        out,
        preset="tiny",
        train_overrides={"max_steps": 1, "batch_size": 8},
        progress=False,
        condition_keys={"source": "cell_type"},
        depth_bins=depth_bins,
    )


@pytest.mark.parametrize("depth_bins", [4, 0])
def test_an_untrained_depth_model_generates_deep_cells_for_deep_bins(tmp_path, depth_bins):
    """One training step: the network has learned nothing, so the spread of generated library
    sizes comes from the depth tilts alone. Real cells span ~15x between the deepest and the
    shallowest quarter; without depth bins every gene is drawn independently and library sizes
    barely vary (the test's depth_bins=0 case checks that this gap is the depth prior's work)."""
    adata = _deep_and_shallow_cells()
    checkpoint = _train_one_step(adata, tmp_path / "ckpt", depth_bins)
    cells = generate(checkpoint, 400, n_steps=4, progress=False, seed=1)
    sizes = np.asarray(cells.X.sum(1)).ravel()
    real = np.asarray(adata.X.sum(1)).ravel()
    real_spread = np.quantile(real, 0.9) / np.quantile(real, 0.1)
    spread = np.quantile(sizes, 0.9) / np.quantile(sizes, 0.1)
    if depth_bins:
        assert sorted(cells.obs[DEPTH_KEY].unique()) == ["1/4", "2/4", "3/4", "4/4"]
        by_bin = pd.Series(sizes).groupby(cells.obs[DEPTH_KEY].to_numpy()).mean()
        assert by_bin.is_monotonic_increasing and by_bin.iloc[-1] > 5 * by_bin.iloc[0], by_bin
        assert spread > 0.5 * real_spread, (spread, real_spread)
    else:
        assert spread < 0.3 * real_spread, (spread, real_spread)


def test_generation_draws_the_depth_bin_with_the_asked_cell_type(tmp_path, counts_adata):
    checkpoint = _train_one_step(counts_adata, tmp_path / "ckpt", 3)
    cells = generate(checkpoint, 60, n_steps=2, progress=False, conditions={"cell_type": "type1"})
    assert (cells.obs["cell_type"] == "type1").all()
    assert set(cells.obs[DEPTH_KEY]) == {"1/3", "2/3", "3/3"}
    fixed = generate(
        checkpoint, 5, n_steps=2, progress=False, conditions={"cell_type": "type1", "depth": "3/3"}
    )
    assert (fixed.obs[DEPTH_KEY] == "3/3").all()
    with pytest.raises(ValueError, match="depth '9/3'"):
        generate(checkpoint, 5, n_steps=2, progress=False, conditions={"cell_type": "type1", "depth": "9/3"})
