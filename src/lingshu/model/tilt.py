"""Exponential tilts of a token distribution by count (the perturbation shift prior's form)."""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

from lingshu.data.tokenizer import N_EXPRESSION_TOKENS, bin_widths, decode_tokens

# Probability the token prior gives a count the data never show (see MaskPredictor.init_token_prior).
TOKEN_FLOOR = 1e-9
# Counts added to both means of a fold change (m_p + c) / (m_ctrl + c): keeps genes near zero
# from getting huge folds; a tilt applies the fold in the same terms (see calibrate_tilts).
PSEUDO_COUNT = 0.1
MAX_TILT = 30.0


def token_values() -> np.ndarray:
    """Each expression token's decoded count (281,): what a lowering tilt multiplies."""
    return decode_tokens(np.arange(N_EXPRESSION_TOKENS)).astype(np.float64)


def tilt_offsets(tilts, table, values, tail=None):
    """Logit offsets of tilts: ``theta * values`` where theta < 0, ``theta * table`` where > 0,
    plus ``tail`` (same shape as ``table``; see :func:`poisson_tail`) where theta > 0.

    Works on numpy arrays and torch tensors alike; ``tilts`` (..., 1) broadcast over tokens.
    """
    raising = tilts > 0
    offsets = tilts * (values + (table - values) * raising)
    return offsets if tail is None else offsets + tail * raising


def poisson_tail(frequencies: np.ndarray) -> np.ndarray:
    """Log offsets (G, 281) that continue each gene's token distribution past its highest count.

    Above a gene's highest token with mass, the token prior holds only its floor, so a tilt
    raising the gene far would pile every cell on that highest count (a knife-edge). This
    continuation gives those tokens the mass of a Poisson with the gene's mean count, joined
    to the distribution at its highest token (bin widths included above count 100): tilted by
    theta, a Poisson stays a Poisson with its mean times e^theta, so a gene rising from almost
    nothing rises as a smooth bump. Returned as log(continuation / floor), 0 at and below the
    highest token and for genes with no mass; a raising tilt adds it (:func:`tilt_offsets`).
    """
    frequencies = np.asarray(frequencies, dtype=np.float64)
    values = token_values()
    probabilities = frequencies / np.maximum(frequencies.sum(-1, keepdims=True), 1e-300)
    means = probabilities @ values
    highest = frequencies.shape[-1] - 1 - np.argmax(frequencies[:, ::-1] > 0, axis=-1)
    rate = np.maximum(means, 1e-12)[:, None]
    # log Poisson mass of each token's bin, up to a per-gene constant
    log_mass = values * np.log(rate) - gammaln(values + 1) + np.log(bin_widths())
    rows = np.arange(len(frequencies))
    anchor = np.log(np.clip(probabilities[rows, highest], TOKEN_FLOOR, None)) - log_mass[rows, highest]
    tail = log_mass + anchor[:, None] - np.log(TOKEN_FLOOR)
    above = np.arange(frequencies.shape[-1])[None, :] > highest[:, None]
    return np.where(above & (means[:, None] > 0), tail, 0.0)


def calibrate_tilts(
    base: np.ndarray,
    log_folds: np.ndarray,
    table: np.ndarray,
    iterations: int = 32,
    pseudo_count: float = 0.0,
    tail: np.ndarray | None = None,
) -> np.ndarray:
    """Tilts theta (P, G) so that base(k) * exp(theta * table[g, k]) has its mean fold-changed.

    The fold applies as it was measured: with ``pseudo_count`` c the wanted mean is
    (mean + c) * fold - c (floored at 1% of the base mean), so a fold measured as
    (m_p + c) / (m_ctrl + c) gives back m_p in its own context, and a gene rising from almost
    nothing rises by the measured amount rather than by a multiple of almost nothing.

    ``base`` (G, 281) are the control token probabilities (as the model's token prior floors
    them), ``log_folds`` (P, G) the wanted log fold changes of the mean, ``table`` what a raise
    multiplies (G, 281; the model's ``tilt_table``) and ``tail`` what it adds past the highest
    count (:func:`poisson_tail`). Genes with no control counts, or no change, keep theta = 0;
    the search is :func:`match_tilts` on the count.
    """
    values = token_values()
    base_mean = base @ values
    target = (base_mean[None, :] + pseudo_count) * np.exp(log_folds) - pseudo_count
    target = np.maximum(target, 0.01 * base_mean[None, :])
    wanted = (np.abs(log_folds) > 1e-3) & (base_mean[None, :] > 0)
    return match_tilts(base, target, wanted, table, values, iterations, tail)


