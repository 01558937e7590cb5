import numpy as np
import pandas as pd
import pytest

from lingshu.data.conditions import PADDING, ConditionMap, cap_controls


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


@pytest.fixture
def perturbed_obs():
    return pd.DataFrame(
        {
            "line": ["K562", "K562", "K562", "A172", "A172", "K562"],
            "gene": ["ctrl", "TP53", "MYC+TP53", "ctrl", "MYC", "MYC"],
        }
    )


def test_combinations_take_one_sorted_token_per_gene_padded_to_the_widest(perturbed_obs):
    cmap = ConditionMap.from_obs(
        perturbed_obs, {"source": "line", "perturbation": "gene"}, control_label="ctrl"
    )
    slot = cmap.slot("perturbation")
    assert slot.width == 2 and slot.labels == ["MYC", "TP53", "ctrl"]
    assert cmap.n_positions == 3 and cmap.n_slots == 2
    tokens = cmap.encode_obs(perturbed_obs)
    offset = cmap.offsets[1]
    myc, tp53, ctrl, pad = offset, offset + 1, offset + 2, PADDING
    np.testing.assert_array_equal(
        tokens[:, 1:], [[ctrl, pad], [tp53, pad], [myc, tp53], [ctrl, pad], [myc, pad], [myc, pad]]
    )
    # Order of the parts does not matter, and a combination never seen as such can be asked for.
    np.testing.assert_array_equal(
        cmap.encode_labels(["A172", "TP53+MYC"]), cmap.encode_labels(["A172", "MYC+TP53"])
    )
    assert cmap.with_control(["A172", "MYC"]) == ["A172", "ctrl"]
    assert ConditionMap.from_dict(cmap.to_dict()) == cmap
    # Trained on single perturbations only, a model can still be asked for a double.
    singles = ConditionMap.from_obs(
        perturbed_obs.iloc[[0, 1, 4]], {"perturbation": "gene"}, control_label="ctrl"
    )
    assert singles.widths == (2,) and len(singles.encode_labels(["MYC+TP53"])) == 2


def test_unseen_genes_and_too_many_parts_are_rejected(perturbed_obs):
    cmap = ConditionMap.from_obs(
        perturbed_obs, {"source": "line", "perturbation": "gene"}, control_label="ctrl"
    )
    with pytest.raises(ValueError, match="'TP35' .*never seen in training.*nearest known: TP53"):
        cmap.encode_labels(["K562", "TP35"])
    with pytest.raises(ValueError, match="combines 3 parts"):
        cmap.encode_labels(["K562", "MYC+TP53+KRAS"])
    with pytest.raises(ValueError, match="control label 'control' does not occur"):
        ConditionMap.from_obs(perturbed_obs, {"perturbation": "gene"}, control_label="control")
    with pytest.raises(ValueError, match="needs its control label"):
        ConditionMap.from_obs(perturbed_obs, {"perturbation": "gene"})


def test_controls_are_capped_with_every_context_keeping_some():
    obs = pd.DataFrame(
        {
            "line": ["a"] * 300 + ["b"] * 100 + ["a"] * 90 + ["b"] * 10,
            "gene": ["ctrl"] * 400 + ["X"] * 100,
        }
    )
    kept = cap_controls(obs, "gene", "ctrl", 0.1, seed=0, context_key="line")
    chosen = obs.iloc[kept]
    controls = chosen[chosen.gene == "ctrl"]
    assert (chosen.gene == "X").sum() == 100  # every perturbed cell stays
    assert len(controls) / len(chosen) <= 0.1 + 1 / len(chosen)
    assert set(controls.line) == {"a", "b"}
    np.testing.assert_array_equal(kept, cap_controls(obs, "gene", "ctrl", 0.1, seed=0, context_key="line"))
    assert len(cap_controls(obs, "gene", "ctrl", 1.0, seed=0)) == len(obs)
    with pytest.raises(ValueError, match="control fraction"):
        cap_controls(obs, "gene", "ctrl", 0.0, seed=0)
