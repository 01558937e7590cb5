"""A benchmark repeated over seeds: stacking the seeds' tables, their mean and spread, the files.

One draw of generated or predicted cells, one draw of the baselines' and one real-vs-real split
leave the metrics about as noisy as the differences between methods. Running a whole benchmark
once per seed and reporting the mean, the spread and how often a model meets its goal keeps a
single lucky seed from standing for the method. The task's own rules (which metrics, what the
goal is) live in :mod:`~lingshu.benchmarks.perturbation_seeds` and
:mod:`~lingshu.benchmarks.generation_seeds`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from lingshu.data.writing import atomic_path


def parse_seeds(text: str) -> list[int]:
    """Seeds from "0,1,2": distinct integers, at least one; anything else is a clear error."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not values or len(set(values)) != len(values):
        raise ValueError(f"--seeds takes one or more distinct integers, got {text!r}")
    return values


def stack_seeds(per_seed: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """The seeds' ``metrics.csv`` tables in one, with a ``seed`` column first."""
    if not per_seed:
        raise ValueError("no seeds to summarise")
    return pd.concat(
        [table.assign(seed=seed)[["seed", *table.columns]] for seed, table in per_seed.items()],
        ignore_index=True,
    )


def summarise_seeds(stacked: pd.DataFrame, metrics: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
    """Mean, standard deviation, min and max over seeds of ``metrics`` for each group of
    ``keys`` (e.g. method and kind), one row per group with columns ``<metric>_mean`` etc., plus
    ``n_seeds``. Metrics the table lacks are left out."""
    present = [m for m in metrics if m in stacked.columns]
    grouped = stacked.groupby(list(keys), sort=False)
    summary = grouped[present].agg(["mean", "std", "min", "max"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary.insert(0, "n_seeds", grouped["seed"].nunique())
    return summary.reset_index()


def plus_minus(row: pd.Series, metric: str, fmt: str = ".3f", sd_fmt: str | None = None) -> str:
    """'mean ± sd' of ``metric`` in a summary row, written with ``fmt`` (and ``sd_fmt`` for the
    spread, default ``fmt``): 'mean' alone for one seed, '' when missing."""
    mean, sd = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if mean is None or pd.isna(mean):
        return ""
    return f"{mean:{fmt}}" if sd is None or pd.isna(sd) else f"{mean:{fmt}} ± {sd:{sd_fmt or fmt}}"


def count_met(met: pd.Series, unknown: str) -> str:
    """'k of n' seeds at which a goal (a column of booleans) is met, or ``unknown`` when any
    seed could not judge it (None)."""
    if met.isna().any():
        return unknown
    return f"{int(met.astype(bool).sum())} of {len(met)}"


def write_over_seeds(
    per_seed: Mapping[int, pd.DataFrame],
    out_dir: str | Path,
    summarise: Callable[[pd.DataFrame], pd.DataFrame],
    judge: Callable[[pd.DataFrame], pd.DataFrame],
    markdown: Callable[[pd.DataFrame, pd.DataFrame], str],
) -> pd.DataFrame:
    """Stack the seeds' tables, summarise them and judge the goal at each seed, then write
    ``metrics_over_seeds.csv``, ``metrics_seed_summary.csv``, ``goal_over_seeds.csv`` and
    ``seeds.md`` (each atomically) under ``out_dir``; return the summary."""
    stacked = stack_seeds(per_seed)
    summary, goals = summarise(stacked), judge(stacked)
    out_dir = Path(out_dir)
    tables = {
        "metrics_over_seeds.csv": stacked,
        "metrics_seed_summary.csv": summary,
        "goal_over_seeds.csv": goals,
    }
    for name, frame in tables.items():
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=False)
    with atomic_path(out_dir / "seeds.md") as tmp:
        tmp.write_text(markdown(summary, goals))
    return summary
