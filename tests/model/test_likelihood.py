import numpy as np
import pytest
import torch

from lingshu.config import ModelConfig, TrainConfig
from lingshu.data.tokenizer import N_EXPRESSION_TOKENS, encode_counts
from lingshu.model.likelihood import (
    choose_shrinkage,
    mask_draws,
    model_nll,
    pooled_distribution,
    shrunk_table,
    table_nll,
)
from lingshu.model.transformer import MaskPredictor
from lingshu.training.trainer import Trainer, make_batch, step_generator


def _histogram(tokens: torch.Tensor) -> torch.Tensor:
    """Token counts (G, 281) of a (N, G) token matrix."""
    return torch.stack([torch.bincount(column, minlength=N_EXPRESSION_TOKENS) for column in tokens.T])


def _tokens(n_cells=50, n_genes=12, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(encode_counts(rng.negative_binomial(2, 0.3, size=(n_cells, n_genes))))


def test_table_nll_equals_the_histogram_cross_entropy_when_every_gene_is_masked():
    tokens = _tokens()
    observed = torch.ones(tokens.shape[1], dtype=torch.bool)
    counts = _histogram(tokens)
    log_p = torch.log(shrunk_table(counts, pooled_distribution(counts, observed), 1.0))
    result = table_nll(
        log_p[None].float(), np.zeros(len(tokens), int), tokens, observed, 1.0, mask_draws(*tokens.shape, 0)
    )
    by_histogram = -(counts.double() * log_p).sum().item()
    assert result.nll.sum() == pytest.approx(by_histogram, rel=1e-5)
    assert result.n_masked.sum() == tokens.numel()


def test_table_nll_scores_only_masked_observed_genes():
    tokens = _tokens()
    observed = torch.ones(tokens.shape[1], dtype=torch.bool)
    observed[3] = False
    log_p = torch.full((1, tokens.shape[1], N_EXPRESSION_TOKENS), -np.log(N_EXPRESSION_TOKENS))
    draws = mask_draws(*tokens.shape, 1)
    result = table_nll(log_p, np.zeros(len(tokens), int), tokens, observed, 0.5, draws)
    expected = ((draws < 0.5) & observed).sum(1).numpy()
    np.testing.assert_array_equal(result.n_masked, expected)
    np.testing.assert_allclose(result.nll, expected * np.log(N_EXPRESSION_TOKENS), rtol=1e-5)


@pytest.mark.parametrize("head", ["categorical", "tilted"])
def test_network_off_scores_exactly_the_models_own_table(head):
    tokens = _tokens(n_genes=20)
    observed = torch.ones(20, dtype=torch.bool)
    counts = _histogram(tokens)
    table = shrunk_table(counts, pooled_distribution(counts, observed), 1.0).float()
    torch.manual_seed(0)
    config = ModelConfig(n_genes=20, d_model=16, n_layers=1, n_heads=2, d_ff=32, patch_size=4, head=head)
    model = MaskPredictor(config)
    model.init_token_prior(table, floor=1e-30)
    with torch.no_grad():  # a network that is not zero, so that switching it off matters
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    model.init_token_prior(table, floor=1e-30)
    draws = mask_draws(*tokens.shape, 2)
    off = model_nll(model, tokens, observed, 0.5, draws, network=False)
    by_table = table_nll(torch.log(table)[None], np.zeros(len(tokens), int), tokens, observed, 0.5, draws)
    np.testing.assert_allclose(off.nll, by_table.nll, rtol=1e-4)
    on = model_nll(model, tokens, observed, 0.5, draws)
    assert not np.allclose(on.nll, off.nll)


@pytest.mark.parametrize("encoder", ["transformer", "cell_mlp"])
def test_an_untrained_tilted_head_starts_at_its_table(encoder):
    tokens = _tokens(n_genes=20)
    observed = torch.ones(20, dtype=torch.bool)
    counts = _histogram(tokens)
    table = shrunk_table(counts, pooled_distribution(counts, observed), 1.0).float()
    model = MaskPredictor(
        ModelConfig(
            n_genes=20,
            d_model=16,
            n_layers=1,
            n_heads=2,
            d_ff=32,
            patch_size=4,
            head="tilted",
            encoder=encoder,
        )
    )
    model.init_token_prior(table, floor=1e-30)
    draws = mask_draws(*tokens.shape, 3)
    on = model_nll(model, tokens, observed, 0.9, draws)
    off = model_nll(model, tokens, observed, 0.9, draws, network=False)
    np.testing.assert_allclose(on.nll, off.nll, rtol=1e-6)


def test_a_raising_slope_cannot_lift_counts_above_a_genes_highest_training_count():
    model = MaskPredictor(
        ModelConfig(n_genes=3, d_model=16, n_layers=1, n_heads=2, d_ff=32, patch_size=1, head="tilted")
    )
    table = torch.full((3, N_EXPRESSION_TOKENS), 1e-12)
    table[:, :4] = 0.25  # counts 0..3 only
    model.init_token_prior(table, floor=1e-30, highest=torch.tensor([3, 3, 3]))
    logits = model.add_exponents(model.token_prior[[0]], torch.tensor([[5.0, 0.0, 0.0]]), torch.tensor([0]))
    probabilities = torch.softmax(logits, -1)[0]
    assert probabilities[4:].sum() < 1e-6  # the slope rises to count 3 and no further
    assert probabilities[3] > probabilities[0]


def test_shrinkage_is_chosen_where_the_validation_cells_score_best():
    rng = np.random.default_rng(0)
    fitted = torch.from_numpy(rng.integers(0, 3, size=(5, N_EXPRESSION_TOKENS))).double()
    base = torch.full((N_EXPRESSION_TOKENS,), 1.0 / N_EXPRESSION_TOKENS, dtype=torch.float64)
    # Validation cells that look like the fitted counts prefer little shrinkage; cells spread
    # over every token prefer a lot.
    assert choose_shrinkage(fitted, fitted.clone(), base) <= 1.0
    assert choose_shrinkage(fitted, torch.ones_like(fitted) * 5, base) >= 10.0


# The cell MLP's read-out starts at zero behind a single hidden state: it takes a larger step.
PEAK_LR = {"transformer": 3e-3, "cell_mlp": 1e-2}


@pytest.mark.parametrize("encoder", ["transformer", "cell_mlp"])
def test_a_trained_network_reads_a_planted_dependency_that_no_table_can(encoder):
    """Gene B copies gene A, in another compression group: at t = 0.5 the model predicts B from
    A whenever A is visible, which neither the per-gene nor the per-type table can."""
    rng = np.random.default_rng(0)
    n_cells, n_genes, a = 512, 32, 0
    torch.manual_seed(0)
    config = ModelConfig(
        n_genes=n_genes,
        d_model=32,
        n_layers=1,
        n_heads=2,
        d_ff=64,
        patch_size=8,
        head="tilted",
        value_embedding=True,
        encoder=encoder,
        encoder_width=64,
    )
    model = MaskPredictor(config)
    groups = model.inverse_permutation // 8
    b = next(g for g in range(n_genes) if groups[g] != groups[a])
    types = rng.integers(0, 2, n_cells)
    counts = rng.poisson(np.where(types[:, None] == 0, 1.0, 2.0), size=(n_cells, n_genes))
    counts[:, a] = rng.choice([0, 6], size=n_cells)  # independent of the type
    counts[:, b] = counts[:, a]
    tokens = torch.from_numpy(encode_counts(counts))
    train, test = tokens[:384], tokens[384:]
    observed = torch.ones(n_genes, dtype=torch.bool)
    histogram = _histogram(train)
    table = shrunk_table(histogram, pooled_distribution(histogram, observed), 1.0).float()
    model.init_token_prior(table, floor=1e-30)
    config = TrainConfig(
        batch_size=64,
        max_steps=300,
        peak_lr=PEAK_LR[encoder],
        min_lr=3e-4,
        warmup_steps=10,
        loss_weighting="masked_mean",
    )
    trainer = Trainer(model, config)
    for step in range(300):
        rows = np.random.default_rng(step).choice(384, 64, replace=False)
        batch = make_batch(counts[rows].astype(np.int32), observed.numpy(), None, "cpu")
        trainer.train_step(batch, step_generator(0, step))
    only_b = torch.zeros(n_genes, dtype=torch.bool)
    only_b[b] = True
    draws = mask_draws(*test.shape, 7)
    learned = model_nll(model, test, observed, 0.5, draws, scored=only_b).per_gene
    per_type = torch.stack(
        [torch.log(shrunk_table(_histogram(train[types[:384] == k]), table.double(), 1.0)) for k in (0, 1)]
    )
    tables = {
        "global": table_nll(
            torch.log(table)[None], np.zeros(len(test), int), test, observed, 0.5, draws, only_b
        ),
        "cell type": table_nll(per_type.float(), types[384:], test, observed, 0.5, draws, only_b),
    }
    for name, result in tables.items():
        # Ideal: ~0 where A is visible (half the cells), the table's ln 2 where it is hidden.
        assert learned < result.per_gene - 0.2, name
