import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from lingshu.config import ModelConfig, get_preset, replace
from lingshu.data.tokenizer import FIRST_CONDITION_TOKEN, MASK_TOKEN, N_EXPRESSION_TOKENS
from lingshu.model.tilt import PSEUDO_COUNT, calibrate_tilts, poisson_tail, token_values
from lingshu.model.transformer import MaskPredictor


def _tiny(n_genes=37, patch_size=8, **kw) -> MaskPredictor:
    torch.manual_seed(0)
    config = ModelConfig(
        n_genes=n_genes, d_model=32, n_layers=2, n_heads=4, d_ff=64, patch_size=patch_size, **kw
    )
    return MaskPredictor(config).eval()


def _naive_forward(model: MaskPredictor, tokens, conditions=None):
    """The architecture written out step by step: embed, permute, flatten groups, project, blocks,
    project back, un-permute, head. The fast path must give the same logits."""
    c = model.config
    b, g = tokens.shape
    x = model.token_embedding(tokens) + model.gene_embedding
    x = x[:, model.permutation]
    x = F.pad(x, (0, 0, 0, model.n_groups * c.patch_size - g))
    x = model.compress(x.reshape(b, model.n_groups, c.patch_size * c.d_model))
    n_cond = 0
    if conditions is not None:
        n_cond = conditions.shape[1]
        x = torch.cat([model.token_embedding(conditions + FIRST_CONDITION_TOKEN), x], 1)
    from lingshu.model.transformer import rotary_tables

    cos, sin = rotary_tables(x.shape[1], c.d_model // c.n_heads, c.rope_base, "cpu")
    for block in model.blocks:
        x = block(x, cos, sin)
    x = model.final_norm(x[:, n_cond:])
    x = model.decompress(x).reshape(b, -1, c.d_model)[:, :g][:, model.inverse_permutation]
    return model.head(x + model.gene_embedding) + model.token_prior


def test_fast_compression_path_equals_the_naive_architecture():
    for patch_size in (1, 4, 8):
        model = _tiny(patch_size=patch_size, n_condition_tokens=3)
        model.init_token_prior(torch.rand(37, 281))
        tokens = torch.randint(0, MASK_TOKEN + 1, (3, 37))
        conditions = torch.tensor([[0, 2], [1, 2], [2, 0]])
        with torch.no_grad():
            torch.testing.assert_close(
                model(tokens, conditions),
                _naive_forward(model, tokens, conditions),
                rtol=1e-4,
                atol=1e-5,
            )


def test_output_has_one_distribution_per_gene_and_ignores_padding():
    model = _tiny(n_genes=37, patch_size=8)  # 37 genes -> 5 groups, 3 padded slots
    logits = model(torch.randint(0, 281, (2, 37)))
    assert logits.shape == (2, 37, 281)
    assert torch.isfinite(logits).all()


def test_model_is_bidirectional_every_gene_sees_every_other():
    model = _tiny(n_genes=64, patch_size=1)
    tokens = torch.zeros(1, 64, dtype=torch.long)
    changed = tokens.clone()
    changed[0, -1] = 50  # change the last gene only
    with torch.no_grad():
        delta = (model(tokens) - model(changed)).abs().sum(-1)[0]
    assert (delta[:-1] > 0).all()  # no causal mask: earlier genes react too


def test_permutation_is_fixed_by_seed_and_a_true_permutation():
    a, b = _tiny(permutation_seed=5), _tiny(permutation_seed=5)
    assert torch.equal(a.permutation, b.permutation)
    assert torch.equal(torch.sort(a.permutation).values, torch.arange(37))
    assert not torch.equal(a.permutation, _tiny(permutation_seed=6).permutation)
    assert torch.equal(a.permutation[a.inverse_permutation], torch.arange(37))


def test_no_linear_layer_has_a_bias():
    model = _tiny()
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_paper_preset_has_85m_block_parameters_plus_compression():
    config = replace(get_preset("paper").model, n_genes=18_080)
    model = MaskPredictor(config)
    assert abs(model.block_parameter_count() - 85.2e6) / 85.2e6 < 0.01
    compression = sum(p.numel() for p in (*model.compress.parameters(), *model.decompress.parameters()))
    assert compression == 2 * 8 * 640 * 640
    assert model.n_groups == 2_260


def test_token_prior_makes_the_untrained_model_predict_the_marginals():
    model = _tiny(n_genes=37)
    frequencies = torch.zeros(37, 281)
    frequencies[:, 0] = torch.linspace(50, 95, 37)
    frequencies[:, 1] = 100 - frequencies[:, 0]
    model.init_token_prior(frequencies)
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.full((1, 37), MASK_TOKEN)), -1)[0]
    torch.testing.assert_close(probabilities[:, 0], frequencies[:, 0] / 100, atol=0.02, rtol=0)
    assert probabilities[:, 100:].sum(-1).max() < 1e-4  # unseen high-count tokens get ~no mass


