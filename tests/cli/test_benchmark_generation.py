import pandas as pd
import pytest
from typer.testing import CliRunner

from lingshu.cli import app
from lingshu.data.splits import make_cell_split, save_split

runner = CliRunner()


@pytest.fixture
def toy_split(tmp_path, counts_adata):
    data, split = tmp_path / "cells.h5ad", tmp_path / "split.json"
    counts_adata.write_h5ad(data)
    save_split(make_cell_split(counts_adata.obs_names, 0.25, seed=0), split)
    return ["--dataset", str(data), "--split", str(split)]


def test_cli_repeats_the_generation_benchmark_over_seeds(toy_split, tmp_path):
    out = tmp_path / "out"
    args = ["--preset", "tiny", "--max-steps", "3", "--min-cells", "1", "--steps", "2"]
    args += ["--conditional-preset", "tiny", "--depth-bins", "2"]
    result = runner.invoke(
        app,
        ["benchmark", "generation", *toy_split, *args, "--baselines", "copy_training"]
        + ["--seeds", "0,1", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    first, second = (pd.read_csv(out / f"seed_{s}" / "report" / "metrics.csv", index_col=0) for s in (0, 1))
    # Each seed trains, generates and draws the ceiling anew.
    assert first.loc["lingshu (2 steps)", "mmd"] != second.loc["lingshu (2 steps)", "mmd"]
    assert first.loc["real_ceiling", "mmd"] != second.loc["real_ceiling", "mmd"]
    summary = pd.read_csv(out / "metrics_seed_summary.csv")
    assert (summary["n_seeds"] == 2).all() and "mmd_std" in summary
    goals = pd.read_csv(out / "goal_over_seeds.csv")
    headline = goals[goals["method"] == "lingshu (2 steps)"]
    assert list(headline["seed"]) == [0, 1] and goals["goal_met"].isna().all()  # scVI did not run
    # Every model row is judged: the label-free and conditional models and their priors alone.
    assert set(goals["method"]) == {
        "lingshu (2 steps)",
        "priors alone (network off)",
        "lingshu conditional (cell_type) (2 steps)",
        "lingshu conditional (cell_type): priors alone (network off)",
    }
    assert "n/a (no scvi)" in result.output and (out / "seeds.md").is_file()


@pytest.mark.parametrize(("seeds", "message"), [("1,x", "comma-separated integers"), ("2,2", "distinct")])
def test_cli_bad_seeds_fail_before_any_training(toy_split, tmp_path, seeds, message):
    result = runner.invoke(
        app, ["benchmark", "generation", *toy_split, "--seeds", seeds, "--out", str(tmp_path / "o")]
    )
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "o").exists()
