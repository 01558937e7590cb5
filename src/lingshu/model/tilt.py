"""Exponential tilts of a token distribution by count (the perturbation shift prior's form)."""

from __future__ import annotations

import numpy as np

from lingshu.data.tokenizer import N_EXPRESSION_TOKENS, decode_tokens


def token_values() -> np.ndarray:
    """Each expression token's decoded count (281,): what a lowering tilt multiplies."""
    return decode_tokens(np.arange(N_EXPRESSION_TOKENS)).astype(np.float64)


def tilt_offsets(tilts, table, values):
    """Logit offsets of tilts: ``theta * values`` where theta < 0, ``theta * table`` where > 0.

    Works on numpy arrays and torch tensors alike; ``tilts`` (..., 1) broadcast over tokens.
    """
    return tilts * (values + (table - values) * (tilts > 0))
