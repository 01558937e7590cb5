"""Small smoke test of the evaluation on real PBMC counts (pbmc3k, 10x Genomics)."""

import anndata as ad
import numpy as np
import pytest

from lingshu.evaluation import evaluate_generation


@pytest.mark.slow
def test_pbmc3k_baselines_rank_as_expected(pbmc3k_path, tmp_path):
    adata = ad.read_h5ad(pbmc3k_path)
    order = np.random.default_rng(0).permutation(adata.n_obs)
    real, train = adata[np.sort(order[:250])].copy(), adata[np.sort(order[250:1000])].copy()
    table = evaluate_generation(
        real,
        {},
        train,
        tmp_path,
        baselines=["independent_genes", "copy_training"],
        plots_enabled=False,
        progress=False,
    )
    ceiling = table.loc["real_ceiling"]
    # real cells mix with real cells; gene-independent cells do not
    assert ceiling["ilisi"] > 0.8 and table.loc["independent_genes", "ilisi"] < 0.2
    assert ceiling["mmd"] < table.loc["independent_genes", "mmd"]
    assert ceiling["celltype_tvd"] < 0.1
    assert bool(table.loc["copy_training", "memorisation_flag"])
    assert not bool(ceiling["memorisation_flag"])
