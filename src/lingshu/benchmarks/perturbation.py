"""Perturbation benchmark: split -> predict held-out (context, perturbation) pairs -> cell-eval.

Every method is a :class:`~lingshu.evaluation.perturbation_baselines.Predictor`. They are looked
up by name in :data:`PERTURBATION_METHODS`; the model joins as ``"lingshu"`` (trained on the
split's training cells, conditioned on ``split.context_key`` and ``split.perturbation_key``). Each
context is scored in its own pair of files (see ``evaluation.perturbation_scoring``), and two
ceilings are shown: the real held-out cells split in halves (against the same real controls), and
cell-eval's ``compute_ceiling`` (controls split too, Spearman-Brown corrected).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from lingshu.benchmarks.perturbation_report import slug, write_figures, write_report
from lingshu.data.perturbation_splits import PerturbationSplit, load_perturbation_split, load_task
from lingshu.data.writing import atomic_path, write_h5ad_atomic
from lingshu.evaluation.perturbation_baselines import (
    PERTURBATION_BASELINES,
    CellRequest,
    Predictor,
    real_half_split,
    requests_for,
)
from lingshu.evaluation.perturbation_scoring import (
    METRICS,
    block_summary,
    context_file,
    import_cell_eval,
    improvement_score,
    score_context,
    spearman_brown,
)
from lingshu.evaluation.preprocess import check_counts

# Short task names of the CLI -> shipped split names.
TASKS = {"kang": "kang2018", "norman": "norman2019", "papalexi": "papalexi2021"}
# The methods registry. Add the model here (or pass it in ``methods``) as "lingshu".
PERTURBATION_METHODS: dict[str, Predictor] = dict(PERTURBATION_BASELINES)
DEFAULT_METHODS = ("control", "perturbation_mean", "additive_shift")
HALF_SPLIT = "ceiling: real half-split"
CELL_EVAL_CEILING = "ceiling: cell-eval (SB-corrected)"
SCORE_REFERENCES = ("perturbation_mean", "control")


@dataclass
class PerturbationBenchmarkResult:
    """Everything the benchmark measured; ``metrics`` is one row per method x block."""

    split: PerturbationSplit
    per_perturbation: pd.DataFrame
    per_context: pd.DataFrame
    metrics: pd.DataFrame
    kinds: dict[str, str]
    timings: dict[str, float]
    out_dir: Path
    counts: pd.DataFrame
    figures: dict[str, str] = field(default_factory=dict)
    # Per model method: how its cells were made (checkpoint step, steps, guidance, prior).
    model_settings: dict[str, str] = field(default_factory=dict)


def resolve_split(task: str | Path | PerturbationSplit) -> PerturbationSplit:
    """A split object from a short task name (kang), a shipped split name or a JSON file."""
    if isinstance(task, PerturbationSplit):
        return task
    return load_perturbation_split(TASKS.get(str(task), task))


def resolve_methods(methods: Sequence[str] | Mapping[str, Predictor] | None) -> dict[str, Predictor]:
    """Methods by name from :data:`PERTURBATION_METHODS`, or given directly as a mapping; the
    score's reference baselines (:data:`SCORE_REFERENCES`) are added when missing, so every
    method gets a score."""
    if methods is None:
        methods = DEFAULT_METHODS
    if not isinstance(methods, Mapping):
        unknown = [name for name in methods if name not in PERTURBATION_METHODS]
        if unknown:
            raise KeyError(f"unknown methods {unknown}; choose from {', '.join(PERTURBATION_METHODS)}")
        methods = {name: PERTURBATION_METHODS[name] for name in methods}
    missing = {name: PERTURBATION_METHODS[name] for name in SCORE_REFERENCES if name not in methods}
    return {**dict(methods), **missing}


def check_prediction(
    name: str,
    predicted: ad.AnnData,
    train: ad.AnnData,
    split: PerturbationSplit,
    requests: Sequence[CellRequest],
) -> None:
    """A method's output must be integer counts over the training genes, sized like the requests."""
    check_counts(predicted, f"method {name!r}")
    if list(predicted.var_names) != list(train.var_names):
        raise ValueError(f"method {name!r} returned other genes than the training cells (same order needed)")
    for key in (split.context_key, split.perturbation_key):
        if key not in predicted.obs:
            raise ValueError(f"method {name!r} returned no obs[{key!r}]")
    sizes = predicted.obs.groupby([split.context_key, split.perturbation_key], observed=True).size()
    got = {(str(c), str(p)): int(n) for (c, p), n in sizes.items()}
    wanted = {(r.context, r.perturbation): r.n_cells for r in requests}
    if got != wanted:
        raise ValueError(f"method {name!r} returned cells {got}, expected {wanted}")


