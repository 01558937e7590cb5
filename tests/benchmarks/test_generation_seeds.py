"""The generation benchmark's goal over seeds, on constructed metric tables."""

import pandas as pd
import pytest

from lingshu.benchmarks.generation_seeds import goal_met, write_seed_summary
from lingshu.benchmarks.seeds import stack_seeds

METRICS = ["pearson_mean", "mmd", "wasserstein_1", "ilisi", "celltype_tvd"]


def _table(model_mmd: float, ceiling_mmd: float, with_scvi: bool = True) -> pd.DataFrame:
    """A metrics table as the evaluation writes it: indexed by method."""
    rows = {
        "lingshu (16 steps)": ("model", [0.998, model_mmd, 0.022, 0.80, 0.06]),
        "copy_training": ("baseline", [0.998, 0.030, 0.021, 0.89, 0.05]),
        "scvi": ("baseline", [0.994, 0.150, 0.038, 0.23, 0.19]),
        "real_ceiling": ("ceiling", [0.998, ceiling_mmd, 0.020, 0.93, 0.03]),
    }
    if not with_scvi:
        del rows["scvi"]
    table = pd.DataFrame(
        [[kind, *values] for kind, values in rows.values()], index=list(rows), columns=["kind", *METRICS]
    )
    return table.rename_axis("method")


@pytest.fixture
def per_seed() -> dict[int, pd.DataFrame]:
    # Seed 0: MMD 1.4x its ceiling (met); seed 1: the same MMD over a lower ceiling draw, 2x (not).
    return {0: _table(0.014, 0.010), 1: _table(0.014, 0.007)}


def test_the_goal_is_judged_against_each_seeds_own_ceiling(per_seed):
    goals = goal_met(stack_seeds({s: t.reset_index() for s, t in per_seed.items()})).set_index("seed")
    assert goals.loc[0, "mmd_vs_ceiling"] == pytest.approx(1.4)
    assert goals.loc[0, "mmd_within_ceiling"] and goals.loc[0, "goal_met"]
    assert goals.loc[1, "mmd_vs_ceiling"] == pytest.approx(2.0)
    assert not goals.loc[1, "mmd_within_ceiling"] and not goals.loc[1, "goal_met"]
    assert goals["wasserstein_1_within_ceiling"].all() and goals["pearson_at_least"].all()
    assert goals["beats_peer"].all()


def test_losing_to_scvi_on_one_metric_fails_the_goal():
    table = _table(0.012, 0.010)
    table.loc["scvi", "ilisi"] = 0.85  # scVI mixes better than the model's 0.80
    goals = goal_met(stack_seeds({0: table.reset_index()}))
    assert not goals.loc[0, "beats_peer"] and not goals.loc[0, "goal_met"]
    assert goals.loc[0, "mmd_within_ceiling"]


def test_without_scvi_the_goal_is_not_judged(tmp_path):
    per_seed = {0: _table(0.012, 0.010, with_scvi=False)}
    goals = goal_met(stack_seeds({s: t.reset_index() for s, t in per_seed.items()}))
    assert goals["beats_peer"].isna().all() and goals["goal_met"].isna().all()
    write_seed_summary(per_seed, tmp_path)
    text = (tmp_path / "seeds.md").read_text()
    assert "n/a (no scvi)" in text and "| 1 of 1 |" in text  # MMD within the ceiling still counted


def test_a_seed_without_a_ceiling_is_an_error():
    table = _table(0.012, 0.010).drop(index="real_ceiling")
    with pytest.raises(ValueError, match="seed 0 has no real-vs-real ceiling"):
        goal_met(stack_seeds({0: table.reset_index()}))


def test_the_files_and_the_markdown_tables_are_written(per_seed, tmp_path):
    summary = write_seed_summary(per_seed, tmp_path).set_index("method")
    assert summary.loc["real_ceiling", "mmd_mean"] == pytest.approx(0.0085)
    assert len(pd.read_csv(tmp_path / "metrics_over_seeds.csv")) == 8
    goals = pd.read_csv(tmp_path / "goal_over_seeds.csv")
    assert list(goals["seed"]) == [0, 1] and list(goals["goal_met"]) == [True, False]
    text = (tmp_path / "seeds.md").read_text()
    assert "| lingshu (16 steps) | model | 0.998 ± 0 | 0.014 ± 0 |" in text
    # MMD over the ceiling per seed and of the means (0.014 / 0.0085), and the goal at 1 of 2.
    assert "| lingshu (16 steps) | 1.40, 2.00 | 1.65 | 1.10 | 1 of 2 |" in text
