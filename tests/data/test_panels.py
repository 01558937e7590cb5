"""Files of different gene panels stacked into one: each cell observes its own panel's genes."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lingshu.data.loader import AlignedCounts
from lingshu.data.panels import MEASURED_PREFIX, PANEL_KEY, stack_panels
from lingshu.data.vocabulary import GeneVocabulary
from lingshu.training.run import token_frequencies, train
from tests.conftest import make_counts_adata


def _panels():
    """Panel a: GENE0..GENE29; panel b: GENE10..GENE39 (another order)."""
    a = make_counts_adata(n_cells=48, n_genes=30, seed=3)
    b = make_counts_adata(n_cells=40, n_genes=30, seed=4)
    b.var_names = [f"GENE{j}" for j in range(39, 9, -1)]
    return a, b


def test_stacking_keeps_every_count_and_records_panels():
    a, b = _panels()
    stacked = stack_panels({"a": a, "b": b})
    assert stacked.shape == (88, 40) and list(stacked.obs[PANEL_KEY].cat.categories) == ["a", "b"]
    assert stacked.obs_names[0] == "a:cell0" and stacked.obs_names[48] == "b:cell0"
    np.testing.assert_array_equal(stacked[:48, list(a.var_names)].X.toarray(), a.X.toarray())
    np.testing.assert_array_equal(stacked[48:, list(b.var_names)].X.toarray(), b.X.toarray())
    assert (
        stacked.var[MEASURED_PREFIX + "a"].sum() == 30
        and not stacked.var.loc["GENE35", MEASURED_PREFIX + "a"]
    )
    with pytest.raises(ValueError, match="no files"):
        stack_panels({})


def test_each_cell_observes_its_own_panels_genes():
    a, b = _panels()
    stacked = stack_panels({"a": a, "b": b})
    vocabulary = GeneVocabulary([f"GENE{j}" for j in range(40)] + ["ELSEWHERE"])
    data = AlignedCounts(stacked, vocabulary.align(stacked), cells=np.array([0, 50, 60]))
    observed = data.observed_of(np.array([0, 1, 2]))
    assert observed.shape == (3, 41)
    assert observed[0, :30].all() and not observed[0, 30:].any()
    assert not observed[1, :10].any() and observed[1, 10:40].all() and not observed[1, 40]
    # A plain file: every cell observes the same genes.
    plain = AlignedCounts(a, vocabulary.align(a))
    assert plain.observed_of(np.array([0, 1])).shape == (41,)


def test_a_gene_one_panel_did_not_measure_is_not_counted_as_zero():
    a, b = _panels()
    stacked = stack_panels({"a": a, "b": b})
    vocabulary = GeneVocabulary.from_adata(stacked)
    on_b_alone = token_frequencies(AlignedCounts(b, vocabulary.align(b)))
    stacked_tables = token_frequencies(AlignedCounts(stacked, vocabulary.align(stacked)))
    only_b = [vocabulary.genes.index(g) for g in ("GENE30", "GENE35") if g in vocabulary.genes]
    assert only_b
    np.testing.assert_allclose(stacked_tables[only_b].numpy(), on_b_alone[only_b].numpy(), rtol=1e-6)


def test_training_never_sees_what_sits_in_a_panels_unmeasured_genes(tmp_path):
    a, b = _panels()
    clean = stack_panels({"a": a, "b": b})
    dirty = clean.copy()
    # Counts where panel a measured nothing: an unobserved gene must not be read or scored.
    dense = dirty.X.toarray()
    dense[:48, ~dirty.var[MEASURED_PREFIX + "a"].to_numpy()] = 7
    dirty.X = sp.csr_matrix(dense)
    vocabulary = GeneVocabulary.from_adata(clean)
    runs = [
        train(
            adata,
            tmp_path / name,
            preset="cpu",
            train_overrides={"max_steps": 3, "batch_size": 16, "val_fraction": 0.2, "val_every": 1},
            progress=False,
            vocabulary=vocabulary,
        )
        for name, adata in (("clean", clean), ("dirty", dirty))
    ]
    assert [r["loss"] for r in runs[0].log] == [r["loss"] for r in runs[1].log]
    assert [r["val_nll"] for r in runs[0].validation_log] == [r["val_nll"] for r in runs[1].validation_log]
    for name, weights in runs[0].model_state.items():
        np.testing.assert_array_equal(weights.numpy(), runs[1].model_state[name].numpy(), err_msg=name)
    # The same file without panel columns reads those 7s as counts: the test can fail.
    plain = ad.AnnData(
        X=dirty.X, obs=pd.DataFrame(index=dirty.obs_names), var=pd.DataFrame(index=dirty.var_names)
    )
    other = train(
        plain,
        tmp_path / "plain",
        preset="cpu",
        train_overrides={"max_steps": 3, "batch_size": 16, "val_fraction": 0.2, "val_every": 1},
        progress=False,
        vocabulary=vocabulary,
    )
    assert [r["loss"] for r in other.log] != [r["loss"] for r in runs[0].log]
