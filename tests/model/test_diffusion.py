import math

import pytest
import torch
import torch.nn.functional as F

from lingshu.config import ModelConfig
from lingshu.data.tokenizer import MASK_TOKEN
from lingshu.model.diffusion import (
    _reveal_step_of_each_position,
    cosine_reveal_counts,
    guided_logits,
    masked_diffusion_loss,
    sample_categorical,
    sample_tokens,
)
from lingshu.model.transformer import MaskPredictor


def _model(n_genes=30, n_condition_tokens=0, patch_size=4, **config) -> MaskPredictor:
    torch.manual_seed(0)
    return MaskPredictor(
        ModelConfig(
            n_genes=n_genes,
            n_condition_tokens=n_condition_tokens,
            d_model=32,
            n_layers=2,
            n_heads=4,
            d_ff=64,
            patch_size=patch_size,
            **config,
        )
    ).eval()


def test_loss_scores_only_masked_observed_genes_weighted_by_one_over_t():
    model = _model()
    tokens = torch.randint(0, 20, (4, 30))
    observed = torch.ones(30, dtype=torch.bool)
    observed[[3, 17]] = False
    t = torch.tensor([0.2, 0.5, 0.7, 0.9])
    draws = torch.rand(4, 30, generator=torch.Generator().manual_seed(1))
    out = masked_diffusion_loss(model, tokens, observed, torch.Generator(), t=t, draws=draws)

    masked = (draws < t[:, None]) & observed
    inputs = torch.where(masked | ~observed, MASK_TOKEN, tokens)
    with torch.no_grad():
        nll = F.cross_entropy(model(inputs).transpose(1, 2), tokens, reduction="none")
    expected = ((nll * masked).sum(1) / (t * observed.sum())).mean()
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert out.n_masked == int(masked.sum())

    # Values at unobserved genes are never seen nor scored: changing them changes nothing.
    altered = tokens.clone()
    altered[:, [3, 17]] = 99
    again = masked_diffusion_loss(model, altered, observed, torch.Generator(), t=t, draws=draws)
    assert torch.equal(out.loss, again.loss)


def _shift_prior_model(**config) -> MaskPredictor:
    """A 30-gene model with one perturbation slot of 3 labels (0 = control) and shift-prior
    tilts 0, +1 and -1 on every gene."""
    model = _model(
        n_condition_tokens=3,
        n_condition_slots=1,
        perturbation_column=0,
        perturbation_width=1,
        n_perturbation_labels=3,
        **config,
    )
    model.init_perturbation_tilt(
        torch.tensor([0.0, 1.0, -1.0])[None, :, None].expand(1, 3, 30),
        torch.arange(281.0).clamp(max=5).expand(30, 281),
    )
    return model


@pytest.mark.parametrize("encoder", ["transformer", "cell_mlp"])
def test_a_tilted_model_with_tilts_scores_its_masked_genes_as_the_full_logits_do(encoder):
    """The tilted head with a shift prior computes logits at the masked positions only; the
    loss must equal the cross-entropy of every position's logits, masked ones weighted."""
    model = _shift_prior_model(head="tilted", encoder=encoder, patch_size=1 if encoder == "cell_mlp" else 4)
    tokens = torch.randint(0, 20, (4, 30))
    conditions = torch.tensor([[0], [1], [2], [1]])
    observed = torch.ones(4, 30, dtype=torch.bool)
    observed[0, :5] = False  # a cell of another gene panel
    t = torch.tensor([0.2, 0.5, 0.7, 0.9])
    draws = torch.rand(4, 30, generator=torch.Generator().manual_seed(1))
    out = masked_diffusion_loss(model, tokens, observed, torch.Generator(), conditions, t=t, draws=draws)

    masked = (draws < t[:, None]) & observed
    inputs = torch.where(masked | ~observed, MASK_TOKEN, tokens)
    with torch.no_grad():
        nll = F.cross_entropy(model(inputs, conditions).transpose(1, 2), tokens, reduction="none")
    expected = ((nll * masked).sum(1) / (t * observed.sum(1))).mean()
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_loss_is_zero_when_nothing_is_masked():
    model = _model()
    tokens = torch.randint(0, 20, (2, 30))
    out = masked_diffusion_loss(
        model,
        tokens,
        torch.ones(30, dtype=torch.bool),
        torch.Generator(),
        t=torch.tensor([0.5, 0.5]),
        draws=torch.ones(2, 30),
    )
    assert out.loss.item() == 0 and out.n_masked == 0


@pytest.mark.parametrize(("n", "steps"), [(30, 1), (30, 3), (1000, 7), (5, 16), (18_080, 256)])
def test_cosine_schedule_reveals_everything_and_accelerates(n, steps):
    counts = cosine_reveal_counts(n, steps)
    assert len(counts) == steps and sum(counts) == n and min(counts) >= 0
    if n >= 1000:
        assert counts[0] < counts[-1]  # cosine: few early, many late
        assert abs(counts[0] - n * (1 - math.cos(math.pi / 2 / steps))) <= 1


def test_every_free_position_is_revealed_exactly_once():
    free = torch.ones(3, 50, dtype=torch.bool)
    free[1, :10] = False  # a prefilled cell
    step_of = _reveal_step_of_each_position(free, 6, torch.Generator().manual_seed(0))
    assert (step_of[~free] == -1).all()
    assert ((step_of[free] >= 0) & (step_of[free] < 6)).all()
    for cell in range(3):
        per_step = torch.bincount(step_of[cell][free[cell]], minlength=6).tolist()
        assert per_step == cosine_reveal_counts(int(free[cell].sum()), 6)


