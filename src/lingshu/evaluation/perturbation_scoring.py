"""Score perturbation predictions with Arc Institute's cell-eval, one context at a time.

Following DESIGN.md's scoring pitfalls: each context gets its own pair of files with one control
label; the real file holds the held-out real perturbed cells plus that context's real control
cells, the predicted file the predicted cells plus the *same* real control cells; both hold
integer counts (cell-eval normalises and log1p's only integer matrices). The discrimination
score is kept only where at least two perturbations share a context (with one it is always 1).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import spearmanr

from lingshu.data.perturbation_splits import PerturbationSplit
from lingshu.data.writing import write_h5ad_atomic
from lingshu.evaluation.preprocess import count_matrix

INSTALL_HINT = "pip install 'lingshu-cell[perturbation]'"
PERT_COL = "perturbation"
# The seven metrics of the paper / VCC, in cell-eval's registry names.
METRICS = (
    "mae",
    "pearson_delta",
    "discrimination_score_l1",
    "overlap_at_N",
    "de_spearman_sig",
    "de_spearman_lfc_sig",
    "pr_auc",
)
LOWER_IS_BETTER = frozenset({"mae"})
# Per-perturbation numbers of significant DE genes; de_spearman_sig is computed from them per block.
NSIG = ("de_nsig_counts_real", "de_nsig_counts_pred")
PER_CONTEXT_METRICS = tuple(m for m in METRICS if m != "de_spearman_sig")


def import_cell_eval():
    """Import cell-eval lazily, with the install command in the error if it is missing."""
    try:
        import cell_eval
    except ImportError as error:
        raise ImportError(f"perturbation scoring needs Arc Institute's cell-eval: {INSTALL_HINT}") from error
    return cell_eval


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence cell-eval's INFO logging and pdex's progress bars for the duration of a call."""
    logger = logging.getLogger("cell_eval")
    level, previous = logger.level, os.environ.get("TQDM_DISABLE")
    logger.setLevel(logging.ERROR)
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        logger.setLevel(level)
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous


def _labelled(cells: ad.AnnData, labels: np.ndarray, prefix: str) -> ad.AnnData:
    counts = count_matrix(cells)
    if counts.nnz and not np.all(np.mod(counts.data, 1) == 0):
        raise ValueError(
            f"{prefix} cells are not integer counts; cell-eval would read them as log-normalised"
        )
    obs = pd.DataFrame(
        {PERT_COL: np.asarray(labels, dtype=str)}, index=[f"{prefix}-{i}" for i in range(len(labels))]
    )
    return ad.AnnData(
        X=sp.csr_matrix(counts, dtype=np.int32), obs=obs, var=pd.DataFrame(index=cells.var_names)
    )


def context_file(
    perturbed: ad.AnnData, controls: ad.AnnData, split: PerturbationSplit, prefix: str
) -> ad.AnnData:
    """One cell-eval input: perturbed cells (labelled by perturbation) + the context's control cells."""
    if list(perturbed.var_names) != list(controls.var_names):
        raise ValueError(f"{prefix} cells and control cells have different genes")
    parts = [
        _labelled(perturbed, perturbed.obs[split.perturbation_key].astype(str).to_numpy(), prefix),
        _labelled(controls, np.full(controls.n_obs, split.control_label), "control"),
    ]
    return ad.concat(parts, merge="same")


def _run_pipeline(cell_eval, evaluator, metrics: Sequence[str], ceiling: bool) -> pd.DataFrame:
    if ceiling:
        everything = cell_eval.metrics_registry.list_metrics()
        results, _ = evaluator.compute_ceiling(
            profile="full", skip_metrics=[m for m in everything if m not in metrics], write_csv=False
        )
    else:
        pipeline = cell_eval.MetricPipeline(profile=None)
        pipeline.add_metrics(list(metrics))
        pipeline.compute_de_metrics(evaluator.de_comparison)
        pipeline.compute_anndata_metrics(evaluator.anndata_pair)
        results = pipeline.get_results()
    return results.to_pandas().set_index("perturbation")


