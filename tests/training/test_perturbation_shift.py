"""The perturbation shift prior: fold changes from the data, tilts that reproduce them."""

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from lingshu.data.conditions import ConditionMap
from lingshu.data.loader import AlignedCounts
from lingshu.data.vocabulary import GeneVocabulary
from lingshu.inference.predict import Request, predict
from lingshu.training.checkpoint import load_checkpoint
from lingshu.training.perturbation_shift import (
    BANDWIDTHS,
    choose_bandwidth,
    log_expression_shifts,
    log_fold_changes,
    pair_moments,
    transfer_weights,
)
from lingshu.training.run import train
from tests.conftest import make_perturbation_adata, train_one_step

SCREEN_KEYS = {"source": "cell_line", "perturbation": "perturbation"}


def _screen_without_ko2_in_ctxb():
    """The two-context screen without ctxB's KO2 cells: (adata, perturbation slot, vocabulary, counts)."""
    adata = make_perturbation_adata(n_per_group=60)
    adata = adata[
        ~((adata.obs["cell_line"] == "ctxB") & (adata.obs["perturbation"] == "KO2")).to_numpy()
    ].copy()
    conditions = ConditionMap.from_obs(
        adata.obs, {"source": "cell_line", "perturbation": "perturbation"}, control_label="control"
    )
    vocabulary = GeneVocabulary.from_adata(adata)
    return adata, conditions.slot("perturbation"), vocabulary, AlignedCounts(adata, vocabulary.align(adata))


def test_fold_changes_are_measured_against_the_same_contexts_controls():
    # ctxB never sees KO2 alone: its KO2 row must fall back to ctxA's fold change.
    adata, slot, vocabulary, data = _screen_without_ko2_in_ctxb()
    folds = log_fold_changes(data, adata.obs, slot, "cell_line", ["ctxA", "ctxB"])
    pooled = log_fold_changes(data, adata.obs, slot, "cell_line")
    # One pass over the cells, given, gives the same folds.
    moments = pair_moments(data, adata.obs, slot.key, "cell_line")
    np.testing.assert_array_equal(
        folds, log_fold_changes(data, adata.obs, slot, "cell_line", ["ctxA", "ctxB"], moments)
    )
    assert folds.shape == (2, 3, len(vocabulary)) and pooled.shape == (1, 3, len(vocabulary))
    ko1, ko2, genes = slot.labels.index("KO1"), slot.labels.index("KO2"), vocabulary.genes
    # KO1 silences KO1, DOWN1_a, DOWN1_b (mean 12 -> 0.05): log(0.15 / 12.1) = -4.4
    for gene in ("KO1", "DOWN1_a", "DOWN1_b"):
        assert (folds[:, ko1, genes.index(gene)] < -3.5).all()
    untouched = [genes.index(g) for g in genes if g.startswith("GENE")]
    assert np.abs(folds[:, ko1, untouched]).mean() < 0.3
    # Each context's own fold changes differ by sampling noise; the fallback is ctxA's with its
    # clear effects kept and its noise shrunk away.
    assert not np.allclose(folds[0, ko1], folds[1, ko1])
    clear = np.abs(folds[0, ko2]) > 3
    assert clear.sum() >= 3
    np.testing.assert_allclose(folds[1, ko2, clear], folds[0, ko2, clear], rtol=0.02)
    assert np.abs(folds[1, ko2, untouched]).mean() < 0.5 * np.abs(folds[0, ko2, untouched]).mean()
    assert not folds[:, slot.labels.index("control")].any()