def test_a_combination_slot_sums_its_genes_in_any_order_and_padding_adds_nothing():
    model = _tiny(n_condition_tokens=5, n_condition_slots=2, condition_widths=(1, 2)).eval()
    tokens = torch.full((1, 37), MASK_TOKEN)

    def hidden(*conditions):
        return model.encode(tokens, torch.tensor([conditions]))

    torch.testing.assert_close(hidden(0, 2, 3), hidden(0, 3, 2))
    assert not torch.allclose(hidden(0, 2, -1), hidden(0, 2, 3))
    embedding = model.token_embedding.weight[FIRST_CONDITION_TOKEN:]
    torch.testing.assert_close(
        model.condition_embedding(torch.tensor([[1, 2, 3], [1, 4, -1]])),
        torch.stack(
            [
                torch.stack([embedding[1], embedding[2] + embedding[3]]),
                torch.stack([embedding[1], embedding[4]]),
            ]
        ),
    )


# One source (cell type) condition slot of 3 contexts, in the first column of the layout.
CONTEXT_SLOT = dict(
    n_condition_tokens=3, n_condition_slots=1, context_column=0, context_offset=0, n_contexts=3
)


def _context_model(shrinkage_counts):
    """A 2-context model whose network output is zeroed, so its logits are the two priors."""
    model = _tiny(n_genes=37, **CONTEXT_SLOT)
    with torch.no_grad():
        model.head.weight.zero_()
    counts = torch.zeros(3, 37, 281)
    counts[0, :, 0], counts[0, :, 5] = 90, 10  # context 0: mostly zeros
    counts[1, :, 0], counts[1, :, 5] = 10, 90  # context 1: mostly count 5
    counts[2, :, 0], counts[2, :, 5] = 1, 1  # context 2: two cells only
    overall = counts.sum(0)
    model.init_token_prior(overall)
    model.init_context_prior(counts, overall, shrinkage=shrinkage_counts)
    return model, counts


def test_context_prior_gives_each_context_its_own_marginals():
    model, counts = _context_model(shrinkage_counts=0.0)
    tokens = torch.full((2, 37), MASK_TOKEN)
    with torch.no_grad():
        probabilities = torch.softmax(model(tokens, torch.tensor([[0], [1]])), -1)
    torch.testing.assert_close(probabilities[0, :, 0], torch.full((37,), 0.9), atol=1e-3, rtol=0)
    torch.testing.assert_close(probabilities[1, :, 5], torch.full((37,), 0.9), atol=1e-3, rtol=0)
    # The training path (permuted order) adds the same offsets as the sampling path.
    hidden = model.encode(tokens, torch.tensor([[0], [1]]))
    permuted = model.permuted_logits(hidden, model.context_index(torch.tensor([[0], [1]])))
    torch.testing.assert_close(
        permuted[:, model.inverse_permutation], model(tokens, torch.tensor([[0], [1]]))
    )


