"""Biological prior for genetic perturbations: genes a target strongly down-regulates elsewhere.

For every single-gene perturbation and every context where it was measured in the training data,
a Wilcoxon rank-sum (Mann-Whitney U) test per gene against that context's control cells, with
Benjamini-Hochberg correction, selects the *down* genes of the paper (Eq. 26): FDR < 0.05,
|mean difference| > 1, |log2 fold change| > 1, control mean > 2 and perturbed mean < 1, on raw
counts. At prediction time the down genes of the same target in *other* contexts, plus the target
itself, are pre-filled with a count of 1 (see ``lingshu.inference.predict``).

One guard beyond the paper (which works on CRISPRi screens): a target whose own expression goes
*up* in another context (CRISPR activation, as in Norman 2019) is not pre-filled with a count of
1; its down genes still are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import scipy.sparse as sp
from scipy import stats

from lingshu.data.conditions import ConditionSlot

# Per-group cell cap for the tests: enough power for strong effects, bounded cost on big data.
MAX_CELLS_PER_GROUP = 500


def _dense_rows(adata: ad.AnnData, rows: np.ndarray) -> np.ndarray:
    block = adata.X[np.sort(rows)]
    return (block.toarray() if sp.issparse(block) else np.asarray(block)).astype(np.float64)


def strongly_down_genes(
    perturbed: np.ndarray,
    control: np.ndarray,
    genes: np.ndarray,
    fdr: float = 0.05,
    min_difference: float = 1.0,
    min_abs_log2fc: float = 1.0,
    min_control_mean: float = 2.0,
    max_perturbed_mean: float = 1.0,
) -> list[str]:
    """Genes (names from ``genes``) passing all five thresholds of the paper's Eq. 26."""
    mean_p, mean_c = perturbed.mean(0), control.mean(0)
    candidate = (
        (mean_c > min_control_mean)
        & (mean_p < max_perturbed_mean)
        & (np.abs(mean_p - mean_c) > min_difference)
        & (np.abs(np.log2((mean_p + 1e-9) / (mean_c + 1e-9))) > min_abs_log2fc)
    )
    if not candidate.any() or len(perturbed) < 2 or len(control) < 2:
        return []
    # BH runs over every tested gene (not only the candidates), as a DE tool would report it.
    pvalues = np.nan_to_num(stats.mannwhitneyu(perturbed, control, axis=0).pvalue, nan=1.0)
    adjusted = stats.false_discovery_control(pvalues, method="bh")
    return [str(g) for g in genes[candidate & (adjusted < fdr)]]


@dataclass
class BiologicalPrior:
    """Per target and context: the genes it strongly down-regulates, and where it is raised."""

    down: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    raised: dict[str, list[str]] = field(default_factory=dict)

    def genes_for(self, targets: list[str], context: str | None) -> list[str]:
        """Genes to pre-fill for ``targets`` in ``context``: their down genes in *other*
        contexts, plus each target not seen raised in another context."""
        chosen = set()
        for target in targets:
            if not any(other != context for other in self.raised.get(target, [])):
                chosen.add(target)
            for other, genes in self.down.get(target, {}).items():
                if other != context:
                    chosen.update(genes)
        return sorted(chosen)

    def to_dict(self) -> dict:
        return {"down": self.down, "raised": self.raised}

    @classmethod
    def from_dict(cls, values: dict) -> BiologicalPrior:
        return cls(dict(values.get("down", {})), dict(values.get("raised", {})))


def target_is_raised(perturbed: np.ndarray, control: np.ndarray, target_column: int) -> bool:
    """Whether the perturbation raises its own target (activation): mean up by > 1 and > 2-fold."""
    mean_p, mean_c = perturbed[:, target_column].mean(), control[:, target_column].mean()
    return bool(mean_p - mean_c > 1 and mean_p > 2 * mean_c)


def find_prior(
    adata: ad.AnnData,
    perturbation: ConditionSlot,
    context_key: str | None,
    seed: int = 0,
) -> BiologicalPrior:
    """The prior of every single-gene perturbation of ``adata`` in every context.

    ``perturbation`` is the trained perturbation slot (its obs column and control label).
    Without a context column all cells form one context.
    """
    obs = adata.obs
    labels = obs[perturbation.key].astype(str).to_numpy()
    contexts = obs[context_key].astype(str).to_numpy() if context_key else np.full(len(obs), "all")
    genes = np.asarray(adata.var_names)
    rng = np.random.default_rng([seed, 0x9A10])

    def pick(mask: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(mask)
        return (
            rng.choice(rows, MAX_CELLS_PER_GROUP, replace=False) if len(rows) > MAX_CELLS_PER_GROUP else rows
        )

    column = {str(g): i for i, g in enumerate(genes)}
    result = BiologicalPrior()
    for context in np.unique(contexts):
        in_context = contexts == context
        control_rows = pick(in_context & (labels == perturbation.control_label))
        if len(control_rows) < 2:
            continue
        control = _dense_rows(adata, control_rows)
        for label in np.unique(labels[in_context]):
            if label == perturbation.control_label or len(perturbation.parts(label)) != 1:
                continue
            perturbed = _dense_rows(adata, pick(in_context & (labels == label)))
            result.down.setdefault(label, {})[str(context)] = strongly_down_genes(perturbed, control, genes)
            if label in column and target_is_raised(perturbed, control, column[label]):
                result.raised.setdefault(label, []).append(str(context))
    return result