def score_context(
    real: ad.AnnData,
    predicted: ad.AnnData | None,
    split: PerturbationSplit,
    work_dir: str | Path,
    num_threads: int = 1,
    real_de: str | Path | None = None,
) -> pd.DataFrame:
    """cell-eval metrics per perturbation of one context (rows) for one prediction.

    ``real`` is the context's real file and ``predicted`` the predicted file (see
    :func:`context_file`); both are written as integer ``.h5ad`` under ``work_dir`` and cell-eval
    reads those. With ``predicted=None`` cell-eval's own ``compute_ceiling`` is run on the real
    file instead (each perturbation *and* the controls split in halves, Spearman-Brown corrected;
    only correlation-type metrics get a value). ``real_de`` reuses a real DE table computed by an
    earlier call on the same real file.
    """
    cell_eval = import_cell_eval()
    work_dir = Path(work_dir)
    perts = sorted(set(real.obs[PERT_COL]) - {split.control_label})
    metrics = [m for m in (*PER_CONTEXT_METRICS, "de_nsig_counts") if m != "discrimination_score_l1"]
    if len(perts) >= 2:  # with one perturbation in a file the PDS is 1.0 whatever the prediction
        metrics.append("discrimination_score_l1")
    real_path = write_h5ad_atomic(real, work_dir / "real.h5ad")  # always: never score a stale file
    pred_path = None
    if predicted is not None:
        pred_path = work_dir / "predicted.h5ad"
        write_h5ad_atomic(predicted, pred_path)
    with _quiet():
        evaluator = cell_eval.MetricsEvaluator(
            adata_pred=None if pred_path is None else str(pred_path),
            adata_real=str(real_path),
            de_real=None if real_de is None else str(real_de),
            control_pert=split.control_label,
            pert_col=PERT_COL,
            num_threads=num_threads,
            outdir=str(work_dir),
        )
        table = _run_pipeline(cell_eval, evaluator, metrics, ceiling=predicted is None)
    table = table.reindex(index=perts, columns=[*PER_CONTEXT_METRICS, *NSIG])
    table.index.name = split.perturbation_key
    return table


def block_summary(per_perturbation: pd.DataFrame) -> pd.Series:
    """Mean of each metric over a block's perturbations, plus de_spearman_sig across them.

    de_spearman_sig is a correlation across perturbations, so it is taken over the whole block
    (from cell-eval's per-perturbation significant-gene counts), not per one-perturbation file.
    """
    summary = per_perturbation.reindex(columns=list(PER_CONTEXT_METRICS)).mean(axis=0, skipna=True)
    nsig = per_perturbation.reindex(columns=list(NSIG)).dropna()
    rho = np.nan
    if len(nsig) >= 2 and nsig.nunique().min() > 1:
        rho = float(spearmanr(nsig[NSIG[0]], nsig[NSIG[1]]).statistic)
    summary["de_spearman_sig"] = rho
    return summary.reindex(list(METRICS))


def spearman_brown(summary: pd.Series) -> pd.Series:
    """Map half-depth self-split scores to full depth, r' = 2r/(1+r), as cell-eval's ceiling does.

    Applied to the correlation/overlap-type metrics where r > 0; MAE (an error, not a
    reliability) and non-positive values get NaN, as in cell-eval's ``compute_ceiling``.
    """
    corrected = summary.astype(float).copy()
    for name, value in corrected.items():
        ok = name not in LOWER_IS_BETTER and np.isfinite(value) and value > 0
        corrected[name] = 2 * value / (1 + value) if ok else np.nan
    return corrected


def improvement_score(method: Mapping[str, float], baseline: Mapping[str, float]) -> float:
    """Mean clipped scaled improvement over ``baseline`` (cell-eval's ``score_agg_metrics``).

    MAE: 1 - s/b; the others: (s - b)/(1 - b); NaN counts as 0, then each is clipped at 0.
    Metrics the baseline has no value for (PDS where one perturbation per context) are left out.
    """
    cell_eval = import_cell_eval()
    import polars as pl

    names = [m for m in METRICS if m in baseline and np.isfinite(baseline[m])]
    if not names:
        return float("nan")

    def frame(values: Mapping[str, float]) -> pl.DataFrame:
        return pl.DataFrame({"statistic": ["mean"], **{m: [float(values.get(m, np.nan))] for m in names}})

    with _quiet(), np.errstate(divide="ignore", invalid="ignore"):  # b == 1: cell-eval gives NaN -> 0
        scores = cell_eval.score_agg_metrics(frame(method), frame(baseline))
    return float(scores.filter(pl.col("metric") == "avg_score")["from_baseline"][0])
