"""Depth bins: library-size quantiles within each context."""

import numpy as np
import pandas as pd
import pytest

from lingshu.data.depth import DEPTH_KEY, depth_bins, depth_label, with_depth_column
from lingshu.data.loader import AlignedCounts
from lingshu.data.vocabulary import GeneVocabulary


def test_bins_hold_equal_numbers_of_cells_per_context_in_depth_order():
    rng = np.random.default_rng(0)
    sizes = rng.lognormal(7, 0.5, 300)
    contexts = np.repeat(["a", "b", "c"], [100, 120, 80])
    sizes[contexts == "b"] *= 10  # a deep context still spans every bin
    bins = depth_bins(sizes, 4, contexts)
    for context in "abc":
        members = contexts == context
        counts = np.bincount(bins[members], minlength=4)
        assert counts.max() - counts.min() <= 1, counts
        # every cell of a higher bin is at least as deep as every cell of a lower one
        for low in range(3):
            assert sizes[members & (bins == low)].max() <= sizes[members & (bins == low + 1)].min()


def test_labels_sort_in_bin_order():
    labels = [depth_label(i, 12) for i in range(12)]
    assert sorted(labels) == labels and labels[0] == "01/12"


def test_the_depth_column_is_added_to_a_copy(counts_adata):
    data = AlignedCounts(counts_adata, GeneVocabulary.from_adata(counts_adata).align(counts_adata))
    obs = with_depth_column(counts_adata.obs, data, 3, "cell_type")
    assert DEPTH_KEY in obs and DEPTH_KEY not in counts_adata.obs
    sizes = np.asarray(counts_adata.X.sum(1)).ravel()
    deepest = obs[DEPTH_KEY] == depth_label(2, 3)
    assert (
        sizes[deepest.to_numpy()].mean()
        > 1.5 * sizes[(obs[DEPTH_KEY] == depth_label(0, 3)).to_numpy()].mean()
    )
    with pytest.raises(ValueError, match="at least 80 cells"):
        with_depth_column(counts_adata.obs, data, 80, "cell_type")
    taken = counts_adata.obs.assign(**{DEPTH_KEY: pd.Series("x", index=counts_adata.obs.index)})
    with pytest.raises(ValueError, match="already has a column"):
        with_depth_column(taken, data, 3, None)
