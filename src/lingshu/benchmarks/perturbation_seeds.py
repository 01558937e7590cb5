"""The perturbation benchmark over seeds: its metrics, its goal and its ``seeds.md``.

A held-out block of five doubles or three cell types leaves the metrics as noisy as the
differences between methods; :mod:`lingshu.benchmarks.seeds` stacks and summarises the seeds'
tables, and this module judges the issue's goal at each seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from lingshu.benchmarks.perturbation_model import PRIORS_SUFFIX
from lingshu.benchmarks.seeds import count_met, plus_minus, summarise_seeds, write_over_seeds

# Metrics summarised over seeds (all of the table's are kept in metrics_over_seeds.csv).
SUMMARY_METRICS = (
    "pearson_delta",
    "score_vs_perturbation_mean",
    "score_vs_control",
    "mae",
    "overlap_at_N",
    "pr_auc",
)
# The metrics seeds.md shows, with their headers.
TABLE_COLUMNS = {
    "pearson_delta": "Pearson-delta",
    "score_vs_perturbation_mean": "score vs pert-mean",
    "score_vs_control": "score vs control",
    "mae": "MAE",
}
ADDITIVE = "additive_shift"


def priors_row(table: pd.DataFrame, method: str) -> pd.Series | None:
    """The "priors alone" row of model ``method`` (the same checkpoint, network off) in one seed
    and block's table; None where it did not run (e.g. an ablation variant's own checkpoint)."""
    named = table[(table["kind"] == "priors") & (table["method"] == method + PRIORS_SUFFIX)]
    return named.iloc[0] if len(named) else None


def goal_met(stacked: pd.DataFrame) -> pd.DataFrame:
    """Per model, block and seed, whether it meets the issue's goal: a score against the
    perturbation mean above every baseline's, a Pearson-delta above the additive shift's, and
    both above its own priors alone (the network must add something). Where the additive shift
    or the priors alone did not run, that half of the goal and the goal are unknown (None), not
    met by default."""
    records = []
    for (seed, block), table in stacked.groupby(["seed", "block"], sort=False):
        baselines = table[table["kind"] == "baseline"]
        best_score = baselines["score_vs_perturbation_mean"].max()
        additive = table.loc[table["method"] == ADDITIVE, "pearson_delta"]
        for _, row in table[table["kind"] == "model"].iterrows():
            beats_score = bool(row["score_vs_perturbation_mean"] > best_score)
            beats_additive = None if additive.empty else bool(row["pearson_delta"] > additive.iloc[0])
            priors = priors_row(table, row["method"])
            beats_priors = None
            if priors is not None:
                beats_priors = bool(
                    row["pearson_delta"] > priors["pearson_delta"]
                    and row["score_vs_perturbation_mean"] > priors["score_vs_perturbation_mean"]
                )
            parts = (beats_score, beats_additive, beats_priors)
            records.append(
                {
                    "seed": seed,
                    "method": row["method"],
                    "block": block,
                    "score_above_every_baseline": beats_score,
                    "pearson_delta_above_additive": beats_additive,
                    "above_priors_alone": beats_priors,
                    "goal_met": None if None in parts else all(parts),
                }
            )
    columns = [
        "seed",
        "method",
        "block",
        "score_above_every_baseline",
        "pearson_delta_above_additive",
        "above_priors_alone",
    ]
    return pd.DataFrame.from_records(records, columns=[*columns, "goal_met"])


def summarise_perturbation_seeds(stacked: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation, min and max over seeds of each method x block's metrics."""
    return summarise_seeds(stacked, SUMMARY_METRICS, ["method", "kind", "block"])


def seeds_markdown(summary: pd.DataFrame, goals: pd.DataFrame) -> str:
    """A Markdown table per block: each method's mean ± sd over seeds and, for the model, at
    how many seeds it met the goal."""
    lines = ["# Perturbation benchmark over seeds", ""]
    n_seeds = int(summary["n_seeds"].max())
    lines += [
        f"Each seed reruns the whole benchmark (training, prediction, baselines, half-split); "
        f"{n_seeds} seeds. Mean ± standard deviation over seeds.",
        "",
    ]
    for block, table in summary.groupby("block", sort=False):
        lines += [
            f"## {block}",
            "",
            "| method | kind | "
            + " | ".join(TABLE_COLUMNS.values())
            + " | network above its priors | goal met |",
            "|---|---|" + "---|" * len(TABLE_COLUMNS) + "---|---|",
        ]
        for _, row in table.iterrows():
            met = goals[(goals["method"] == row["method"]) & (goals["block"] == block)]
            above, goal = "", ""
            if len(met):
                above = count_met(met["above_priors_alone"], "n/a (no priors alone)")
                goal = count_met(met["goal_met"], f"n/a (no {ADDITIVE} or no priors alone)")
            cells = [plus_minus(row, m) for m in TABLE_COLUMNS]
            lines.append(
                f"| {row['method']} | {row['kind']} | " + " | ".join(cells) + f" | {above} | {goal} |"
            )
        lines.append("")
    lines.append(
        "Goal: a score against the perturbation mean above every baseline's, a Pearson-delta "
        "above the additive shift's, and both above the same checkpoint's priors alone (network "
        "off), at the same seed."
    )
    return "\n".join(lines) + "\n"


def write_seed_summary(per_seed: Mapping[int, pd.DataFrame], out_dir: str | Path) -> pd.DataFrame:
    """Write ``metrics_over_seeds.csv`` (every seed's table), ``metrics_seed_summary.csv``,
    ``goal_over_seeds.csv`` and ``seeds.md`` under ``out_dir``; return the summary."""
    return write_over_seeds(per_seed, out_dir, summarise_perturbation_seeds, goal_met, seeds_markdown)
