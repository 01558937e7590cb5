import numpy as np
import pytest

from lingshu.data.tokenizer import (
    MASK_TOKEN,
    N_EXPRESSION_TOKENS,
    OVERFLOW_TOKEN,
    bin_lower_edges,
    decode_tokens,
    encode_counts,
)


def _reference_token(x: int) -> int:
    """The quantiser written from the paper's formula, one count at a time."""
    if x < 100:
        return x
    if x > 9_999:
        return 280
    k = int(np.floor(np.log10(max(x, 1))))
    r = (x - 10**k) // 10 ** (k - 1)
    return 100 + 90 * max(0, k - 2) + r


def test_encode_matches_paper_formula_for_every_count_up_to_20000():
    counts = np.arange(0, 20_001)
    expected = np.array([_reference_token(int(x)) for x in counts])
    np.testing.assert_array_equal(encode_counts(counts), expected)


def test_vocabulary_has_281_expression_tokens_and_mask_after_them():
    assert encode_counts(np.arange(0, 20_001)).max() == N_EXPRESSION_TOKENS - 1
    assert len(np.unique(encode_counts(np.arange(0, 20_001)))) == N_EXPRESSION_TOKENS
    assert MASK_TOKEN == N_EXPRESSION_TOKENS


@pytest.mark.parametrize(
    ("count", "token"),
    [
        (0, 0),
        (99, 99),
        (100, 100),
        (109, 100),
        (110, 101),
        (999, 189),
        (1000, 190),
        (1099, 190),
        (1100, 191),
        (9999, 279),
        (10_000, OVERFLOW_TOKEN),
        (10**7, OVERFLOW_TOKEN),
    ],
)
def test_bin_edges(count, token):
    assert encode_counts(np.array([count]))[0] == token


def test_round_trip_is_exact_below_100_and_stays_in_bin_above():
    counts = np.arange(0, 20_001)
    decoded = decode_tokens(encode_counts(counts))
    np.testing.assert_array_equal(decoded[:100], counts[:100])
    # Every decoded count re-encodes to the same token (decode lands inside the bin).
    np.testing.assert_array_equal(encode_counts(decoded), encode_counts(counts))
    assert decode_tokens(np.array([100]))[0] == 105
    assert decode_tokens(np.array([190]))[0] == 1050
    assert decode_tokens(np.array([OVERFLOW_TOKEN]))[0] == 10_000


def test_lower_edges_are_the_smallest_count_of_each_bin():
    edges = bin_lower_edges()
    np.testing.assert_array_equal(encode_counts(edges), np.arange(N_EXPRESSION_TOKENS))
    np.testing.assert_array_equal(encode_counts(edges[1:] - 1), np.arange(N_EXPRESSION_TOKENS - 1))


def test_negative_counts_and_bad_tokens_are_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        encode_counts(np.array([3, -1]))
    with pytest.raises(ValueError, match="0..280"):
        decode_tokens(np.array([MASK_TOKEN]))
