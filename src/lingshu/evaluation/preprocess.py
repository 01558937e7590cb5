"""Input checks and the shared preprocessing of every evaluation: shared genes, log1p(CP10k).

All metrics compare cells on the same footing: the genes every input measured, each cell scaled
to 10,000 counts over those genes, then ``log1p``. Sparse operations are done before densifying
so that a 16k-gene matrix is only made dense once it holds the rows and columns we keep.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from lingshu.data.validation import CountsValidationError, validate_counts

TARGET_SUM = 10_000.0


def count_matrix(adata: AnnData, layer: str | None = None) -> sp.csr_matrix:
    """Return the raw counts of ``adata`` (``X`` or ``layers[layer]``) as CSR, unchecked."""
    if layer is None:
        matrix = adata.X
    else:
        if layer not in adata.layers:
            raise ValueError(f"layer {layer!r} not found; available: {sorted(adata.layers)}")
        matrix = adata.layers[layer]
    if matrix is None:
        raise ValueError("the AnnData has no expression matrix in X")
    if sp.issparse(matrix):
        return sp.csr_matrix(matrix)
    return sp.csr_matrix(np.asarray(matrix))


def check_counts(adata: AnnData, name: str = "input", layer: str | None = None) -> None:
    """Raise ``ValueError`` unless the counts of ``adata`` are finite, non-negative integers
    (the training-data check of :func:`lingshu.data.validation.validate_counts`, prefixed with
    ``name``) with unique gene names. Log-normalised input is the usual mistake; the message
    says so."""
    if adata.n_obs == 0:
        raise ValueError(f"{name}: has no cells")
    if adata.n_vars == 0:
        raise ValueError(f"{name}: has no genes")
    if not adata.var_names.is_unique:
        duplicated = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"{name}: gene names are not unique (e.g. {duplicated}); "
            "call adata.var_names_make_unique() or aggregate duplicates first"
        )
    try:
        validate_counts(count_matrix(adata, layer), layer, require_counts=False)
    except CountsValidationError as error:
        raise ValueError(f"{name}: {error}") from None


def shared_genes(adatas: Sequence[AnnData]) -> list[str]:
    """Genes present in every AnnData, in the order of the first one."""
    if not adatas:
        raise ValueError("no AnnData given")
    common = set(adatas[0].var_names)
    for adata in adatas[1:]:
        common &= set(adata.var_names)
    genes = [gene for gene in adatas[0].var_names if gene in common]
    if not genes:
        raise ValueError(
            "the inputs share no gene names; check that all use the same gene symbols "
            "(var_names), e.g. not symbols in one and Ensembl ids in another"
        )
    return genes


def select_genes(adata: AnnData, genes: Sequence[str], layer: str | None = None) -> sp.csr_matrix:
    """Counts of ``adata`` restricted to ``genes`` (in that order), as CSR."""
    columns = adata.var_names.get_indexer(list(genes))
    if np.any(columns < 0):
        missing = [g for g, c in zip(genes, columns, strict=True) if c < 0][:5]
        raise ValueError(f"genes missing from the AnnData, e.g. {missing}")
    return count_matrix(adata, layer)[:, columns].tocsr()


def log_normalise_sparse(counts: sp.spmatrix, target_sum: float = TARGET_SUM) -> sp.csr_matrix:
    """log1p of counts scaled to ``target_sum`` per cell, kept sparse; empty cells stay zero."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    # cells with no counts stay all-zero instead of dividing by zero
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    normalised = sp.diags(scale) @ counts
    normalised = sp.csr_matrix(normalised)
    normalised.data = np.log1p(normalised.data)
    normalised.eliminate_zeros()
    return normalised.astype(np.float32)


def log_normalise(counts: sp.spmatrix | np.ndarray, target_sum: float = TARGET_SUM) -> np.ndarray:
    """Dense float32 log1p of counts scaled to ``target_sum`` per cell (zero cells stay zero)."""
    return log_normalise_sparse(sp.csr_matrix(counts), target_sum).toarray()


def detected_genes(matrices: Sequence[sp.spmatrix]) -> np.ndarray:
    """Boolean mask of columns that are non-zero in at least one row of any matrix."""
    detected = np.zeros(matrices[0].shape[1], dtype=bool)
    for matrix in matrices:
        detected |= np.asarray((matrix != 0).sum(axis=0)).ravel() > 0
    return detected


def preprocess(
    adatas: dict[str, AnnData],
    layer: str | None = None,
    detection_reference: Sequence[str] | None = None,
    target_sum: float = TARGET_SUM,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Check, align and log-normalise several AnnData at once.

    Returns dense float32 matrices (same keys as ``adatas``) over the shared genes, and the gene
    list. Cells are normalised over the shared genes, so that differing gene panels do not shift
    library sizes. If ``detection_reference`` names some inputs (e.g. the real cells), genes with
    no count in any of them are then dropped: undetected genes only dilute per-gene averages
    and would make the score depend on how many empty genes a file happens to carry.
    """
    for name, adata in adatas.items():
        check_counts(adata, name, layer)
    genes = shared_genes(list(adatas.values()))
    counts = {name: select_genes(adata, genes, layer) for name, adata in adatas.items()}
    normalised = {name: log_normalise_sparse(m, target_sum) for name, m in counts.items()}
    if detection_reference:
        keep = detected_genes([counts[name] for name in detection_reference])
        if not keep.any():
            raise ValueError("no shared gene has a non-zero count in the real cells")
        genes = [gene for gene, k in zip(genes, keep, strict=True) if k]
        normalised = {name: m[:, keep] for name, m in normalised.items()}
    return {name: m.toarray() for name, m in normalised.items()}, genes