def test_log_expression_shifts_are_measured_where_seen_and_taken_from_the_tilt_where_not(tmp_path):
    adata, slot, vocabulary, data = _screen_without_ko2_in_ctxb()
    moments = pair_moments(data, adata.obs, slot.key, "cell_line")
    shifts = log_expression_shifts(moments, slot, ["ctxA", "ctxB"], data.observed)
    counts = np.log1p(adata[:, vocabulary.genes].X.toarray())
    context, label = adata.obs["cell_line"].to_numpy(), adata.obs["perturbation"].to_numpy()
    ko1, ko2 = slot.labels.index("KO1"), slot.labels.index("KO2")
    for row, name in ((0, "ctxA"), (1, "ctxB")):
        expected = counts[(context == name) & (label == "KO1")].mean(0)
        expected = expected - counts[(context == name) & (label == "control")].mean(0)
        np.testing.assert_allclose(shifts[row, ko1], expected, atol=1e-9)
    assert np.isnan(shifts[1, ko2]).all() and not np.isnan(shifts[0, ko2]).any()
    # Trained, the model keeps the measured shifts and fills ctxB's KO2 from its transferred tilt.
    train_one_step(
        adata, tmp_path / "ckpt", {"source": "cell_line", "perturbation": "perturbation"}, "control"
    )
    kept = load_checkpoint(tmp_path / "ckpt").model_state["perturbation_log_shift"].double().numpy()
    rows = [slot.labels.index(name) for name in ("KO1", "KO2")]
    np.testing.assert_allclose(kept[0, rows], shifts[0, rows], atol=1e-5)
    np.testing.assert_allclose(kept[1, ko1], shifts[1, ko1], atol=1e-5)
    silenced = [vocabulary.genes.index(g) for g in ("KO2", "DOWN2_a", "DOWN2_b")]
    assert (kept[1, ko2, silenced] < -1.0).all()  # log1p of ~12 counts down to almost none
    untouched = [i for i, g in enumerate(vocabulary.genes) if g.startswith("GENE")]
    assert np.abs(kept[1, ko2, untouched]).mean() < 0.2


def test_an_untrained_model_predicts_an_unseen_double_from_its_singles(tmp_path):
    """One training step teaches the network nothing; the shift prior alone must silence both
    singles' genes in a double the model never saw."""
    adata = make_perturbation_adata(n_per_group=40)
    adata = adata[(adata.obs["perturbation"] != "KO1+KO2").to_numpy()].copy()
    train_one_step(
        adata, tmp_path / "ckpt", {"source": "cell_line", "perturbation": "perturbation"}, "control"
    )
    cells = predict(
        tmp_path / "ckpt",
        [Request("ctxA", "KO1+KO2", 60), Request("ctxA", "control", 60)],
        seed=0,
        guidance=0.0,
        use_prior=False,
        progress=False,
    )
    counts = cells.X.toarray()
    double = (cells.obs["perturbation"] == "KO1+KO2").to_numpy()
    for gene in ("DOWN1_a", "DOWN1_b", "DOWN2_a", "DOWN2_b"):
        column = list(cells.var_names).index(gene)
        assert counts[double, column].mean() < 1.0 < 6.0 < counts[~double, column].mean(), gene


def test_a_perturbation_models_token_prior_stays_the_control_baseline(tmp_path):
    """Trained, the token prior would drift towards the perturbed cells' average and the shift
    prior would then count that shift twice; it is frozen, while the network trains."""
    adata = make_perturbation_adata()
    states = []
    for steps in (1, 3):
        train(
            adata,
            tmp_path / f"ckpt{steps}",
            preset="tiny",
            train_overrides={"max_steps": steps, "batch_size": 8},
            progress=False,
            condition_keys={"source": "cell_line", "perturbation": "perturbation"},
            control_label="control",
        )
        states.append(load_checkpoint(tmp_path / f"ckpt{steps}").model_state)
    assert torch.equal(states[0]["token_prior"], states[1]["token_prior"])
    assert not torch.equal(states[0]["head.weight"], states[1]["head.weight"])


