"""Exponential tilts by count, their calibration to a fold change, and the Poisson continuation
a raising tilt reaches into."""

import numpy as np
import pytest
from scipy import stats

from lingshu.data.tokenizer import N_EXPRESSION_TOKENS, decode_tokens
from lingshu.model.tilt import (
    MAX_TILT,
    PSEUDO_COUNT,
    TOKEN_FLOOR,
    calibrate_tilts,
    log_expression,
    match_tilts,
    poisson_tail,
    tilt_offsets,
    tilted_expectations,
    token_values,
)


def _tilted(frequencies: np.ndarray, theta: float, tail: np.ndarray | None) -> np.ndarray:
    """One gene's floored frequencies raised by theta: over every count with the continuation
    ``tail``, else over the counts the frequencies show (the rule without a continuation)."""
    values = token_values()
    table = values if tail is not None else np.where(frequencies > 0, values, 0.0)
    logits = np.log(np.clip(frequencies, TOKEN_FLOOR, None)) + tilt_offsets(theta, table, values, tail)
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def test_the_continuation_is_zero_up_to_the_highest_count_and_decays_past_it():
    frequencies = np.zeros((2, N_EXPRESSION_TOKENS))
    frequencies[0, :3] = [0.96, 0.039, 0.001]
    frequencies[1, :5] = [0.1, 0.2, 0.3, 0.3, 0.1]
    tail = poisson_tail(frequencies)
    assert not tail[0, :3].any() and not tail[1, :5].any()
    assert (np.diff(tail[0, 3:]) < 0).all() and (np.diff(tail[1, 5:]) < 0).all()
    assert not poisson_tail(np.zeros((1, N_EXPRESSION_TOKENS))).any()  # a gene never seen


def test_a_gene_rising_from_almost_nothing_rises_as_a_poisson_bump_not_a_pile_at_its_highest_count():
    frequencies = np.zeros(N_EXPRESSION_TOKENS)
    frequencies[:3] = [0.96, 0.039, 0.001]  # mean 0.041, never above 2 in the controls
    mean = frequencies @ token_values()
    theta = np.log(5.0 / mean)  # a Poisson(0.041) tilted so becomes Poisson(5)
    raised = _tilted(frequencies, theta, poisson_tail(frequencies[None])[0])
    assert raised @ token_values() == pytest.approx(5.0, rel=0.15)
    poisson = stats.poisson(raised @ token_values()).pmf(np.arange(N_EXPRESSION_TOKENS))
    assert 0.5 * np.abs(raised - poisson).sum() < 0.1
    # Without the continuation the same raise piles most cells on count 2 (the knife-edge).
    piled = _tilted(frequencies, theta, None)
    assert piled[2] > 0.5 and raised[2] < 0.2


@pytest.mark.parametrize("fold", [3.0, 0.2, 1.0])
def test_a_tilt_moves_the_mean_count_by_the_wanted_fold(fold):
    base = stats.poisson(4.0).pmf(np.arange(N_EXPRESSION_TOKENS))[None, :]  # tokens 0..99 are exact
    table = np.where(
        base > 1e-9, token_values()[None, :], 0.0
    )  # counts a cell "showed": the Poisson's bulk, not its far tail
    tilts = calibrate_tilts(base, np.log([[fold]]), table)
    tilted = np.clip(base[0], 1e-9, None) * np.exp(tilt_offsets(tilts[0, 0], table[0], token_values()))
    mean = (tilted / tilted.sum()) @ decode_tokens(np.arange(N_EXPRESSION_TOKENS))
    assert mean == pytest.approx(4.0 * fold, rel=1e-3)
    assert (tilts[0, 0] == 0) == (fold == 1.0)


@pytest.mark.parametrize("perturbed_mean", [6.0, 0.02])
def test_a_fold_measured_with_a_pseudo_count_gives_back_the_perturbed_mean(perturbed_mean):
    """A fold (m_p + c) / (m_ctrl + c) applied to its own controls returns m_p, also for a gene
    rising from almost nothing (which a plain fold would leave near zero)."""
    base = np.zeros((1, N_EXPRESSION_TOKENS))
    base[0, :3] = [0.96, 0.039, 0.001]
    values = token_values()
    table = np.broadcast_to(values, base.shape).copy()
    tail = poisson_tail(base)
    control_mean = float(base[0] @ values)
    fold = np.log((perturbed_mean + PSEUDO_COUNT) / (control_mean + PSEUDO_COUNT))
    tilts = calibrate_tilts(base, np.array([[fold]]), table, pseudo_count=PSEUDO_COUNT, tail=tail)
    logits = np.log(np.clip(base[0], 1e-9, None)) + tilt_offsets(tilts[0, 0], table[0], values, tail[0])
    tilted = np.exp(logits - logits.max())
    assert (tilted / tilted.sum()) @ values == pytest.approx(perturbed_mean, rel=1e-3)


def test_a_matched_tilt_reaches_the_wanted_mean_log_expression_and_stops_at_the_bound_when_out_of_reach():
    base = stats.poisson([[2.0], [0.5]]).pmf(np.arange(N_EXPRESSION_TOKENS))
    table = np.where(base > TOKEN_FLOOR, token_values(), 0.0)  # raise the counts the base shows
    statistic = log_expression()
    start = base @ statistic
    target = np.array([[start[0] + 0.5, start[1] - 0.2], [start[0] - 0.3, -1.0]])  # -1: below log1p(0)
    wanted = np.array([[True, True], [True, True]])
    tilts = match_tilts(base, target, wanted, table, statistic)
    reached = tilted_expectations(base, tilts, table, statistic)
    np.testing.assert_allclose(reached[0], target[0], atol=1e-6)
    assert reached[1, 0] == pytest.approx(target[1, 0], abs=1e-6)
    assert tilts[1, 1] == pytest.approx(-MAX_TILT, abs=1e-6) and reached[1, 1] < 1e-6
    # Entries not wanted keep theta = 0.
    assert not match_tilts(base, target, ~wanted, table, statistic).any()