def test_context_prior_shrinks_a_small_context_towards_all_cells():
    model, counts = _context_model(shrinkage_counts=20.0)
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.full((1, 37), MASK_TOKEN), torch.tensor([[2]])), -1)
    overall = counts.sum(0)[0, 0] / counts.sum(0)[0].sum()  # 101/202 zeros over all cells
    expected = (1 + 20 * overall) / (2 + 20)
    torch.testing.assert_close(probabilities[0, :, 0], torch.full((37,), float(expected)), atol=1e-3, rtol=0)


def test_a_model_without_a_source_slot_has_no_context_prior():
    model = _tiny(n_condition_tokens=2, n_condition_slots=1)
    assert model.context_prior is None and model.context_index(torch.tensor([[1]])) is None


def _combining_model(folds: np.ndarray, log_shifts: np.ndarray | None = None) -> MaskPredictor:
    """Four genes, labels control / A / B in a two-part slot; singles' tilts calibrated to
    ``folds`` (3, 4) with the pseudo-count, raises continued by the Poisson tail. Combinations
    sum the folds, or with ``log_shifts`` (3, 4) the shifts in mean log1p(count)."""
    model = _tiny(
        n_genes=4,
        patch_size=2,
        n_condition_tokens=3,
        n_condition_slots=1,
        condition_widths=(2,),
        perturbation_column=0,
        perturbation_width=2,
        n_perturbation_labels=3,
        poisson_tail=True,
        combine_folds=log_shifts is None,
        combine_log_means=log_shifts is not None,
    )
    frequencies = np.zeros((4, N_EXPRESSION_TOKENS))
    frequencies[0, :2] = [0.98, 0.02]  # a gene at almost nothing: mean 0.02
    frequencies[1:, :30] = stats.poisson([[3.0], [1.0], [1.0]]).pmf(np.arange(30))
    table = np.broadcast_to(token_values(), frequencies.shape).copy()
    tail = poisson_tail(frequencies)
    tilts = calibrate_tilts(frequencies, folds, table, pseudo_count=PSEUDO_COUNT, tail=tail)
    with torch.no_grad():
        model.head.weight.zero_()  # the logits are then the priors alone
    model.init_token_prior(torch.from_numpy(frequencies).float())
    model.init_tilt_tail(torch.from_numpy(tail).float())
    model.init_perturbation_tilt(
        torch.from_numpy(tilts)[None].float(),
        torch.from_numpy(table).float(),
        torch.from_numpy(folds)[None].float(),
        log_shifts=None if log_shifts is None else torch.from_numpy(log_shifts)[None].float(),
    )
    return model


def _prior_means(
    model: MaskPredictor, *conditions: list[int], statistic: np.ndarray | None = None
) -> np.ndarray:
    tokens = torch.full((len(conditions), 4), MASK_TOKEN)
    with torch.no_grad():
        probabilities = torch.softmax(model(tokens, torch.tensor(conditions)).double(), -1)
    return (probabilities @ torch.from_numpy(token_values() if statistic is None else statistic)).numpy()


def test_a_combination_moves_each_genes_mean_log_expression_by_its_parts_summed_shifts():
    folds = np.zeros((3, 4))
    folds[1, 1], folds[2, 1] = np.log(3.0), np.log(0.5)  # the singles' own tilts: not summed
    log_shifts = np.zeros((3, 4))
    log_shifts[1, 1], log_shifts[2, 1] = 0.3, -0.3  # A raises gene 1, B lowers it as much
    log_shifts[1, 2], log_shifts[2, 2] = 0.2, 0.25  # both raise gene 2
    model = _combining_model(folds, log_shifts)
    statistic = np.log1p(token_values())
    control, double, swapped = _prior_means(model, [0, -1], [1, 2], [2, 1], statistic=statistic)
    np.testing.assert_allclose(double - control, [0.0, 0.0, 0.45, 0.0], atol=1e-4)
    np.testing.assert_allclose(double, swapped, rtol=1e-6)
    # A single keeps the tilt calibrated to its own fold: mean count x3.
    tripled = (3.0 + PSEUDO_COUNT) * 3 - PSEUDO_COUNT  # gene 1 is Poisson(3) in the controls
    assert _prior_means(model, [1, -1])[0, 1] == pytest.approx(tripled, rel=1e-3)
    assert model.config.combination_rule == "log means" and "combined log means" in model.config.priors()


