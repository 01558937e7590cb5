import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from lingshu.cli import app
from lingshu.data.conditions import ConditionMap
from lingshu.evaluation.likelihood import (
    CELL_TYPE,
    GLOBAL,
    MODEL,
    NETWORK_OFF,
    TYPE_DEPTH,
    evaluate_likelihood,
    group_rows,
    reference_tables,
)
from lingshu.training.run import train

from ..conftest import make_counts_adata

runner = CliRunner()
TINY = {"max_steps": 4, "batch_size": 16, "warmup_steps": 1}


@pytest.fixture(scope="module")
def split():
    cells = make_counts_adata(n_cells=240, n_genes=30, n_types=3, seed=4)
    return cells[:180].copy(), cells[180:].copy()


@pytest.fixture(scope="module")
def checkpoint(split, tmp_path_factory):
    out = tmp_path_factory.mktemp("likelihood") / "ckpt"
    overrides = {"head": "tilted", "value_embedding": True}
    return train(
        split[0], out, preset="tiny", train_overrides=TINY, model_overrides=overrides, progress=False
    )


def test_depth_groups_cut_each_type_at_its_training_quantiles():
    train_labels = np.array(["a"] * 8 + ["b"] * 2)
    train_sizes = np.array([1, 2, 3, 4, 5, 6, 7, 8, 10, 20], dtype=float)
    train_groups, groups, names = group_rows(
        np.array(["a", "a", "b"]), np.array([0.5, 100.0, 15.0]), train_labels, train_sizes, 4
    )
    assert names == [f"a depth {k}/4" for k in (1, 2, 3, 4)] + ["b depth 1/1"]
    assert list(train_groups[:8]) == [0, 0, 1, 1, 2, 2, 3, 3] and list(train_groups[8:]) == [4, 4]
    assert list(groups) == [0, 3, 4]  # below every edge, above every edge, the one-bin type


def test_tables_cover_the_held_out_cells_and_an_unseen_type_is_an_error(split, checkpoint):
    train_cells, held = split
    tables = reference_tables(train_cells, held, checkpoint.vocabulary, "cell_type", depth_bins=2)
    assert set(tables) == {GLOBAL, CELL_TYPE, TYPE_DEPTH}
    assert tables[CELL_TYPE].log_probabilities.shape[0] == 3
    for table in tables.values():
        assert len(table.groups) == held.n_obs
        assert np.allclose(table.log_probabilities.exp().sum(-1).numpy(), 1.0, atol=1e-4)
    odd = held.copy()
    odd.obs["cell_type"] = odd.obs["cell_type"].astype(str).replace({"type0": "never-seen"})
    with pytest.raises(ValueError, match="never-seen"):
        reference_tables(train_cells, odd, checkpoint.vocabulary, "cell_type", depth_bins=2)


def test_every_row_is_scored_on_the_same_draws_and_the_type_oracle_beats_the_global_table(split, checkpoint):
    train_cells, held = split
    model = checkpoint.build_model()
    summary, raw = evaluate_likelihood(
        model,
        checkpoint.vocabulary,
        ConditionMap.from_dict(checkpoint.conditions),
        held,
        train_cells,
        depth_bins=2,
        levels=(0.1, 0.5, 0.9),
        n_draws=2,
        progress=False,
    )
    assert list(summary.method.unique()) == [MODEL, NETWORK_OFF, GLOBAL, CELL_TYPE, TYPE_DEPTH]
    assert set(summary.t) == {0.1, 0.5, 0.9} and (summary.draws == 2).all()
    assert np.allclose(summary[summary.method == GLOBAL].gain_per_cell, 0.0)
    mid = summary[summary.t == 0.5].set_index("method")
    # The three cell types have different mean profiles: knowing the type must help.
    assert mid.loc[CELL_TYPE, "gain_per_cell"] > 0
    # Per cell = per gene x observed genes.
    n_genes = len(checkpoint.vocabulary)
    assert raw.nll_per_cell.to_numpy() == pytest.approx(raw.nll_per_gene.to_numpy() * n_genes)