def _select(adata: ad.AnnData, split: PerturbationSplit, context: str, control: bool = False) -> ad.AnnData:
    contexts = adata.obs[split.context_key].astype(str).to_numpy()
    mask = contexts == context
    if control:
        mask &= adata.obs[split.perturbation_key].astype(str).to_numpy() == split.control_label
    return adata[mask]


def _blocks_of(split: PerturbationSplit) -> dict[tuple[str, str], str]:
    return {(p.context, p.perturbation): p.block for p in split.held_out}


def _score_all(
    split: PerturbationSplit,
    train: ad.AnnData,
    held_out: ad.AnnData,
    predictions: Mapping[str, ad.AnnData],
    halves: tuple[ad.AnnData, ad.AnnData],
    work: Path,
    num_threads: int,
) -> tuple[pd.DataFrame, dict[str, dict[str, Path]]]:
    """Per-perturbation cell-eval metrics of every method and both ceilings, context by context."""
    rows, de_paths = [], {}
    blocks = _blocks_of(split)
    for context in split.contexts:
        controls = _select(train, split, context, control=True)
        real = context_file(_select(held_out, split, context), controls, split, "real")
        context_dir = work / slug(context)
        runs: list[tuple[str, ad.AnnData, ad.AnnData | None]] = [
            (name, real, context_file(_select(p, split, context), controls, split, "pred"))
            for name, p in predictions.items()
        ]
        half_real, half_pred = (
            context_file(_select(h, split, context), controls, split, "half") for h in halves
        )
        runs += [(HALF_SPLIT, half_real, half_pred), (CELL_EVAL_CEILING, real, None)]
        real_de = None
        for name, real_file, predicted in runs:
            method_dir = context_dir / slug(name)
            table = score_context(
                real_file, predicted, split, method_dir, num_threads, real_de if real_file is real else None
            )
            if real_file is real and predicted is not None:
                if real_de is None:
                    real_de = method_dir / "real_de.csv"
                de_paths.setdefault(name, {})[context] = (real_de, method_dir / "pred_de.csv")
            table = table.reset_index(names="perturbation")
            table.insert(0, "context", context)
            table.insert(0, "method", name)
            table.insert(2, "block", [blocks[(context, p)] for p in table["perturbation"]])
            rows.append(table)
    return pd.concat(rows, ignore_index=True), de_paths


def _summaries(per_perturbation: pd.DataFrame, group: str) -> pd.DataFrame:
    """Block (or context) summaries per method; the cell-eval ceiling gets its SB correction."""
    records = []
    for (method, key), frame in per_perturbation.groupby(["method", group], sort=False):
        summary = block_summary(frame)
        if method == CELL_EVAL_CEILING:
            summary = spearman_brown(summary)
        records.append({"method": method, group: key, **summary.to_dict()})
    return pd.DataFrame.from_records(records)


def _add_scores(metrics: pd.DataFrame) -> pd.DataFrame:
    """Clipped scaled improvement over perturbation_mean and over control, per block."""
    metrics = metrics.copy()
    for reference in SCORE_REFERENCES:
        column = f"score_vs_{reference}"
        metrics[column] = np.nan
        for index, row in metrics.iterrows():
            base = metrics[(metrics["method"] == reference) & (metrics["block"] == row["block"])]
            if base.empty or row["method"] == CELL_EVAL_CEILING:
                continue  # the cell-eval ceiling has no MAE, so no comparable score
            base_values = base.iloc[0][list(METRICS)].astype(float).to_dict()
            metrics.loc[index, column] = improvement_score(
                row[list(METRICS)].astype(float).to_dict(), base_values
            )
    return metrics


def _cell_counts(split: PerturbationSplit, train: ad.AnnData, held_out: ad.AnnData) -> pd.DataFrame:
    records = []
    for pair in split.held_out:
        held = _select(held_out, split, pair.context)
        n_held = int((held.obs[split.perturbation_key].astype(str) == pair.perturbation).sum())
        n_control = _select(train, split, pair.context, control=True).n_obs
        records.append(
            {
                "block": pair.block,
                "context": pair.context,
                "perturbation": pair.perturbation,
                "held-out cells": n_held,
                "control cells": n_control,
            }
        )
    return pd.DataFrame.from_records(records)