def log_expression() -> np.ndarray:
    """Each expression token's log1p of its decoded count (281,): the statistic a combination's
    tilt matches (:meth:`lingshu.model.transformer.MaskPredictor.combination_tilt`)."""
    return np.log1p(token_values())


def tilted_probabilities(
    base: np.ndarray, tilts: np.ndarray, table: np.ndarray, tail: np.ndarray | None = None
) -> np.ndarray:
    """Token distributions (G, 281) of ``base`` (G, 281) tilted by ``tilts`` (G,), as the
    model's logits form them (the base floored at TOKEN_FLOOR)."""
    log_base = np.log(np.clip(base, TOKEN_FLOOR, None))
    logits = log_base + tilt_offsets(tilts[:, None], table, token_values(), tail)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


def tilted_expectations(
    base: np.ndarray,
    tilts: np.ndarray,
    table: np.ndarray,
    statistic: np.ndarray,
    tail: np.ndarray | None = None,
) -> np.ndarray:
    """Expected ``statistic`` (281,) of each gene under ``base`` (G, 281) tilted by each row of
    ``tilts`` (P, G): (P, G)."""
    return np.stack([tilted_probabilities(base, row, table, tail) @ statistic for row in tilts])


def match_tilts(
    base: np.ndarray,
    target: np.ndarray,
    wanted: np.ndarray,
    table: np.ndarray,
    statistic: np.ndarray,
    iterations: int = 32,
    tail: np.ndarray | None = None,
) -> np.ndarray:
    """Tilts theta (P, G) under which each gene's expected ``statistic`` (281,; increasing in
    the count) reaches ``target`` (P, G), for the entries ``wanted`` (P, G, bool); the others
    keep theta = 0. ``base``, ``table`` and ``tail`` as in :func:`calibrate_tilts`.

    The tilted expectation rises monotonically with theta, so bisection on
    [-MAX_TILT, MAX_TILT] finds it (32 halvings: theta to ~1e-8); a target out of reach ends
    at the bound. Tokens above a gene's highest non-negligible one are left out of its sums
    (floored at TOKEN_FLOOR and never raised, they barely move it), which makes sparse genes
    cheap.
    """
    values = token_values()
    log_base = np.log(np.clip(base, TOKEN_FLOOR, None))
    # Tokens up to the highest one above the floor: most genes use a few dozen of the 281.
    widths = base.shape[-1] - np.argmax(((base > TOKEN_FLOOR) | (table > 0))[:, ::-1], axis=1)
    tilts = np.zeros(np.shape(target))
    todo = np.argwhere(wanted)
    todo = todo[np.argsort(widths[todo[:, 1]], kind="stable")]
    for chunk in np.array_split(todo, max(1, len(todo) // 4096)):
        if not len(chunk):
            continue
        p, g = chunk[:, 0], chunk[:, 1]
        width = int(widths[g].max())
        goal = target[p, g]
        low, high = np.full(len(g), -MAX_TILT), np.full(len(g), MAX_TILT)
        for _ in range(iterations):
            middle = (low + high) / 2
            raised = None if tail is None else tail[g, :width]
            offsets = tilt_offsets(middle[:, None], table[g, :width], values[:width], raised)
            logits = log_base[g, :width] + offsets
            weights = np.exp(logits - logits.max(1, keepdims=True))
            reached = (weights @ statistic[:width]) / weights.sum(1)
            below = reached < goal
            low, high = np.where(below, middle, low), np.where(below, high, middle)
        tilts[p, g] = (low + high) / 2
    return tilts
