import numpy as np

from lingshu.data.conditions import ConditionMap
from lingshu.data.prior import down_regulated_by_target, prior_genes, strongly_down_genes


def test_only_strong_downregulation_of_well_expressed_genes_is_selected():
    rng = np.random.default_rng(0)
    genes = np.array(["silenced", "halved", "low", "up", "flat"])
    control = rng.poisson([10.0, 10.0, 1.5, 3.0, 5.0], size=(200, 5)).astype(float)
    perturbed = rng.poisson([0.1, 5.0, 0.0, 12.0, 5.0], size=(200, 5)).astype(float)
    # halved: perturbed mean 5 > 1; low: control mean 1.5 < 2; up and flat: not down.
    assert strongly_down_genes(perturbed, control, genes) == ["silenced"]
    # Too few cells for any test to be significant: nothing is claimed.
    assert strongly_down_genes(perturbed[:3], control[:3], genes) == []


def test_down_genes_are_found_per_context_and_the_prior_skips_the_asked_context(perturbation_adata):
    cmap = ConditionMap.from_obs(
        perturbation_adata.obs,
        {"source": "cell_line", "perturbation": "perturbation"},
        control_label="control",
    )
    down = down_regulated_by_target(perturbation_adata, cmap.slot("perturbation"), "cell_line")
    assert set(down) == {"KO1", "KO2"}  # combinations are not attributed to one target
    assert sorted(down["KO1"]["ctxA"]) == ["DOWN1_a", "DOWN1_b", "KO1"]
    assert sorted(down["KO2"]["ctxB"]) == ["DOWN2_a", "DOWN2_b", "KO2"]
    # Asked for ctxA: only other contexts' evidence counts, and the target itself is always in.
    only_a = {"KO1": {"ctxA": ["DOWN1_a"], "ctxB": ["DOWN1_b"]}}
    assert prior_genes(only_a, ["KO1"], "ctxA") == ["DOWN1_b", "KO1"]
    assert prior_genes(only_a, ["KO1", "KO2"], "new") == ["DOWN1_a", "DOWN1_b", "KO1", "KO2"]
