"""The 281-token count quantiser of Lingshu-Cell and the ids of the special tokens.

Expression tokens (ids 0..280):
- counts 0..99 map to themselves (exact);
- counts 100..999 map to 100 + (count - 100) // 10 (90 bins of width 10);
- counts 1,000..9,999 map to 190 + (count - 1000) // 100 (90 bins of width 100);
- counts >= 10,000 map to the overflow token 280.

Decoding is exact below 100. Above, a token decodes to the *midpoint* of its bin, rounded down to an
integer (lower edge + width // 2, e.g. token 100 -> 105, token 190 -> 1,050); the overflow token
decodes to 10,000, its lower edge.

After the expression tokens come ``[MASK]`` (id 281) and then one token per condition value
(ids 282, 283, ...), all sharing a single embedding table in the model.
"""

from __future__ import annotations

import numpy as np

N_EXACT = 100
N_EXPRESSION_TOKENS = 281
OVERFLOW_TOKEN = 280
MAX_BINNED_COUNT = 9_999
MASK_TOKEN = 281
FIRST_CONDITION_TOKEN = 282

# Lower edge and width of every expression token's bin; derived once from the rule above.
_BIN_LOWER = np.concatenate(
    [np.arange(0, 100), np.arange(100, 1000, 10), np.arange(1000, 10000, 100), [10_000]]
).astype(np.int64)
_BIN_WIDTH = np.concatenate([np.ones(100), np.full(90, 10), np.full(90, 100), [1]]).astype(np.int64)
_DECODED = _BIN_LOWER + _BIN_WIDTH // 2


def encode_counts(counts: np.ndarray) -> np.ndarray:
    """Quantise non-negative integer counts into expression token ids (0..280), vectorised.

    Raises ``ValueError`` on negative values; fractional values are truncated towards zero by
    the integer cast, so callers validate integrality first (see ``lingshu.data.validation``).
    """
    x = np.asarray(counts)
    if x.size and x.min() < 0:
        raise ValueError(f"counts must be non-negative; found minimum {x.min()}")
    x = x.astype(np.int64, copy=False)
    tokens = np.where(
        x < 100,
        x,
        np.where(x < 1000, 100 + (x - 100) // 10, 190 + (x - 1000) // 100),
    )
    return np.where(x > MAX_BINNED_COUNT, OVERFLOW_TOKEN, tokens).astype(np.int64)


def decode_tokens(tokens: np.ndarray) -> np.ndarray:
    """Map expression token ids back to integer counts (exact below 100, bin midpoint above)."""
    t = np.asarray(tokens)
    if t.size and (t.min() < 0 or t.max() >= N_EXPRESSION_TOKENS):
        raise ValueError(
            f"expression token ids must lie in 0..{N_EXPRESSION_TOKENS - 1}; found {t.min()}..{t.max()}"
        )
    return _DECODED[t.astype(np.int64, copy=False)]


def bin_lower_edges() -> np.ndarray:
    """Lower edge (smallest count) of each expression token's bin, as a copy."""
    return _BIN_LOWER.copy()


def bin_widths() -> np.ndarray:
    """Width (number of integer counts) of each expression token's bin, as a copy."""
    return _BIN_WIDTH.copy()
