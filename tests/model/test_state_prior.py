import numpy as np
import pytest
import torch

from lingshu.config import ModelConfig
from lingshu.data.tokenizer import MASK_TOKEN
from lingshu.model.state_prior import StatePrior, cell_states, components_for, fit_state_prior
from lingshu.model.transformer import MaskPredictor


def _two_blobs(n=2000, share=0.7, seed=0):
    rng = np.random.default_rng(seed)
    first = rng.random(n) < share
    centres = np.where(first[:, None], 4.0, -4.0) * np.ones((1, 3))
    return centres + rng.normal(0, 0.5, (n, 3)), first


def test_the_mixture_finds_two_cell_states_and_draws_them_in_their_proportions():
    states, _ = _two_blobs()
    prior = StatePrior.fit(states, n_components=2, first_fraction=0.1, seed=0)
    order = torch.argsort(prior.weights)
    torch.testing.assert_close(prior.weights[order], torch.tensor([0.3, 0.7]), atol=0.03, rtol=0)
    torch.testing.assert_close(prior.means[order], torch.tensor([[-4.0] * 3, [4.0] * 3]), atol=0.1, rtol=0)
    drawn = prior.sample(4000, torch.Generator().manual_seed(0))
    assert abs(float((drawn[:, 0] > 0).float().mean()) - 0.7) < 0.03
    # Each draw lies within its component's spread (sd 0.5), not between the two states.
    assert float(drawn.abs().min()) > 1.0


def test_draws_are_reproducible_and_survive_a_round_trip():
    prior = StatePrior.fit(_two_blobs()[0], n_components=2, first_fraction=0.25, seed=0)
    again = StatePrior.from_dict(prior.to_dict())
    a = prior.sample(5, torch.Generator().manual_seed(3))
    b = again.sample(5, torch.Generator().manual_seed(3))
    c = prior.sample(5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert again.first_fraction == 0.25 and again.n_components == 2


def test_bad_inputs_are_rejected():
    states, _ = _two_blobs(n=50)
    with pytest.raises(ValueError, match="at least 64"):
        StatePrior.fit(states, n_components=64, first_fraction=0.1, seed=0)
    states[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        StatePrior.fit(states, n_components=2, first_fraction=0.1, seed=0)
    with pytest.raises(ValueError, match="first_fraction"):
        StatePrior.fit(_two_blobs(n=50)[0], n_components=2, first_fraction=0.0, seed=0)


def _cell_mlp(n_genes=20) -> MaskPredictor:
    torch.manual_seed(0)
    config = ModelConfig(
        n_genes=n_genes, d_model=8, n_heads=2, head="tilted", encoder="cell_mlp", encoder_width=8
    )
    return MaskPredictor(config).eval()


def test_cell_states_are_the_encoders_states_of_whole_cells_and_need_the_cell_mlp():
    model = _cell_mlp()
    tokens = torch.randint(0, 5, (300, 20))
    states = cell_states(model, tokens, batch_size=64)
    with torch.no_grad():
        torch.testing.assert_close(states, model.encode(tokens)[:, 0])
    transformer = MaskPredictor(
        ModelConfig(n_genes=20, d_model=8, n_layers=1, n_heads=2, d_ff=8, patch_size=4)
    )
    with pytest.raises(ValueError, match="cell_mlp"):
        cell_states(transformer, tokens)


def test_fitting_shows_unobserved_genes_as_masked():
    model = _cell_mlp()
    counts = np.random.default_rng(0).poisson(2.0, (200, 20))
    observed = np.ones(20, dtype=bool)
    observed[:5] = False
    prior = fit_state_prior(model, lambda rows: counts[rows], 200, observed, 2, 0.1, seed=0)
    shifted = counts.copy()
    shifted[:, :5] += 50  # unobserved genes' values must not reach the states
    same = fit_state_prior(model, lambda rows: shifted[rows], 200, observed, 2, 0.1, seed=0)
    torch.testing.assert_close(prior.means, same.means)
    tokens = torch.from_numpy(counts).long()
    tokens[:, :5] = MASK_TOKEN
    expected = StatePrior.fit(cell_states(model, tokens).numpy(), 2, 0.1, seed=0)
    torch.testing.assert_close(prior.means, expected.means)


def test_few_cells_get_fewer_components():
    assert components_for(16, 1944) == 16
    assert components_for(16, 450) == 4
    assert components_for(16, 30) == 1
    model = _cell_mlp()
    counts = np.random.default_rng(0).poisson(2.0, (250, 20))
    prior = fit_state_prior(model, lambda rows: counts[rows], 250, np.ones(20, bool), 16, 0.1, seed=0)
    assert prior.n_components == 2
