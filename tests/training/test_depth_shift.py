"""The depth prior: a model trained with depth bins generates each bin at its depth."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from lingshu.config import ModelConfig
from lingshu.data.conditions import ConditionMap
from lingshu.data.depth import DEPTH_KEY, with_depth_column
from lingshu.data.loader import AlignedCounts
from lingshu.data.tokenizer import MASK_TOKEN, encode_counts
from lingshu.inference.generate import generate
from lingshu.training.depth_shift import DEPTH_SHRINKAGE, depth_log_folds, depth_residuals
from tests.conftest import train_one_step


def test_log_folds_are_each_bins_mean_depth_over_its_contexts():
    sizes = np.array([1.0, 3.0, 10.0, 30.0])
    bins = np.array([0, 1, 0, 1])
    contexts = np.array([0, 0, 1, 1])
    folds = depth_log_folds(sizes, bins, contexts, n_contexts=2, n_bins=2)
    np.testing.assert_allclose(np.exp(folds), [[0.5, 1.5], [0.5, 1.5]])


def test_depth_residuals_turn_the_tilted_distribution_into_the_bins_shrunk_frequencies():
    rng = np.random.default_rng(0)
    tilted = rng.dirichlet(np.ones(4), size=(3, 5))  # 3 bins, 5 genes, width 3 + tail
    counts = rng.integers(0, 6, size=(3, 5, 4))
    counts[..., 0] += 1
    counts[2] = 0  # a bin without cells
    cells = counts.sum(-1, keepdims=True)
    for shrinkage in (0.0, 2.0):
        fitted = tilted * np.exp(depth_residuals(tilted, counts, shrinkage))
        expected = (counts + shrinkage * tilted) / np.maximum(cells + shrinkage, 1)
        np.testing.assert_allclose(fitted[:2], expected[:2], rtol=1e-9, atol=1e-8)  # 1e-9 floor
        np.testing.assert_allclose(fitted[2], tilted[2])


def test_depth_table_width_must_stay_within_the_exact_counts():
    with pytest.raises(ValueError, match="depth_table_width"):
        ModelConfig(depth_table_width=101)


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


@pytest.mark.parametrize("depth_bins", [4, 0])
def test_an_untrained_depth_model_generates_deep_cells_for_deep_bins(tmp_path, depth_bins):
    """One training step: the network has learned nothing, so the spread of generated library
    sizes comes from the depth tilts alone. Real cells span ~15x between the deepest and the
    shallowest quarter; without depth bins every gene is drawn independently and library sizes
    barely vary (the test's depth_bins=0 case checks that this gap is the depth prior's work)."""
    adata = _deep_and_shallow_cells()
    checkpoint = train_one_step(adata, tmp_path / "ckpt", {"source": "cell_type"}, depth_bins=depth_bins)
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
    checkpoint = train_one_step(counts_adata, tmp_path / "ckpt", {"source": "cell_type"}, depth_bins=3)
    cells = generate(checkpoint, 60, n_steps=2, progress=False, conditions={"cell_type": "type1"})
    assert (cells.obs["cell_type"] == "type1").all()
    assert set(cells.obs[DEPTH_KEY]) == {"1/3", "2/3", "3/3"}
    fixed = generate(
        checkpoint, 5, n_steps=2, progress=False, conditions={"cell_type": "type1", "depth": "3/3"}
    )
    assert (fixed.obs[DEPTH_KEY] == "3/3").all()
    with pytest.raises(ValueError, match="depth '9/3'"):
        generate(checkpoint, 5, n_steps=2, progress=False, conditions={"cell_type": "type1", "depth": "9/3"})


def test_a_depth_model_starts_from_each_bins_own_token_frequencies(tmp_path):
    """With the network silenced (head zeroed), a new depth model's distribution for a (type,
    bin) is the bin's own token frequencies, shrunk by one pseudo-cell towards the tilted type
    distribution (what the model gives with its residual table zeroed)."""
    adata = _deep_and_shallow_cells()
    checkpoint = train_one_step(adata, tmp_path / "ckpt", {"source": "cell_type"}, depth_bins=4)
    model = checkpoint.build_model()
    model.head.weight.data.zero_()
    alignment = checkpoint.vocabulary.align(adata)
    obs = with_depth_column(adata.obs, AlignedCounts(adata, alignment), 4, "cell_type")
    conditions = torch.from_numpy(ConditionMap.from_dict(checkpoint.conditions).encode_obs(obs))
    tokens = torch.full((len(obs), len(checkpoint.vocabulary)), MASK_TOKEN)
    width = model.config.depth_table_width
    with torch.no_grad():
        learnt = torch.softmax(model(tokens, conditions).double(), -1)[..., :width].numpy()
        model.depth_residual.zero_()
        tilted = torch.softmax(model(tokens, conditions).double(), -1)[..., :width].numpy()
    cell_tokens = encode_counts(AlignedCounts(adata, alignment).rows(np.arange(adata.n_obs)))
    groups = obs.groupby(["cell_type", DEPTH_KEY]).indices
    assert len(groups) == 8
    for members in groups.values():
        first = members[0]
        frequencies = np.stack([(cell_tokens[members] == k).sum(0) for k in range(width)], -1)
        expected = (frequencies + DEPTH_SHRINKAGE * tilted[first]) / (len(members) + DEPTH_SHRINKAGE)
        np.testing.assert_allclose(learnt[first], expected, atol=2e-3)  # the table is half precision
