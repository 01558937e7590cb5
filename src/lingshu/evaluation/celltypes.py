"""Cell-type aware comparisons: a classifier trained on real cells, proportions and markers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression

from lingshu.evaluation.embedding import fit_pca

UNASSIGNED = "unassigned"


def assigned_mask(labels: np.ndarray) -> np.ndarray:
    """True for cells with a usable label (not missing, not ``'unassigned'``)."""
    labels = pd.Series(np.asarray(labels, dtype=object))
    return (labels.notna() & (labels.astype(str) != UNASSIGNED)).to_numpy()


@dataclass(frozen=True)
class CellTypeClassifier:
    """Logistic regression on a PCA of real log-normalised cells.

    Fitted on real cells only, so that it judges generated cells by what real cells of each
    type look like.
    """

    pca: PCA | None
    model: LogisticRegression | None
    single_class: str | None

    @classmethod
    def fit(
        cls, matrix: np.ndarray, labels: np.ndarray, n_pcs: int = 50, seed: int = 0
    ) -> CellTypeClassifier:
        """Fit on labelled cells; ``'unassigned'`` and missing labels are ignored."""
        keep = assigned_mask(labels)
        if not keep.any():
            raise ValueError("no labelled real cells to train the cell-type classifier on")
        x = matrix[keep]
        y = np.asarray(labels, dtype=object)[keep].astype(str)
        classes = np.unique(y)
        if classes.size == 1:
            return cls(pca=None, model=None, single_class=str(classes[0]))
        pca = fit_pca(x, n_pcs, seed)
        model = LogisticRegression(max_iter=2000, random_state=seed)
        model.fit(pca.transform(x), y)
        return cls(pca=pca, model=model, single_class=None)

    @property
    def classes(self) -> list[str]:
        """Cell types the classifier can predict."""
        if self.single_class is not None:
            return [self.single_class]
        return [str(c) for c in self.model.classes_]

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Predicted cell type of each row of a log-normalised matrix."""
        if self.single_class is not None:
            return np.full(matrix.shape[0], self.single_class, dtype=object)
        return self.model.predict(self.pca.transform(matrix)).astype(object)


def proportions(labels: np.ndarray, categories: Sequence[str] | None = None) -> pd.Series:
    """Fraction of assigned cells per label, over ``categories`` (missing ones get 0)."""
    labels = np.asarray(labels, dtype=object)
    kept = pd.Series(labels[assigned_mask(labels)].astype(str))
    fractions = kept.value_counts(normalize=True) if len(kept) else pd.Series(dtype=float)
    if categories is not None:
        fractions = fractions.reindex(list(categories), fill_value=0.0)
    return fractions.astype(float)


def proportion_table(real_labels: np.ndarray, generated_labels: np.ndarray) -> pd.DataFrame:
    """Per cell type: real fraction and generated fraction (rows sorted by real fraction)."""
    categories = sorted(set(proportions(real_labels).index) | set(proportions(generated_labels).index))
    table = pd.DataFrame(
        {
            "real_fraction": proportions(real_labels, categories),
            "generated_fraction": proportions(generated_labels, categories),
        }
    )
    table.index.name = "cell_type"
    return table.sort_values("real_fraction", ascending=False)


def total_variation(real_labels: np.ndarray, generated_labels: np.ndarray) -> float:
    """Total-variation distance 0.5 * sum |p_real - p_generated| between label proportions."""
    table = proportion_table(real_labels, generated_labels)
    return float(0.5 * np.abs(table["real_fraction"] - table["generated_fraction"]).sum())


def rank_markers(
    matrix: np.ndarray,
    labels: np.ndarray,
    genes: Sequence[str],
    n_markers: int = 5,
    min_cells: int = 3,
    min_fraction: float = 0.05,
) -> dict[str, list[str]]:
    """Top ``n_markers`` genes per cell type (scanpy's Wilcoxon rank-sum, one type vs rest).

    Types with fewer than ``min_cells`` cells are skipped (a rank test needs a few cells).
    Only genes detected in at least ``min_fraction`` of the cells are tested: markers are never
    among the near-silent genes, and this makes the test several times faster on 16k genes.
    """
    import scanpy as sc  # imported here: scanpy is slow to import and only needed for markers
    from anndata import AnnData

    labels = np.asarray(labels, dtype=object)
    keep = assigned_mask(labels)
    counts = pd.Series(labels[keep].astype(str)).value_counts()
    groups = sorted(counts.index[counts >= min_cells])
    if len(groups) < 2:
        return {}
    cells = keep & np.isin(labels.astype(str), groups)
    x = matrix[cells]
    tested = (x > 0).mean(axis=0) >= min_fraction
    if not tested.any():
        return {}
    adata = AnnData(
        X=x[:, tested],
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical(labels[cells].astype(str))},
            index=[str(i) for i in range(int(cells.sum()))],
        ),
    )
    adata.var_names = np.asarray(genes)[tested]
    adata.uns["log1p"] = {"base": None}  # tells scanpy the data are already log1p
    sc.tl.rank_genes_groups(adata, "cell_type", method="wilcoxon", n_genes=n_markers, use_raw=False)
    names = adata.uns["rank_genes_groups"]["names"]
    return {group: [str(g) for g in names[group]] for group in groups}


def marker_table(
    real: np.ndarray,
    real_labels: np.ndarray,
    generated: np.ndarray,
    generated_labels: np.ndarray,
    genes: Sequence[str],
    markers: dict[str, list[str]],
) -> pd.DataFrame:
    """Per cell type and marker gene: fraction of expressing cells and mean log expression.

    Real cells are grouped by their labels and generated cells by ``generated_labels`` (their
    conditioning label, or the classifier's prediction). A type with no generated cells gets NaN.
    """
    gene_index = {gene: i for i, gene in enumerate(genes)}
    real_labels = np.asarray(real_labels, dtype=object).astype(str)
    generated_labels = np.asarray(generated_labels, dtype=object).astype(str)
    rows = []
    for cell_type, type_markers in markers.items():
        real_cells = real[real_labels == cell_type]
        generated_cells = generated[generated_labels == cell_type]
        for rank, gene in enumerate(type_markers, start=1):
            column = gene_index[gene]
            real_values = real_cells[:, column]
            generated_values = generated_cells[:, column]
            has_generated = generated_values.size > 0
            rows.append(
                {
                    "cell_type": cell_type,
                    "gene": gene,
                    "rank": rank,
                    "n_real": real_values.size,
                    "n_generated": generated_values.size,
                    "real_frac_expressing": float((real_values > 0).mean()),
                    "generated_frac_expressing": (
                        float((generated_values > 0).mean()) if has_generated else np.nan
                    ),
                    "real_mean": float(real_values.mean()),
                    "generated_mean": (float(generated_values.mean()) if has_generated else np.nan),
                }
            )
    return pd.DataFrame(rows)


def expression_summary(
    matrix: np.ndarray, labels: np.ndarray, types: Sequence[str], columns: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of expressing cells and mean expression per (type, gene column), for dot plots.

    Rows of a type with no cells are NaN.
    """
    labels = np.asarray(labels, dtype=object).astype(str)
    fraction = np.full((len(types), len(columns)), np.nan)
    mean = np.full((len(types), len(columns)), np.nan)
    for i, cell_type in enumerate(types):
        cells = matrix[labels == cell_type][:, list(columns)]
        if cells.shape[0]:
            fraction[i] = (cells > 0).mean(axis=0)
            mean[i] = cells.mean(axis=0)
    return fraction, mean