def model_settings(provenance: dict) -> str:
    """One line on how a model's cells were made, from ``uns['lingshu']`` of ``predict``."""
    requests = provenance.get("requests", {}).values()
    substituted = [r for r in requests if r.get("conditioned_on") != r["perturbation"]]
    prior_sizes = [len(r.get("prior_genes", [])) for r in requests]
    text = (
        f"checkpoint step {provenance.get('checkpoint_step')}, {provenance.get('n_steps')} unmasking steps, "
        f"guidance w={provenance.get('guidance')}, prior {'on' if provenance.get('prior') else 'off'}"
    )
    if provenance.get("prior") and prior_sizes:
        text += f" ({min(prior_sizes)}-{max(prior_sizes)} genes pre-filled per condition)"
    if substituted:
        names = ", ".join(sorted({r["perturbation"] for r in substituted}))
        averaged = all(r.get("average_shift") for r in substituted)
        text += (
            f"; no token for {names}: sampled under the control token (or their seen parts) with "
            + ("the context's average perturbation shift and " if averaged else "")
            + "the prior injection"
        )
    if provenance.get("chosen_on"):
        text += f"; guidance and prior chosen on {provenance['chosen_on']}"
    if provenance.get("model_priors"):
        text += f"; model tables: {provenance['model_priors']}"
    return text


def run_perturbation_benchmark(
    task: str | Path | PerturbationSplit,
    methods: Sequence[str] | Mapping[str, Predictor] | None = None,
    out_dir: str | Path = "runs/benchmark_perturbation",
    seed: int = 0,
    num_threads: int = 1,
    plots: bool = True,
    umap: bool = True,
) -> PerturbationBenchmarkResult:
    """Predict every held-out pair with each method, score with cell-eval, write the outputs.

    Writes ``metrics.csv`` (one row per method x block, one column per metric plus the scores),
    ``metrics_per_context.csv``, ``metrics_per_perturbation.csv``, ``report.md``, the figures,
    the predictions (``predictions/<method>.h5ad``) and cell-eval's inputs (``cell_eval/``).
    ``umap=False`` skips the UMAP figure (the slowest one: umap-learn compiles on first use).
    """
    import_cell_eval()  # fail before any work if the extra is missing
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    split, train, held_out = load_task(resolve_split(task))
    timings["load_s"] = time.perf_counter() - started
    requests = requests_for(held_out, split)
    predictions = {}
    chosen = resolve_methods(methods)
    for name, predictor in chosen.items():
        started = time.perf_counter()
        predicted = predictor(train, split, requests, seed)
        timings[f"predict_{name}_s"] = time.perf_counter() - started
        check_prediction(name, predicted, train, split, requests)
        write_h5ad_atomic(predicted, out_dir / "predictions" / f"{name}.h5ad")
        predictions[name] = predicted
    started = time.perf_counter()
    halves = real_half_split(held_out, split, seed)
    per_perturbation, de_paths = _score_all(
        split, train, held_out, predictions, halves, out_dir / "cell_eval", num_threads
    )
    timings["score_s"] = time.perf_counter() - started
    metrics = _add_scores(_summaries(per_perturbation, "block"))
    kinds = {
        name: getattr(predictor, "kind", "baseline" if name in PERTURBATION_BASELINES else "model")
        for name, predictor in chosen.items()
    }
    kinds.update({HALF_SPLIT: "ceiling", CELL_EVAL_CEILING: "ceiling"})
    metrics.insert(1, "kind", metrics["method"].map(kinds))
    result = PerturbationBenchmarkResult(
        split=split,
        per_perturbation=per_perturbation,
        per_context=_summaries(per_perturbation, "context"),
        metrics=metrics,
        kinds=kinds,
        timings=timings,
        out_dir=out_dir,
        counts=_cell_counts(split, train, held_out),
        model_settings={
            name: model_settings(p.uns["lingshu"]) for name, p in predictions.items() if "lingshu" in p.uns
        },
    )
    if plots:
        started = time.perf_counter()
        result.figures = write_figures(result, held_out, predictions, de_paths, seed, umap)
        timings["plots_s"] = time.perf_counter() - started
    for name, frame in (
        ("metrics.csv", metrics),
        ("metrics_per_context.csv", result.per_context),
        ("metrics_per_perturbation.csv", per_perturbation),
    ):
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=False)
    write_report(result)
    return result
