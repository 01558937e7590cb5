"""Figures and the Markdown report of the perturbation benchmark (numbers come from the runner)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from lingshu.benchmarks.perturbation_seeds import ADDITIVE, priors_row
from lingshu.data.perturbation_splits import NULL_EFFECT_SUFFIX
from lingshu.data.writing import atomic_write_text
from lingshu.evaluation.embedding import fit_pca, subsample_index
from lingshu.evaluation.perturbation_scoring import METRICS
from lingshu.evaluation.plots import (
    UmapPanel,
    plot_condition_bars,
    plot_fold_change_scatter,
    plot_umaps,
    umap_coords,
)
from lingshu.evaluation.preprocess import count_matrix, log_normalise
from lingshu.evaluation.render import markdown_table

if TYPE_CHECKING:
    from lingshu.benchmarks.perturbation import PerturbationBenchmarkResult

KEY_METRIC = "pearson_delta"
TOP_DE_GENES = 20
MAX_UMAP_CELLS = 1500


def slug(text: str) -> str:
    """A file-name-safe lower-case form of a label (``CD14+Mono`` -> ``cd14_mono``)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def _condition_labels(adata: ad.AnnData, context_key: str, perturbation_key: str) -> np.ndarray:
    return (adata.obs[context_key].astype(str) + " / " + adata.obs[perturbation_key].astype(str)).to_numpy()


def fold_change_points(de_paths: Mapping[str, tuple[Path, Path]], perturbations: set[str]) -> pd.DataFrame:
    """Real vs predicted log2 fold change of each perturbation's top real DE genes (by FDR)."""
    frames = []
    for real_path, pred_path in de_paths.values():
        if not (Path(real_path).is_file() and Path(pred_path).is_file()):
            continue
        real = pd.read_csv(real_path)
        real = real[real["target"].astype(str).isin(perturbations)]
        top = real.sort_values("fdr").groupby("target", sort=False).head(TOP_DE_GENES)
        pred = pd.read_csv(pred_path)[["target", "feature", "log2_fold_change"]]
        merged = top.merge(pred, on=["target", "feature"], how="left", suffixes=("_real", "_pred"))
        frames.append(
            pd.DataFrame(
                {"real": merged["log2_fold_change_real"], "predicted": merged["log2_fold_change_pred"]}
            )
        )
    if not frames:
        return pd.DataFrame(columns=["real", "predicted"])
    points = pd.concat(frames, ignore_index=True)
    return points[np.isfinite(points.to_numpy(dtype=float)).all(axis=1)]


