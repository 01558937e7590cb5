"""A tiny model trained briefly on real pbmc3k counts must beat the per-gene marginal predictor."""

import numpy as np
import pytest
import torch

from lingshu.data.io import read_counts
from lingshu.data.loader import AlignedCounts
from lingshu.data.tokenizer import N_EXPRESSION_TOKENS, encode_counts
from lingshu.model.diffusion import masked_diffusion_loss
from lingshu.training.run import train


def _subset(pbmc3k_path, n_cells=300, n_genes=2000):
    adata = read_counts(pbmc3k_path)
    rng = np.random.default_rng(0)
    cells = np.sort(rng.choice(adata.n_obs, n_cells, replace=False))
    detected = np.asarray((adata.X[cells] > 0).sum(0)).ravel()
    genes = np.sort(np.argsort(-detected, kind="stable")[:n_genes])
    return adata[cells][:, genes].copy()


def _marginal_nll(tokens: np.ndarray) -> float:
    """Cross-entropy of predicting each gene by its own token frequencies (add-one smoothing)."""
    nll = 0.0
    for column in tokens.T:
        counts = np.bincount(column, minlength=N_EXPRESSION_TOKENS) + 1.0
        nll += -np.log(counts[column] / counts.sum()).sum()
    return nll / tokens.size


@pytest.mark.slow
def test_tiny_model_beats_the_marginal_token_frequencies(pbmc3k_path, tmp_path):
    adata = _subset(pbmc3k_path)
    result = train(
        adata,
        tmp_path / "ckpt",
        preset="tiny",
        train_overrides={"max_steps": 150, "batch_size": 32},
        progress=False,
    )
    model = result.build_model(use_ema=True)
    data = AlignedCounts(adata, result.vocabulary.align(adata))
    tokens = torch.from_numpy(encode_counts(data.rows(np.arange(adata.n_obs))))
    observed = torch.from_numpy(data.observed)
    with torch.no_grad():
        losses = [
            masked_diffusion_loss(model, tokens, observed, torch.Generator().manual_seed(s)).loss.item()
            for s in range(8)
        ]
    model_nll, marginal = float(np.mean(losses)), _marginal_nll(tokens.numpy())
    print(f"model {model_nll:.4f} nats/gene vs marginal {marginal:.4f}")
    assert model_nll < 0.9 * marginal