def test_mask_levels_outside_zero_one_are_refused(split, checkpoint):
    with pytest.raises(ValueError, match="mask levels"):
        evaluate_likelihood(
            checkpoint.build_model(),
            checkpoint.vocabulary,
            ConditionMap.from_dict(checkpoint.conditions),
            split[1],
            levels=(0.0,),
            progress=False,
        )


def test_likelihood_command_writes_its_tables(split, checkpoint, tmp_path):
    train_cells, held = split
    train_path, held_path = tmp_path / "train.h5ad", tmp_path / "held.h5ad"
    train_cells.write_h5ad(train_path)
    held.write_h5ad(held_path)
    ckpt = tmp_path / "ckpt"
    from lingshu.training.checkpoint import save_checkpoint

    save_checkpoint(checkpoint, ckpt)
    args = ["benchmark", "likelihood", "--checkpoint", str(ckpt), "--cells", str(held_path)]
    result = runner.invoke(
        app,
        [
            *args,
            "--train",
            str(train_path),
            "--draws",
            "2",
            "--depth-bins",
            "2",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "r" / "likelihood.csv")
    assert set(table.method) == {MODEL, NETWORK_OFF, GLOBAL, CELL_TYPE, TYPE_DEPTH}
    assert "network off" in (tmp_path / "r" / "likelihood.md").read_text()


def test_the_network_off_shortcut_scores_what_the_model_with_its_network_off_scores(split, checkpoint):
    from lingshu.data.loader import AlignedCounts
    from lingshu.evaluation.likelihood import priors_nll, tokens_of
    from lingshu.model.likelihood import mask_draws, model_nll

    held = split[1]
    alignment = checkpoint.vocabulary.align(held)
    tokens = tokens_of(AlignedCounts(held, alignment))
    observed = torch.from_numpy(alignment.observed)
    draws = mask_draws(*tokens.shape, 5)
    model = checkpoint.build_model()
    shortcut = priors_nll(model, tokens, observed, 0.5, draws, None)
    full = model_nll(model, tokens, observed, 0.5, draws, network=False)
    np.testing.assert_allclose(shortcut.nll, full.nll, rtol=1e-4)


def test_a_conditional_checkpoint_is_scored_under_each_cells_type_and_depth_bin(split, tmp_path):
    train_cells, held = split
    source = train(
        train_cells,
        tmp_path / "conditional",
        preset="tiny",
        train_overrides=TINY,
        condition_keys={"source": "cell_type"},
        depth_bins=2,
        progress=False,
    )
    conditions = ConditionMap.from_dict(source.conditions)
    summary, _ = evaluate_likelihood(
        source.build_model(),
        source.vocabulary,
        conditions,
        held,
        train_cells,
        depth_bins=2,
        n_draws=1,
        levels=(0.5,),
        progress=False,
    )
    assert set(summary.method) == {MODEL, NETWORK_OFF, GLOBAL, CELL_TYPE, TYPE_DEPTH}
    # Each cell is scored under its own type: the same cells under other cells' types score worse.
    shuffled = held.copy()
    shuffled.obs["cell_type"] = np.random.default_rng(0).permutation(held.obs["cell_type"].to_numpy())
    wrong, _ = evaluate_likelihood(
        source.build_model(),
        source.vocabulary,
        conditions,
        shuffled,
        n_draws=1,
        levels=(0.5,),
        progress=False,
    )
    right = summary.set_index("method").loc[NETWORK_OFF, "nll_per_gene"]
    assert right < wrong.set_index("method").loc[NETWORK_OFF, "nll_per_gene"]
    unlabelled = held.copy()
    del unlabelled.obs["cell_type"]
    with pytest.raises(ValueError, match="cell_type"):
        evaluate_likelihood(source.build_model(), source.vocabulary, conditions, unlabelled, progress=False)


def test_without_training_cells_gains_are_against_the_priors_alone(split, checkpoint):
    summary, _ = evaluate_likelihood(
        checkpoint.build_model(),
        checkpoint.vocabulary,
        ConditionMap.from_dict(checkpoint.conditions),
        split[1],
        levels=(0.5,),
        n_draws=2,
        progress=False,
    )
    assert list(summary.method) == [MODEL, NETWORK_OFF]
    assert summary.set_index("method").loc[NETWORK_OFF, "gain_per_cell"] == 0