def write_figures(
    result: PerturbationBenchmarkResult,
    held_out: ad.AnnData,
    predictions: Mapping[str, ad.AnnData],
    de_paths: Mapping[str, Mapping[str, tuple[Path, Path]]],
    seed: int,
    umap: bool = True,
) -> dict[str, str]:
    """Per-condition bars of Pearson-delta, LFC scatters per block, UMAPs of real vs predicted."""
    from lingshu.benchmarks.perturbation import CELL_EVAL_CEILING

    split, figures_dir = result.split, result.out_dir / "figures"
    figures: dict[str, str] = {}
    table = result.per_perturbation[result.per_perturbation["method"] != CELL_EVAL_CEILING]
    values = table.assign(condition=table["context"] + " / " + table["perturbation"]).pivot(
        index="condition", columns="method", values=KEY_METRIC
    )
    values = values.reindex(columns=list(dict.fromkeys(table["method"])))
    path = plot_condition_bars(
        values, KEY_METRIC, figures_dir / f"{KEY_METRIC}_by_condition.png", result.kinds
    )
    figures[f"{KEY_METRIC} per held-out condition"] = str(path.relative_to(result.out_dir))

    for block in split.blocks:
        perts = {p.perturbation for p in split.held_out if p.block == block}
        contexts = {p.context for p in split.held_out if p.block == block}
        points = {
            name: fold_change_points({c: v for c, v in paths.items() if c in contexts}, perts)
            for name, paths in de_paths.items()
        }
        path = plot_fold_change_scatter(points, figures_dir / f"lfc_{slug(block)}.png")
        figures[f"log2 fold change, top {TOP_DE_GENES} real DE genes per condition: {block}"] = str(
            path.relative_to(result.out_dir)
        )

    rng = np.random.default_rng(seed)
    real_rows = subsample_index(held_out.n_obs, MAX_UMAP_CELLS, rng)
    real = held_out[real_rows]
    panels = []
    for name, predicted in predictions.items() if umap else ():
        pred = predicted[subsample_index(predicted.n_obs, MAX_UMAP_CELLS, rng)]
        x = log_normalise(count_matrix(ad.concat([real, pred], join="inner", merge="same")))
        embedded = fit_pca(x, 30, seed).transform(x)
        labels = np.concatenate(
            [
                _condition_labels(real, split.context_key, split.perturbation_key),
                _condition_labels(pred, split.context_key, split.perturbation_key),
            ]
        )
        is_predicted = np.r_[np.zeros(real.n_obs, bool), np.ones(pred.n_obs, bool)]
        panels.append(UmapPanel(name, umap_coords(embedded, seed), is_predicted, labels))
    if panels:
        path = plot_umaps(panels, figures_dir / "umap.png", label_title="context / perturbation")
        figures["UMAP of real held-out vs predicted cells"] = str(path.relative_to(result.out_dir))
    return figures


NOTES = [
    "Each context is scored in its own pair of cell-eval files with one control label: the real file "
    "holds the held-out real cells plus that context's real control cells, the predicted file the "
    "predicted cells plus the *same* real controls, all integer counts (cell-eval normalises each file "
    "to its median depth and log1p's it).",
    "`discrimination_score_l1` (PDS) is only computed where >= 2 held-out perturbations share a context; "
    "with one it is 1.0 whatever the prediction. Where it is n/a it is also left out of the scores.",
    "`de_spearman_sig` is a correlation across perturbations, so it is computed over each block from "
    "cell-eval's per-perturbation significant-gene counts (n/a where the real counts do not vary, e.g. "
    "a block with no real DE genes).",
    "Scores are cell-eval's `score_agg_metrics`: per metric the scaled improvement over the reference "
    "(MAE 1 - s/b, others (s - b)/(1 - b)), NaN as 0, clipped at 0, then averaged. `score_vs_control` "
    "is the same against the control predictor (Kang's perturbation mean carries another cell type's "
    "identity, so it is a weak reference there).",
    "Because real and predicted files share the same real controls, Pearson-delta shares their noise: a "
    "prediction with no information can still correlate with a null effect. Read it beside the "
    "cell-eval ceiling, where the controls are split too.",
    "Ceilings: *real half-split* scores one half of the held-out real cells against the other half (each "
    "with the same real controls) at half depth, uncorrected; *cell-eval (SB-corrected)* is cell-eval's "
    "`compute_ceiling` (perturbed and control cells both split in halves, Spearman-Brown corrected to full "
    "depth; n/a for MAE and wherever the half-split reliability is <= 0).",
    "Baselines draw negative-binomial integer counts with the dispersion of the context's real control "
    "cells (never Poisson or fractional): `control` resamples the context's real control cells; "
    "`perturbation_mean` is the mean of the context's per-perturbation training means (where the "
    "context has no perturbed training cells, Kang, the mean over every training perturbation, each "
    "scaled to this context's control depth); `additive_shift` adds the target's mean shift from "
    "control (seen in the same context for a double's singles, else averaged over the contexts that "
    "saw it, scaled by control depth; A+B sums its seen singles' shifts; clipped at 0). A target seen "
    "nowhere (Papalexi's unseen targets) has no shift, so `additive_shift` falls back to "
    "`perturbation_mean` there.",
]


