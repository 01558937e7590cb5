import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from lingshu.cli import app

pytest.importorskip(
    "cell_eval", reason="needs the perturbation extra: pip install 'lingshu-cell[perturbation]'"
)
runner = CliRunner()


def _run_baselines_on_user_split(task, tmp_path, *extra: str):
    """``lingshu benchmark perturbation`` with two baselines on the toy task as a user's split file."""
    split = tmp_path / "mine.json"
    split.write_text(json.dumps(task[0]))
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["benchmark", "perturbation", "--split", str(split), "--methods", "control,additive_shift"]
        + ["--out", str(out), "--no-plots", *extra],
    )
    return result, out


def test_cli_runs_a_user_split_and_writes_metrics_and_report(toy_perturbation_task, tmp_path):
    result, out = _run_baselines_on_user_split(toy_perturbation_task, tmp_path, "--seed", "3")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "metrics.csv")
    assert {"control", "additive_shift"} <= set(table["method"])
    assert (out / "report.md").is_file() and "report:" in result.output


def test_cli_repeats_the_benchmark_over_seeds_and_summarises_them(toy_perturbation_task, tmp_path):
    result, out = _run_baselines_on_user_split(toy_perturbation_task, tmp_path, "--seeds", "0,1")
    assert result.exit_code == 0, result.output
    first, second = (pd.read_csv(out / f"seed_{s}" / "metrics.csv") for s in (0, 1))
    # The baselines' draws and the half-split change with the seed.
    assert not first["mae"].equals(second["mae"])
    summary = pd.read_csv(out / "metrics_seed_summary.csv")
    assert (summary["n_seeds"] == 2).all() and "pearson_delta_std" in summary
    assert "over seeds" in result.output and (out / "seeds.md").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --task"),
        (["--task", "kang", "--seeds", "1,x"], "comma-separated integers"),
        (["--task", "kang", "--seeds", "1,1"], "distinct integers"),
        (["--task", "nope"], "unknown task 'nope'"),
        (["--task", "kang", "--methods", "nope"], "unknown methods"),
        (["--task", "kang", "--unseen", "error"], "--unseen must be one of control, average"),
        (["--task", "kang", "--control-fraction", "1.5"], "--control-fraction must be in (0, 1]"),
    ],
)
def test_cli_bad_input_is_one_clear_line(args, message, tmp_path):
    result = runner.invoke(app, ["benchmark", "perturbation", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_every_option_has_help():
    result = runner.invoke(app, ["benchmark", "perturbation", "--help"])
    assert result.exit_code == 0
    options = ("--task", "--split", "--methods", "--out", "--seed", "--threads", "--plots", "--unseen")
    for option in (*options, "--control-fraction"):
        assert option in result.output
