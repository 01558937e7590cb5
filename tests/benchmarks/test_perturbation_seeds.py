"""Summaries of the perturbation benchmark over seeds, on constructed metric tables."""

import numpy as np
import pandas as pd
import pytest

from lingshu.benchmarks.perturbation_seeds import goal_met, summarise_perturbation_seeds, write_seed_summary
from lingshu.benchmarks.seeds import stack_seeds

PRIORS = "lingshu priors alone (network off)"


def _table(model_score: float, model_delta: float, additive_delta: float, priors_delta: float = 0.5):
    return pd.DataFrame(
        {
            "method": ["lingshu", PRIORS, "additive_shift", "perturbation_mean"],
            "kind": ["model", "priors", "baseline", "baseline"],
            "block": ["doubles"] * 4,
            "mae": [0.01, 0.015, 0.02, 0.03],
            "pearson_delta": [model_delta, priors_delta, additive_delta, 0.1],
            "score_vs_perturbation_mean": [model_score, 0.55, 0.5, 0.0],
            "score_vs_control": [0.6, 0.55, 0.5, 0.2],
        }
    )


@pytest.fixture
def per_seed() -> dict[int, pd.DataFrame]:
    # Seed 0: the model beats both baselines and its priors; seed 3: its score does, its
    # Pearson-delta does not beat the additive shift's.
    return {0: _table(0.7, 0.80, 0.75), 3: _table(0.6, 0.70, 0.75)}


def test_the_summary_gives_each_methods_mean_spread_and_range_over_seeds(per_seed):
    summary = summarise_perturbation_seeds(stack_seeds(per_seed)).set_index("method")
    assert summary.loc["lingshu", "n_seeds"] == 2
    assert summary.loc["lingshu", "pearson_delta_mean"] == pytest.approx(0.75)
    assert summary.loc["lingshu", "pearson_delta_std"] == pytest.approx(np.std([0.8, 0.7], ddof=1))
    assert summary.loc["lingshu", "score_vs_perturbation_mean_min"] == pytest.approx(0.6)
    assert summary.loc["lingshu", "score_vs_perturbation_mean_max"] == pytest.approx(0.7)
    assert summary.loc["additive_shift", "pearson_delta_std"] == pytest.approx(0.0)


def test_the_goal_is_judged_at_each_seed_against_that_seeds_baselines(per_seed):
    goals = goal_met(stack_seeds(per_seed)).set_index("seed")
    assert list(goals["method"]) == ["lingshu", "lingshu"]
    assert goals.loc[0, "goal_met"] and goals.loc[3, "score_above_every_baseline"]
    assert not goals.loc[3, "pearson_delta_above_additive"] and not goals.loc[3, "goal_met"]
    assert goals["above_priors_alone"].all()


def test_a_model_its_own_priors_alone_match_does_not_meet_the_goal():
    # Above every baseline, but its network-off row scores a higher Pearson-delta.
    goals = goal_met(stack_seeds({0: _table(0.7, 0.80, 0.75, priors_delta=0.85)}))
    assert goals.loc[0, "score_above_every_baseline"] and goals.loc[0, "pearson_delta_above_additive"]
    assert not goals.loc[0, "above_priors_alone"] and not goals.loc[0, "goal_met"]


def test_without_the_priors_alone_the_goal_is_not_judged():
    table = _table(0.7, 0.80, 0.75)
    goals = goal_met(stack_seeds({0: table[table["kind"] != "priors"]}))
    assert goals["above_priors_alone"].isna().all() and goals["goal_met"].isna().all()


def test_without_the_additive_shift_the_goal_is_not_judged(per_seed, tmp_path):
    without = {seed: table[table["method"] != "additive_shift"] for seed, table in per_seed.items()}
    goals = goal_met(stack_seeds(without))
    assert goals["goal_met"].isna().all() and goals["pearson_delta_above_additive"].isna().all()
    write_seed_summary(without, tmp_path)
    assert "| n/a (no additive_shift or no priors alone) |" in (tmp_path / "seeds.md").read_text()


def test_the_files_and_the_markdown_table_are_written(per_seed, tmp_path):
    write_seed_summary(per_seed, tmp_path)
    assert len(pd.read_csv(tmp_path / "metrics_over_seeds.csv")) == 8
    assert set(pd.read_csv(tmp_path / "goal_over_seeds.csv")["seed"]) == {0, 3}
    text = (tmp_path / "seeds.md").read_text()
    assert "## doubles" in text and "0.750 ± 0.071" in text and "| 2 of 2 | 1 of 2 |" in text
