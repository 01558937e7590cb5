"""Stacking and summarising a benchmark's tables over seeds."""

import numpy as np
import pandas as pd
import pytest

from lingshu.benchmarks.seeds import count_met, parse_seeds, plus_minus, stack_seeds, summarise_seeds


def test_seeds_parse_as_distinct_integers():
    assert parse_seeds(" 3, 0,1 ") == [3, 0, 1]
    for bad, message in (("1,x", "comma-separated integers"), ("1,1", "distinct"), (" , ", "one or more")):
        with pytest.raises(ValueError, match=message):
            parse_seeds(bad)


def test_the_summary_groups_by_the_given_keys_and_skips_metrics_the_table_lacks():
    per_seed = {
        seed: pd.DataFrame({"method": ["a", "b"], "kind": ["model", "baseline"], "x": [value, 1.0]})
        for seed, value in ((0, 2.0), (5, 4.0))
    }
    stacked = stack_seeds(per_seed)
    assert list(stacked.columns[:2]) == ["seed", "method"] and sorted(set(stacked["seed"])) == [0, 5]
    summary = summarise_seeds(stacked, ["x", "not_there"], ["method", "kind"]).set_index("method")
    assert summary.loc["a", "x_mean"] == 3.0 and summary.loc["a", "x_std"] == pytest.approx(np.sqrt(2))
    assert (summary.loc["a", "x_min"], summary.loc["a", "x_max"]) == (2.0, 4.0)
    assert summary.loc["b", "x_std"] == 0.0 and "not_there_mean" not in summary
    assert plus_minus(summary.loc["a"], "x") == "3.000 ± 1.414"
    assert plus_minus(summary.loc["a"], "x", ".2g") == "3 ± 1.4"
    assert plus_minus(summary.loc["a"], "x", ".4g", ".1g") == "3 ± 1"
    assert plus_minus(summary.loc["a"], "not_there") == ""


def test_a_goal_is_counted_over_seeds_unless_some_seed_could_not_judge_it():
    assert count_met(pd.Series([True, False, True]), "n/a") == "2 of 3"
    assert count_met(pd.Series([True, None], dtype=object), "n/a") == "n/a"


def test_no_seeds_is_an_error():
    with pytest.raises(ValueError, match="no seeds"):
        stack_seeds({})