def verdict_lines(table: pd.DataFrame) -> list[str]:
    """One line per model row of a block's table that has its priors alone beside it: its
    Pearson-delta and score beside those of the same checkpoint with the network off, the
    additive shift and the best baseline, and whether the network adds to its priors."""
    lines = []
    baselines = table[table["kind"] == "baseline"]
    best = baselines.loc[baselines["score_vs_perturbation_mean"].idxmax()] if len(baselines) else None
    additive = table[table["method"] == ADDITIVE]

    def figures(row: pd.Series) -> str:
        return f"Pearson-delta {row['pearson_delta']:.3f}, score {row['score_vs_perturbation_mean']:.3f}"

    for _, row in table[table["kind"] == "model"].iterrows():
        priors = priors_row(table, row["method"])
        if priors is None:
            continue  # ablation variants: their figures are in the table
        adds = (
            row["pearson_delta"] > priors["pearson_delta"]
            and row["score_vs_perturbation_mean"] > priors["score_vs_perturbation_mean"]
        )
        parts = [
            f"**Verdict, `{row['method']}`**: {figures(row)}",
            f"its priors alone {figures(priors)} (the network "
            + ("adds to them on both" if adds else "does not add to them on both")
            + ")",
        ]
        if len(additive):
            parts.append(f"{ADDITIVE} Pearson-delta {additive.iloc[0]['pearson_delta']:.3f}")
        if best is not None:
            parts.append(f"best baseline by score `{best['method']}` {figures(best)}")
        lines.append("; ".join(parts) + ".")
    return lines


def write_report(result: PerturbationBenchmarkResult) -> Path:
    """``report.md``: the split, one table per block, honest notes, timings and figures."""
    split = result.split
    lines = [
        f"# Perturbation benchmark: {split.name or split.dataset}",
        "",
        f"Dataset `{split.dataset}` (`{split.file}`); context `{split.context_key}`, perturbation "
        f"`{split.perturbation_key}`, control `{split.control_label}`"
        + (f", dropped labels {list(split.drop_labels)}" if split.drop_labels else "")
        + ".",
        "",
        f"Split rationale: {split.rationale}",
        "",
        "## Held-out conditions",
        "",
        markdown_table(result.counts, index=False),
        "",
    ]
    if result.model_settings:
        lines += ["## Model settings", ""]
        lines += [f"- `{name}`: {text}" for name, text in result.model_settings.items()]
        lines += [""]
    columns = ["method", "kind", *METRICS, "score_vs_perturbation_mean", "score_vs_control"]
    for block in split.blocks:
        table = result.metrics[result.metrics["block"] == block][columns]
        table = table.dropna(axis=1, how="all")
        lines += [f"## {block}", "", markdown_table(table, index=False), ""]
        verdicts = verdict_lines(result.metrics[result.metrics["block"] == block])
        lines += [*verdicts, ""] if verdicts else []
        if block.endswith(NULL_EFFECT_SUFFIX):
            lines += [
                "This block is reported separately: its real held-out cells have (almost) no significant "
                "DE genes, so the DE metrics carry no signal and Pearson-delta mostly correlates noise.",
                "",
            ]
    lines += ["## How to read", "", "MAE: lower is better; every other metric: higher is better.", ""]
    lines += [f"- {note}" for note in NOTES]
    lines += ["", "## Timings", "", *[f"- {k}: {v:.1f}" for k, v in result.timings.items()], ""]
    if result.figures:
        lines += ["## Figures", ""]
        lines += [f"### {title}\n\n![{title}]({path})\n" for title, path in result.figures.items()]
    lines += [
        "Files: `metrics.csv` (method x block), `metrics_per_context.csv`, `metrics_per_perturbation.csv`, "
        "`predictions/`, and cell-eval's inputs and DE tables under `cell_eval/`.",
        "",
    ]
    return atomic_write_text(result.out_dir / "report.md", "\n".join(lines))
