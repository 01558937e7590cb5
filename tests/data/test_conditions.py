import numpy as np
import pandas as pd
import pytest

from lingshu.data.conditions import ConditionMap


@pytest.fixture
def obs():
    return pd.DataFrame({"cell_type": ["B", "NK", "B", "CD14+ Mono"], "donor": ["d1", "d1", "d2", "d2"]})


def test_labels_become_disjoint_token_ranges_per_slot(obs):
    cmap = ConditionMap.from_obs(obs, {"source": "cell_type", "donor": "donor"})
    assert cmap.n_slots == 2 and cmap.n_tokens == 5 and cmap.offsets == [0, 3]
    tokens = cmap.encode_obs(obs)
    np.testing.assert_array_equal(tokens, [[0, 3], [2, 3], [0, 4], [1, 4]])
    np.testing.assert_array_equal(cmap.encode_labels(["NK", "d2"]), [2, 4])
    assert ConditionMap.from_dict(cmap.to_dict()) == cmap
    assert sum(cmap.combination_counts) == 4


def test_unknown_label_names_the_nearest_known_ones(obs):
    cmap = ConditionMap.from_obs(obs, {"source": "cell_type"})
    with pytest.raises(ValueError, match="nearest known: CD14\\+ Mono"):
        cmap.encode_labels(["CD14 Mono"])
    with pytest.raises(ValueError, match="unknown condition 'tissue'"):
        cmap.resolve({"tissue": "blood"})


def test_missing_column_and_missing_labels_are_rejected(obs):
    with pytest.raises(ValueError, match="no column 'celltype'"):
        ConditionMap.from_obs(obs, {"source": "celltype"})
    obs.loc[1, "cell_type"] = None
    with pytest.raises(ValueError, match="1 cells without a label"):
        ConditionMap.from_obs(obs, {"source": "cell_type"})


def test_no_keys_means_an_unconditional_map(obs):
    cmap = ConditionMap.from_obs(obs, {})
    assert cmap.n_slots == 0 and cmap.encode_obs(obs).shape == (4, 0)
