"""Exponential tilts of a token distribution by count (the perturbation shift prior's form)."""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

from lingshu.data.tokenizer import N_EXPRESSION_TOKENS, bin_widths, decode_tokens

# Probability the token prior gives a count the data never show (see MaskPredictor.init_token_prior).
TOKEN_FLOOR = 1e-9


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
