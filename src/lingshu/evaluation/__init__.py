"""Evaluation of generated cells: metric registry, baselines, and the report.

Typical use::

    from lingshu.evaluation import evaluate_generation
    table = evaluate_generation(heldout, {"lingshu": generated}, train, "eval_out",
                                baselines=["independent_genes", "copy_training"])
"""

from lingshu.evaluation.baselines import GENERATION_BASELINES, run_baselines
from lingshu.evaluation.celltypes import (
    CellTypeClassifier,
    marker_table,
    proportion_table,
    rank_markers,
    total_variation,
)
from lingshu.evaluation.metrics import (
    GENERATION_METRICS,
    Metric,
    MetricContext,
    memorisation,
    mmd_multiscale,
    mmd_permutation_pvalue,
    mmd_unbiased,
    score_generation,
    wasserstein_per_gene,
)
from lingshu.evaluation.preprocess import check_counts, log_normalise, preprocess, shared_genes
from lingshu.evaluation.report import CEILING, evaluate_generation

__all__ = [
    "CEILING",
    "GENERATION_BASELINES",
    "GENERATION_METRICS",
    "CellTypeClassifier",
    "Metric",
    "MetricContext",
    "check_counts",
    "evaluate_generation",
    "log_normalise",
    "marker_table",
    "memorisation",
    "mmd_multiscale",
    "mmd_permutation_pvalue",
    "mmd_unbiased",
    "preprocess",
    "proportion_table",
    "rank_markers",
    "run_baselines",
    "score_generation",
    "shared_genes",
    "total_variation",
    "wasserstein_per_gene",
]
