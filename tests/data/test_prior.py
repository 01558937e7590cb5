import numpy as np

from lingshu.data.conditions import ConditionMap
from lingshu.data.prior import BiologicalPrior, find_prior, strongly_down_genes, target_is_raised


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
    prior = find_prior(perturbation_adata, cmap.slot("perturbation"), "cell_line")
    assert set(prior.down) == {"KO1", "KO2"}  # combinations are not attributed to one target
    assert sorted(prior.down["KO1"]["ctxA"]) == ["DOWN1_a", "DOWN1_b", "KO1"]
    assert sorted(prior.down["KO2"]["ctxB"]) == ["DOWN2_a", "DOWN2_b", "KO2"]
    assert prior.raised == {}  # knock-outs lower their targets
    assert BiologicalPrior.from_dict(prior.to_dict()) == prior
    # Asked for ctxA: only other contexts' evidence counts, and the target itself is in.
    only_a = BiologicalPrior({"KO1": {"ctxA": ["DOWN1_a"], "ctxB": ["DOWN1_b"]}})
    assert only_a.genes_for(["KO1"], "ctxA") == ["DOWN1_b", "KO1"]
    assert only_a.genes_for(["KO1", "KO2"], "new") == ["DOWN1_a", "DOWN1_b", "KO1", "KO2"]


def test_an_activated_target_is_not_prefilled_but_its_down_genes_are():
    rng = np.random.default_rng(1)
    control = rng.poisson([0.5, 8.0], size=(100, 2)).astype(float)
    activated = rng.poisson([9.0, 0.1], size=(100, 2)).astype(float)
    assert target_is_raised(activated, control, 0) and not target_is_raised(control, activated, 0)
    prior = BiologicalPrior({"KLF1": {"k562": ["HBG1"]}}, {"KLF1": ["k562"]})
    assert prior.genes_for(["KLF1"], "A172") == ["HBG1"]
    # Raised only in the asked context (not "another" one): the paper's rule applies.
    assert prior.genes_for(["KLF1"], "k562") == ["KLF1"]