def test_the_average_perturbation_moves_each_gene_by_the_mean_of_the_labels_shifts():
    folds = np.zeros((3, 4))
    folds[1, 1], folds[2, 1] = np.log(3.0), np.log(0.5)
    log_shifts = np.zeros((3, 4))
    log_shifts[1, 1], log_shifts[2, 1] = 0.3, -0.3
    log_shifts[1, 2], log_shifts[2, 2] = 0.2, 0.25
    model = _combining_model(folds, log_shifts)
    statistic = torch.from_numpy(np.log1p(token_values()))

    def shift(theta: torch.Tensor) -> np.ndarray:
        prior = model.token_prior.double()
        tilted = torch.softmax(prior + model.tilt_offsets(theta, torch.arange(4)).double(), -1)
        return ((tilted - torch.softmax(prior, -1)) @ statistic).numpy()

    # Label 0 has no tilt (the control): the average is over A and B.
    np.testing.assert_allclose(shift(model.average_tilt(0, control_row=0)), [0, 0, 0.225, 0], atol=1e-4)
    # Naming B the control leaves A alone.
    np.testing.assert_allclose(shift(model.average_tilt(0, control_row=2)), [0, 0.3, 0.2, 0], atol=1e-4)


def test_a_combination_moves_each_gene_by_its_parts_summed_folds_as_they_were_measured():
    # A and B each raise gene 0 from 0.02 to 0.5: a fold (0.5 + c) / (0.02 + c) = 5 each.
    fold = np.log((0.5 + PSEUDO_COUNT) / (0.02 + PSEUDO_COUNT))
    folds = np.zeros((3, 4))
    folds[1, 0], folds[2, 0], folds[1, 1] = fold, fold, np.log(2.0)
    model = _combining_model(folds)
    single, double, swapped = _prior_means(model, [1, -1], [1, 2], [2, 1])
    assert single[0] == pytest.approx(0.5, rel=1e-3)
    assert single[1] == pytest.approx((3.0 + PSEUDO_COUNT) * 2 - PSEUDO_COUNT, rel=1e-3)
    # Together: (0.02 + c) * 25 - c = 2.9, where adding the two tilts would give ~0.5 * 0.5 / 0.02.
    assert double[0] == pytest.approx((0.02 + PSEUDO_COUNT) * 25 - PSEUDO_COUNT, rel=1e-3)
    np.testing.assert_allclose(double, swapped, rtol=1e-6)
    np.testing.assert_allclose(double[1:], single[1:], rtol=1e-4)  # B leaves genes 1-3 alone
    summed = model.perturbation_tilt[0, 1] + model.perturbation_tilt[0, 2]
    assert not torch.allclose(model.tilt(torch.tensor([[1, 2]]))[0], summed, rtol=0.1)
    # New folds replace the cached combination: B no longer raises gene 0.
    folds[2, 0] = 0.0
    model = _combining_model(folds)
    assert _prior_means(model, [1, 2])[0, 0] == pytest.approx(0.5, rel=1e-3)


def test_the_cell_mlp_encoder_needs_the_tilted_head():
    with pytest.raises(ValueError, match="tilted"):
        ModelConfig(n_genes=10, d_model=16, n_heads=2, encoder="cell_mlp")
    with pytest.raises(ValueError, match="encoder must be"):
        ModelConfig(n_genes=10, d_model=16, n_heads=2, head="tilted", encoder="mlp")