@pytest.mark.parametrize("encoder", ["transformer", "cell_mlp"])
def test_sampler_fills_every_position_and_keeps_prefilled_tokens(encoder):
    model = _model(head="tilted", encoder=encoder) if encoder == "cell_mlp" else _model()
    prefill = torch.full((2, 30), -1)
    prefill[:, [0, 5]] = 1
    tokens = sample_tokens(model, 2, 4, torch.Generator().manual_seed(0), prefill=prefill)
    assert tokens.shape == (2, 30)
    assert ((tokens >= 0) & (tokens < MASK_TOKEN)).all()
    assert (tokens[:, [0, 5]] == 1).all()


def test_sampling_is_deterministic_under_a_seed():
    model = _model()
    a = sample_tokens(model, 3, 5, torch.Generator().manual_seed(7))
    b = sample_tokens(model, 3, 5, torch.Generator().manual_seed(7))
    c = sample_tokens(model, 3, 5, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_guidance_zero_is_exactly_the_conditional_logits():
    conditional, control = torch.randn(5, 281), torch.randn(5, 281)
    assert torch.equal(guided_logits(conditional, control, 0.0), conditional)
    torch.testing.assert_close(
        guided_logits(conditional, control, 2.0), control + 3 * (conditional - control)
    )


def test_guided_sampling_with_w0_equals_conditional_sampling():
    model = _model(n_condition_tokens=3)
    cond, ctrl = torch.tensor([[1], [2]]), torch.tensor([[0], [0]])
    plain = sample_tokens(model, 2, 3, torch.Generator().manual_seed(0), conditions=cond)
    guided = sample_tokens(
        model,
        2,
        3,
        torch.Generator().manual_seed(0),
        conditions=cond,
        control_conditions=ctrl,
        guidance=0.0,
    )
    assert torch.equal(plain, guided)


def test_categorical_sampler_matches_the_softmax_frequencies():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]])).repeat(20_000, 1)
    draws = sample_categorical(logits, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.6, 0.3]), atol=0.015, rtol=0)


def test_guidance_amplifies_the_network_but_adds_the_shift_prior_once():
    """With the network's output zeroed, conditional and control logits differ only by the
    perturbation tilt; guidance must then change nothing (w = 2 samples = w = 0 samples)."""
    model = _shift_prior_model()
    with torch.no_grad():
        model.head.weight.zero_()
    cond, ctrl = torch.tensor([[1], [2]]), torch.tensor([[0], [0]])
    tokens = torch.full((2, 30), MASK_TOKEN)
    hidden = model.encode(tokens, cond)
    torch.testing.assert_close(  # the training path adds the same tilt as the sampling path
        model.permuted_logits(hidden, None, model.tilt(cond))[:, model.inverse_permutation],
        model(tokens, cond),
    )

    def draw(w):
        return sample_tokens(
            model,
            2,
            3,
            torch.Generator().manual_seed(0),
            conditions=cond,
            control_conditions=ctrl,
            guidance=w,
        )

    assert torch.equal(draw(0.0), draw(2.0))
    assert not torch.equal(
        draw(0.0), sample_tokens(model, 2, 3, torch.Generator().manual_seed(0), conditions=ctrl)
    )


def _cell_mlp_reading_its_state(n_genes=30) -> MaskPredictor:
    model = _model(n_genes=n_genes, head="tilted", encoder="cell_mlp")
    with torch.no_grad():  # read-outs start at zero; give the state a say
        model.gene_readout.normal_(0, 0.5)
    return model


def test_first_states_draw_genes_from_the_given_states_read_out():
    model = _cell_mlp_reading_its_state()
    states = torch.randn(3, model.config.d_model, generator=torch.Generator().manual_seed(1)) * 3
    tokens = sample_tokens(
        model, 3, 4, torch.Generator().manual_seed(0), first_states=states, first_fraction=1.0
    )
    # With every gene drawn from the given states, the network never reads the cell: the
    # result is one draw per gene from those states' read-out, in the sampler's random order.
    generator = torch.Generator().manual_seed(0)
    torch.rand(3, 30, generator=generator)  # the choice of genes (all of them)
    cells, genes = torch.ones(3, 30, dtype=torch.bool).nonzero(as_tuple=True)
    with torch.no_grad():
        expected = sample_categorical(model.logits_at(states[:, None, :], cells, genes), generator)
    assert torch.equal(tokens[cells, genes], expected)
    other = sample_tokens(
        model, 3, 4, torch.Generator().manual_seed(0), first_states=-states, first_fraction=1.0
    )
    assert not torch.equal(tokens, other)


def test_first_states_then_unmasking_fills_every_position_and_keeps_prefilled_tokens():
    model = _cell_mlp_reading_its_state()
    prefill = torch.full((2, 30), -1)
    prefill[:, [0, 5]] = 1
    states = torch.randn(2, model.config.d_model)
    tokens = sample_tokens(
        model,
        2,
        4,
        torch.Generator().manual_seed(0),
        prefill=prefill,
        first_states=states,
        first_fraction=0.3,
    )
    assert ((tokens >= 0) & (tokens < MASK_TOKEN)).all()
    assert (tokens[:, [0, 5]] == 1).all()
    with pytest.raises(ValueError, match="first_states must be"):
        sample_tokens(
            model,
            2,
            4,
            torch.Generator(),
            first_states=torch.zeros(3, model.config.d_model),
            first_fraction=0.3,
        )
    with pytest.raises(ValueError, match="cell_mlp"):
        sample_tokens(_model(), 2, 4, torch.Generator(), first_states=states, first_fraction=0.3)