def _two_lineages_adata(n_cells: int = 40, seed: int = 0) -> ad.AnnData:
    """Five contexts of two lineages: L1-L3 share a baseline and respond to 'stim' by raising
    genes 0-9, M1-M2 share another baseline and raise genes 10-19; L3 has no stimulated cells."""
    rng = np.random.default_rng(seed)
    n_genes = 60
    lineage_base = {"L": rng.gamma(2.0, 2.0, n_genes), "M": rng.gamma(2.0, 2.0, n_genes)}
    rows, labels = [], []
    for context in ("L1", "L2", "L3", "M1", "M2"):
        base = lineage_base[context[0]]
        for label in ("control", "stim") if context != "L3" else ("control",):
            mean = base.copy()
            if label == "stim":
                mean[: 10 if context[0] == "L" else 20][-10:] *= 8.0
            rows.append(rng.poisson(np.tile(mean, (n_cells, 1))))
            labels += [(context, label)] * n_cells
    obs = pd.DataFrame(labels, columns=["cell_type", "condition"])
    obs.index = [f"c{i}" for i in range(len(obs))]
    var = pd.DataFrame(index=[f"G{j}" for j in range(n_genes)])
    return ad.AnnData(X=sp.csr_matrix(np.vstack(rows).astype(np.int32)), obs=obs, var=var)


def test_an_unseen_pair_takes_the_fold_changes_of_contexts_whose_controls_resemble_its_own():
    adata = _two_lineages_adata()
    conditions = ConditionMap.from_obs(
        adata.obs, {"source": "cell_type", "perturbation": "condition"}, control_label="control"
    )
    slot, contexts = conditions.slot("perturbation"), conditions.slot("source").labels
    vocabulary = GeneVocabulary.from_adata(adata)
    data = AlignedCounts(adata, vocabulary.align(adata))
    folds = log_fold_changes(data, adata.obs, slot, "cell_type", contexts)
    pooled = log_fold_changes(data, adata.obs, slot, "cell_type")[0, slot.labels.index("stim")]
    l3 = folds[contexts.index("L3"), slot.labels.index("stim")]
    # L3's lineage raises genes 0-9 eight-fold and leaves 10-19; plain pooling halves both.
    assert l3[:10].mean() > 1.6 and abs(l3[10:20].mean()) < 0.4
    assert 0.6 < pooled[:10].mean() < 1.4 and 0.6 < pooled[10:20].mean() < 1.4
    # Seen pairs keep their own fold changes.
    m1 = folds[contexts.index("M1"), slot.labels.index("stim")]
    assert m1[10:20].mean() > 1.6 and abs(m1[:10].mean()) < 0.4
    # What travels is shrunk by its noise: the untouched genes' sampling noise in L1 and L2
    # (their own folds, as measured) mostly does not reach L3.
    own_noise = (
        folds[contexts.index("L1"), slot.labels.index("stim")]
        + folds[contexts.index("L2"), slot.labels.index("stim")]
    ) / 2
    assert np.abs(own_noise[20:]).mean() > 0.05
    assert np.abs(l3[20:]).mean() < 0.5 * np.abs(own_noise[20:]).mean()


def test_leaving_one_context_out_picks_a_narrow_bandwidth_only_where_similarity_helps():
    rng = np.random.default_rng(0)
    shared = rng.normal(size=50)
    similarity = np.array(
        [[1.0, 0.99, 0.5, 0.5], [0.99, 1.0, 0.5, 0.5], [0.5, 0.5, 1.0, 0.6], [0.5, 0.5, 0.6, 1.0]]
    )
    sizes = np.array([[10.0, 10.0, 200.0, 200.0]])
    # One response everywhere, measured with noise shrinking with the context's cells: the
    # similar pair (0, 1) are the noisy small ones, so weighting by similarity only adds noise.
    own = {0: {i: shared + rng.normal(size=50) / np.sqrt(sizes[0, i]) for i in range(4)}}
    observed = np.ones(50, dtype=bool)
    assert choose_bandwidth(own, sizes, similarity, observed) >= 0.2  # near-plain pooling
    assert choose_bandwidth({0: {0: own[0][0], 1: own[0][1]}}, sizes, similarity, observed) == np.inf
    # Responses that follow the similarity: the smallest bandwidth wins.
    lineage = {i: (shared if i < 2 else -shared) + 0.01 * rng.normal(size=50) for i in range(4)}
    assert choose_bandwidth({0: lineage}, sizes, similarity, observed) == min(BANDWIDTHS)
    unknown_similarity = transfer_weights(np.array([1.0, 3.0]), np.array([np.nan, 0.5]), 0.1)
    np.testing.assert_allclose(unknown_similarity, [0.25, 0.75])  # plain cell weights