def test_the_cell_mlp_encoder_reads_a_cell_at_one_scale_whatever_fraction_is_visible():
    """Counts are scaled by the inverse visible fraction: with equal read-in weights on the
    counts and none on visibility, a half-shown cell reads as the whole cell, and a cell shown
    below MIN_VISIBLE_FRACTION is scaled by 1 / MIN_VISIBLE_FRACTION only."""
    from lingshu.model.transformer import MIN_VISIBLE_FRACTION

    g = 40
    config = ModelConfig(n_genes=g, d_model=16, n_heads=2, head="tilted", encoder="cell_mlp", encoder_width=8)
    model = MaskPredictor(config)
    with torch.no_grad():
        model.gene_read_in[:, 0] = 0.01
        model.gene_read_in[:, 1] = 0.0
    full = torch.full((1, g), 3)
    half = full.clone()
    half[0, ::2] = MASK_TOKEN
    few = torch.full((1, g), MASK_TOKEN)
    few[0, :2] = 3  # 5% visible
    torch.testing.assert_close(model.encode(half), model.encode(full))
    value = float(np.log1p(token_values()[3]))
    pre_activation = lambda visible: model.read_in_bias + 0.01 * value * visible  # noqa: E731
    expected_few = model.cell_encoder(pre_activation(2 / MIN_VISIBLE_FRACTION))
    torch.testing.assert_close(model.encode(few)[0, 0], expected_few)
    assert not torch.allclose(model.encode(few), model.encode(full))


def _tilted_model(encoder: str, with_context: bool, seed: int = 0) -> MaskPredictor:
    """A 40-gene tilted model whose genes' highest training tokens cover every bucket edge,
    with random read-outs (and, ``with_context``, 3 contexts of their own frequencies)."""
    g = 40
    torch.manual_seed(seed)
    config = ModelConfig(
        n_genes=g,
        d_model=16,
        n_layers=1,
        n_heads=2,
        d_ff=32,
        patch_size=4,
        head="tilted",
        encoder=encoder,
        **(CONTEXT_SLOT if with_context else {}),
    )
    model = MaskPredictor(config)
    _set_tilted_tables(model, with_context)
    with torch.no_grad():
        for parameter in (model.gene_readout, model.shared_readout, model.gene_exponents):
            parameter.normal_(0, 0.3)
    return model


def _set_tilted_tables(model: MaskPredictor, with_context: bool) -> None:
    """Random token (and context) tables; the highest tokens include every bucket edge."""
    g = model.config.n_genes
    frequencies = torch.rand(g, N_EXPRESSION_TOKENS)
    highest = torch.randint(0, N_EXPRESSION_TOKENS, (g,))
    highest[:10] = torch.tensor([0, 1, 2, 3, 4, 15, 16, 63, 64, 280])  # every bucket edge
    frequencies[torch.arange(N_EXPRESSION_TOKENS)[None] > highest[:, None]] = 1e-6
    model.init_token_prior(frequencies, floor=1e-30, highest=highest)
    if with_context:
        # Each context its own frequencies, above the genes' highest counts too.
        model.init_context_prior(torch.rand(3, g, N_EXPRESSION_TOKENS) * 50, frequencies, shrinkage=1.0)
        assert model.context_prior.abs().max() > 1


def _assert_fast_nll_matches_cross_entropy(
    model: MaskPredictor, with_context: bool, pairs_per_cell: int
) -> None:
    b, g = 3, model.config.n_genes
    conditions = torch.tensor([[0], [2], [1]]) if with_context else None
    context = model.context_index(conditions)
    assert (context is not None) == with_context
    tokens = torch.randint(0, MASK_TOKEN + 1, (b, g))
    hidden = model.encode(tokens, conditions)
    cells = torch.arange(b).repeat_interleave(pairs_per_cell)
    genes = torch.randint(0, g, (len(cells),))
    targets = torch.randint(0, N_EXPRESSION_TOKENS, (len(cells),))
    logits = model.logits_at(hidden, cells, genes, context)
    expected = F.cross_entropy(logits, targets, reduction="none")
    fast = model.tilted_nll(hidden, cells, genes, targets, context)
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("encoder", ["transformer", "cell_mlp"])
@pytest.mark.parametrize("pairs_per_cell", [5, 30])
@pytest.mark.parametrize("with_context", [False, True])
def test_the_tilted_heads_fast_nll_equals_the_cross_entropy_of_its_logits(
    encoder, pairs_per_cell, with_context
):
    """tilted_nll sums the tokens above each gene's highest count in closed form and scores the
    rest in buckets; it must equal the cross-entropy of the full 281-way logits, for targets
    inside and above a gene's training range, with few pairs per cell (one read-out per pair)
    and many (every gene's exponents at once), with and without a context (cell type) prior."""
    model = _tilted_model(encoder, with_context)
    _assert_fast_nll_matches_cross_entropy(model, with_context, pairs_per_cell)


