"""The fixed gene vocabulary stored with a model, and alignment of any AnnData to it.

Genes of the vocabulary that a dataset did not measure are *unobserved*: they carry no target in
the loss and are never counted as zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

ENSEMBL_COLUMNS = ("gene_ids", "gene_id", "ensembl_id", "ensembl", "gene_ensembl")


def _ensembl_ids(var: pd.DataFrame) -> list[str] | None:
    for column in ENSEMBL_COLUMNS:
        if column in var.columns:
            return [str(v) for v in var[column]]
    return None


@dataclass
class GeneAlignment:
    """Where each vocabulary gene sits in a dataset: column index, or -1 when unobserved."""

    columns: np.ndarray
    n_dataset_genes: int
    extra_genes: list[str] = field(default_factory=list)

    @property
    def observed(self) -> np.ndarray:
        """Boolean mask over the vocabulary: True where the dataset measured the gene."""
        return self.columns >= 0

    @property
    def n_matched(self) -> int:
        return int(self.observed.sum())

    def report(self) -> str:
        """A one-paragraph coverage report: matched, missing (unobserved) and extra genes."""
        n_vocab = len(self.columns)
        extra = ", ".join(self.extra_genes[:5]) + (", ..." if len(self.extra_genes) > 5 else "")
        return (
            f"gene coverage: {self.n_matched:,} of {n_vocab:,} vocabulary genes matched "
            f"({100 * self.n_matched / max(n_vocab, 1):.1f}%); "
            f"{n_vocab - self.n_matched:,} missing (treated as unobserved, not zero); "
            f"{len(self.extra_genes):,} dataset genes not in the vocabulary (ignored)"
            + (f": {extra}" if extra else "")
        )

    def take(self, counts) -> sp.csr_matrix:
        """Reorder dataset columns to vocabulary order; unobserved genes become empty columns."""
        counts = sp.csr_matrix(counts)
        observed = self.observed
        picked = counts[:, self.columns[observed]]
        # Scatter the picked columns into vocabulary positions with a sparse selection matrix.
        selector = sp.csr_matrix(
            (
                np.ones(observed.sum(), dtype=counts.dtype),
                (np.arange(observed.sum()), np.flatnonzero(observed)),
            ),
            shape=(int(observed.sum()), len(self.columns)),
        )
        return sp.csr_matrix(picked @ selector)


@dataclass
class GeneVocabulary:
    """An ordered list of gene symbols (and optional Ensembl ids) that defines model positions."""

    genes: list[str]
    ensembl_ids: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.genes:
            raise ValueError("a gene vocabulary needs at least one gene")
        duplicated = pd.Index(self.genes)[pd.Index(self.genes).duplicated()]
        if len(duplicated):
            raise ValueError(f"gene vocabulary has duplicate symbols: {list(duplicated[:5])}")

    def __len__(self) -> int:
        return len(self.genes)

    @classmethod
    def from_adata(
        cls, adata: ad.AnnData, min_cells: int = 1, genes: list[str] | None = None
    ) -> GeneVocabulary:
        """Build from the genes detected in at least ``min_cells`` cells, or from a given list."""
        if genes is not None:
            return cls(list(genes))
        detected = np.zeros(adata.n_vars, dtype=np.int64)
        for start in range(0, adata.n_obs, 4096):
            chunk = sp.csr_matrix(adata.X[start : start + 4096])
            detected += np.bincount(chunk.indices[chunk.data > 0], minlength=adata.n_vars)
        keep = detected >= min_cells
        if not keep.any():
            raise ValueError(f"no gene is detected in at least {min_cells} cells")
        ids = _ensembl_ids(adata.var)
        return cls(
            [str(g) for g in adata.var_names[keep]],
            None if ids is None else [i for i, k in zip(ids, keep) if k],
        )

    def align(self, adata: ad.AnnData) -> GeneAlignment:
        """Match dataset genes to the vocabulary by symbol, then by Ensembl id where both have one."""
        symbols = pd.Index([str(g) for g in adata.var_names])
        if symbols.duplicated().any():
            raise ValueError(
                "dataset has duplicate gene names (e.g. "
                f"{list(symbols[symbols.duplicated()][:3])}); run adata.var_names_make_unique()"
            )
        columns = symbols.get_indexer(pd.Index(self.genes))
        dataset_ids = _ensembl_ids(adata.var)
        if self.ensembl_ids is not None and dataset_ids is not None:
            by_id = pd.Index(dataset_ids).get_indexer(pd.Index(self.ensembl_ids))
            columns = np.where(columns >= 0, columns, by_id)
        matched = np.zeros(adata.n_vars, dtype=bool)
        matched[columns[columns >= 0]] = True
        return GeneAlignment(
            columns=columns.astype(np.int64),
            n_dataset_genes=adata.n_vars,
            extra_genes=list(symbols[~matched]),
        )

    def to_dict(self) -> dict:
        return {"genes": self.genes, "ensembl_ids": self.ensembl_ids}

    @classmethod
    def from_dict(cls, values: dict) -> GeneVocabulary:
        return cls(list(values["genes"]), values.get("ensembl_ids"))