@pytest.mark.parametrize("with_context", [False, True])
def test_the_tilted_heads_kept_support_follows_its_tables_when_they_are_set_or_loaded(with_context):
    """tilted_nll keeps each gene's highest token and tail mass between calls: after the tables
    are set again, or another model's are loaded, it must score with the new tables."""
    model = _tilted_model("cell_mlp", with_context)
    _assert_fast_nll_matches_cross_entropy(model, with_context, 30)
    _set_tilted_tables(model, with_context)
    _assert_fast_nll_matches_cross_entropy(model, with_context, 30)
    model.load_state_dict(_tilted_model("cell_mlp", with_context, seed=1).state_dict())
    _assert_fast_nll_matches_cross_entropy(model, with_context, 30)


def _centred(model: MaskPredictor) -> MaskPredictor:
    """The same tables as ``model`` with the tilted head's statistic centred."""
    centred = MaskPredictor(replace(model.config, centred_statistic=True))
    statistic = model.log_count_capped
    highest = (statistic >= statistic[:, -1:]).to(torch.uint8).argmax(-1)
    centred.init_token_prior(torch.exp(model.token_prior), floor=1e-30, highest=highest)
    return centred


def test_the_centred_statistic_has_mean_zero_over_each_genes_nonzero_counts():
    """Under the gene's own table the centred statistic averages 0 over its nonzero tokens;
    it is the raw one shifted (same order, same differences between tokens)."""
    model = _tilted_model("cell_mlp", False)
    raw, statistic = model.log_count_capped.double(), _centred(model).log_count_capped.double()
    p = torch.softmax(model.token_prior[:, 1:].double(), -1)
    mean = (p * statistic[:, 1:]).sum(-1)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(statistic.diff(dim=-1), raw.diff(dim=-1), atol=1e-5, rtol=0)
    assert (statistic[:, 0] < 0).sum() >= model.config.n_genes - 1  # a gene seen at 0 only: 0


def test_the_centred_statistic_spans_the_same_tilts():
    """A tilt (slope a, curvature c, zero z) on the raw statistic s equals the tilt
    (a + 2 c m, c, z) on s - m: both give one distribution."""
    model = _tilted_model("cell_mlp", False)
    centred = _centred(model)
    raw, statistic = model.log_count_capped.double(), centred.log_count_capped.double()
    shift = (raw - statistic)[:, 0]
    assert shift.abs().max() > 0.5
    genes = torch.arange(model.config.n_genes)
    exponents = torch.randn(len(genes), 3, dtype=torch.float64)
    a, c, z = exponents.unbind(-1)
    mapped = torch.stack([a + 2 * c * shift, c, z], -1)
    table = model.token_prior.double()
    expected = torch.log_softmax(model.add_exponents(table, exponents, genes).double(), -1)
    got = torch.log_softmax(centred.add_exponents(table, mapped, genes).double(), -1)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)  # float32 buffers


def test_the_tilted_heads_fast_nll_equals_the_cross_entropy_with_a_centred_statistic():
    """tilted_nll's closed-form tail assumes the statistic is constant above each gene's highest
    count; centring keeps that, so the fast NLL still equals the full cross-entropy."""
    model = _centred(_tilted_model("cell_mlp", False))
    with torch.no_grad():
        for parameter in (model.gene_readout, model.shared_readout, model.gene_exponents):
            parameter.normal_(0, 0.3)
    _assert_fast_nll_matches_cross_entropy(model, False, 30)
