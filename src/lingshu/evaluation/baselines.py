"""Generation baselines: simple generators that set the floor (and one control) for the model.

Each baseline takes the training AnnData (raw integer counts in ``X``), a number of cells and a
seed, and returns new cells as integer counts (CSR) over the same genes, with provenance in
``uns['lingshu_baseline']``. They are looked up by name in :data:`GENERATION_BASELINES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from lingshu.evaluation.preprocess import check_counts, count_matrix

CELL_TYPE_KEY = "cell_type"
MIN_DISPERSION = 0.01
MAX_DEPTH_BINS = 8
SCVI_INSTALL_HINT = "pip install 'lingshu-cell[baselines]'"

Baseline = Callable[[AnnData, int, int], AnnData]


def _new_cells(
    train: AnnData, counts: sp.spmatrix, name: str, seed: int, labels: np.ndarray | None = None
) -> AnnData:
    """Wrap generated counts as AnnData over the training genes, with provenance."""
    obs = pd.DataFrame(index=[f"{name}-{i}" for i in range(counts.shape[0])])
    if labels is not None:
        obs[CELL_TYPE_KEY] = pd.Categorical(np.asarray(labels, dtype=object).astype(str))
    adata = AnnData(X=sp.csr_matrix(counts, dtype=np.int32), obs=obs, var=pd.DataFrame(index=train.var_names))
    adata.uns["lingshu_baseline"] = {
        "name": name,
        "seed": int(seed),
        "n_train_cells": int(train.n_obs),
    }
    return adata


def _training_counts(train: AnnData, n_cells: int) -> sp.csr_matrix:
    check_counts(train, "training cells")
    if n_cells < 1:
        raise ValueError(f"n_cells must be >= 1, got {n_cells}")
    return count_matrix(train)


def _training_labels(train: AnnData) -> np.ndarray:
    if CELL_TYPE_KEY not in train.obs:
        raise ValueError(f"this baseline needs obs[{CELL_TYPE_KEY!r}] on the training cells")
    labels = train.obs[CELL_TYPE_KEY].astype(object)
    return labels.where(labels.notna(), "unassigned").astype(str).to_numpy()


def independent_genes(train: AnnData, n_cells: int, seed: int = 0) -> AnnData:
    """Each gene of each new cell drawn independently from that gene's training values.

    Keeps every per-gene marginal and destroys all gene-gene structure (cell types included).
    Sparse and exact: a gene is non-zero with probability nnz/N, and then takes one of its
    non-zero training values uniformly, which is the same as picking a random training cell.
    """
    counts = _training_counts(train, n_cells).tocsc()
    rng = np.random.default_rng(seed)
    n_train = counts.shape[0]
    rows, cols, values = [], [], []
    for gene in np.flatnonzero(np.diff(counts.indptr)):
        nonzero = counts.data[counts.indptr[gene] : counts.indptr[gene + 1]]
        k = rng.binomial(n_cells, nonzero.size / n_train)
        if k == 0:
            continue
        rows.append(rng.choice(n_cells, size=k, replace=False))
        cols.append(np.full(k, gene))
        values.append(rng.choice(nonzero, size=k, replace=True))
    if rows:
        data = (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols)))
        generated = sp.coo_matrix(data, shape=(n_cells, counts.shape[1])).tocsr()
    else:
        generated = sp.csr_matrix((n_cells, counts.shape[1]))
    return _new_cells(train, generated, "independent_genes", seed)


def library_size_bins(
    library_sizes: np.ndarray, labels: np.ndarray, max_bins: int = MAX_DEPTH_BINS
) -> np.ndarray:
    """Equal-frequency library-size bin of every cell within its label (0 = shallowest).

    A label with n cells gets min(max_bins, n // 2) bins (at least 1), so every bin holds at
    least two cells. Cells are ranked by library size (ties in cell order) and cut into bins
    of equal count; quantile edges would leave empty bins where many cells share a size.
    """
    library_sizes = np.asarray(library_sizes)
    labels = np.asarray(labels)
    bins = np.zeros(labels.size, dtype=np.int64)
    for label in np.unique(labels):
        cells = np.flatnonzero(labels == label)
        n_bins = max(1, min(max_bins, cells.size // 2))
        order = cells[np.argsort(library_sizes[cells], kind="stable")]
        bins[order] = np.arange(cells.size) * n_bins // cells.size
    return bins


def resample_genes_independently(
    counts: sp.spmatrix,
    n_cells: int,
    rng: np.random.Generator,
    cell_block: int = 512,
    gene_block: int = 2048,
) -> sp.csr_matrix:
    """``n_cells`` cells whose every gene value is copied from an independently drawn row.

    Dense work is bounded to ``counts.shape[0] x gene_block`` (one column block of the
    source) plus ``cell_block x gene_block`` (the draws), whatever ``n_cells`` is.
    """
    source = sp.csc_matrix(counts)
    n_source, n_genes = source.shape
    pieces: list[list[sp.csr_matrix]] = [[] for _ in range(0, n_cells, cell_block)]
    for gene_start in range(0, n_genes, gene_block):
        columns = source[:, gene_start : gene_start + gene_block].toarray()
        for i, cell_start in enumerate(range(0, n_cells, cell_block)):
            size = min(cell_block, n_cells - cell_start)
            rows = rng.integers(0, n_source, size=(size, columns.shape[1]))
            pieces[i].append(sp.csr_matrix(np.take_along_axis(columns, rows, axis=0)))
    if not pieces:
        return sp.csr_matrix((0, n_genes), dtype=source.dtype)
    return sp.vstack([sp.hstack(row, format="csr") for row in pieces], format="csr")


def independent_genes_by_group(
    train: AnnData, n_cells: int, seed: int = 0, max_depth_bins: int = MAX_DEPTH_BINS
) -> AnnData:
    """:func:`independent_genes` within each (cell type, library-size bin) group.

    Groups are the cell types crossed with equal-frequency library-size bins within each type
    (:func:`library_size_bins`). New cells get groups in their training proportions and each of
    their genes is copied from an independently drawn training cell of that group: a lookup
    table that keeps cell types and sequencing depth but no other gene-gene structure. The
    depth bin goes to ``obs['depth_bin']`` next to ``obs['cell_type']``.
    """
    if max_depth_bins < 1:
        raise ValueError(f"max_depth_bins must be >= 1, got {max_depth_bins}")
    counts = _training_counts(train, n_cells)
    labels = _training_labels(train)
    bins = library_size_bins(np.asarray(counts.sum(axis=1)).ravel(), labels, max_depth_bins)
    rng = np.random.default_rng(seed)
    # the group of a uniformly drawn training cell: groups in training proportions
    drawn = rng.integers(0, counts.shape[0], size=n_cells)
    groups = np.unique(labels, return_inverse=True)[1].ravel() * max_depth_bins + bins
    blocks, order = [], []
    for group in np.unique(groups[drawn]):
        cells = np.flatnonzero(groups[drawn] == group)
        blocks.append(resample_genes_independently(counts[groups == group], cells.size, rng))
        order.append(cells)
    generated = sp.vstack(blocks).tocsr()[np.argsort(np.concatenate(order))]
    result = _new_cells(train, generated, "independent_genes_by_group", seed, labels[drawn])
    result.obs["depth_bin"] = bins[drawn]
    result.uns["lingshu_baseline"]["max_depth_bins"] = int(max_depth_bins)
    return result


def negative_binomial_moments(
    counts: sp.spmatrix, min_dispersion: float = MIN_DISPERSION
) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and NB dispersion phi (var = mu + phi mu^2) by the method of moments.

    phi is floored at ``min_dispersion`` so that every gene stays overdispersed (a Poisson
    generator is under-dispersed and gets called differentially expressed against real cells).
    """
    counts = sp.csr_matrix(counts, dtype=np.float64)
    n = counts.shape[0]
    mean = np.asarray(counts.mean(axis=0)).ravel()
    mean_sq = np.asarray(counts.multiply(counts).mean(axis=0)).ravel()
    var = (mean_sq - mean**2) * (n / (n - 1) if n > 1 else 1.0)
    excess = np.divide(var - mean, mean**2, out=np.zeros_like(mean), where=mean > 0)
    return mean, np.maximum(excess, min_dispersion)


def _sample_expressed(
    mean: np.ndarray, n_cells: int, draw: Callable[[int], np.ndarray], block_size: int = 1024
) -> sp.csr_matrix:
    """``n_cells`` cells over the genes of ``mean``: genes with mean 0 stay 0, and
    ``draw(size)`` gives the (size, n expressed genes) counts of the others, ``block_size`` cells
    at a time so the dense draw stays bounded."""
    expressed = np.flatnonzero(mean > 0)
    blocks = []
    for start in range(0, n_cells, block_size):
        size = min(block_size, n_cells - start)
        block = sp.csr_matrix(draw(size))
        blocks.append(
            sp.csr_matrix((block.data, expressed[block.indices], block.indptr), shape=(size, mean.size))
        )
    if not blocks:
        return sp.csr_matrix((0, mean.size), dtype=np.int64)
    return sp.vstack(blocks).tocsr()


def sample_negative_binomial(
    mean: np.ndarray, phi: np.ndarray, n_cells: int, rng: np.random.Generator, block_size: int = 1024
) -> sp.csr_matrix:
    """Draw ``n_cells`` cells of independent per-gene NB counts (mean ``mean``, var mu + phi mu^2).

    Genes with mean 0 stay 0; the dense draw is bounded to ``block_size`` cells at a time.
    """
    mean = np.asarray(mean, dtype=np.float64)
    expressed = mean > 0
    theta = 1.0 / np.asarray(phi, dtype=np.float64)[expressed]
    p = theta / (theta + mean[expressed])
    return _sample_expressed(
        mean, n_cells, lambda size: rng.negative_binomial(theta, p, size=(size, theta.size)), block_size
    )


def _per_celltype(
    train: AnnData,
    n_cells: int,
    seed: int,
    name: str,
    draw: Callable[[sp.csr_matrix, int, np.random.Generator], sp.csr_matrix],
) -> AnnData:
    """New cells with types drawn in their training proportions, each type's cells drawn by
    ``draw(that type's training counts, number of cells, rng)``; types in ``obs['cell_type']``."""
    counts = _training_counts(train, n_cells)
    labels = _training_labels(train)
    rng = np.random.default_rng(seed)
    types, type_counts = np.unique(labels, return_counts=True)
    drawn = rng.choice(types, size=n_cells, p=type_counts / type_counts.sum())
    blocks, order = [], []
    for cell_type in types:
        cells = np.flatnonzero(drawn == cell_type)
        if cells.size == 0:
            continue
        blocks.append(draw(counts[labels == cell_type], cells.size, rng))
        order.append(cells)
    generated = sp.vstack(blocks).tocsr()[np.argsort(np.concatenate(order))]
    return _new_cells(train, generated, name, seed, drawn)


def celltype_negative_binomial(
    train: AnnData, n_cells: int, seed: int = 0, min_dispersion: float = MIN_DISPERSION
) -> AnnData:
    """Per cell type and gene, an overdispersed negative binomial fitted by moments.

    Cell types are drawn in their training proportions and written to ``obs['cell_type']``.
    Genes are independent given the type, so within-type correlation is lost.
    """

    def draw(counts: sp.csr_matrix, size: int, rng: np.random.Generator) -> sp.csr_matrix:
        mean, phi = negative_binomial_moments(counts, min_dispersion)
        return sample_negative_binomial(mean, phi, size, rng)

    return _per_celltype(train, n_cells, seed, "celltype_negative_binomial", draw)


def celltype_poisson(train: AnnData, n_cells: int, seed: int = 0) -> AnnData:
    """Per cell type and gene, a Poisson with the type's mean count: the simplest cell-type-aware
    generator. Under-dispersed against real cells (no library-size or state variation within a
    type), which :func:`celltype_negative_binomial` adds back."""

    def draw(counts: sp.csr_matrix, size: int, rng: np.random.Generator) -> sp.csr_matrix:
        mean = np.asarray(counts.mean(axis=0), dtype=np.float64).ravel()
        rates = mean[mean > 0]
        return _sample_expressed(mean, size, lambda block: rng.poisson(rates, size=(block, rates.size)))

    return _per_celltype(train, n_cells, seed, "celltype_poisson", draw)


def copy_training(train: AnnData, n_cells: int, seed: int = 0) -> AnnData:
    """Training cells sampled with replacement: a control the memorisation metric must flag."""
    counts = _training_counts(train, n_cells)
    rng = np.random.default_rng(seed)
    index = rng.choice(counts.shape[0], size=n_cells, replace=True)
    labels = _training_labels(train)[index] if CELL_TYPE_KEY in train.obs else None
    return _new_cells(train, counts[index], "copy_training", seed, labels)


def scvi(
    train: AnnData,
    n_cells: int,
    seed: int = 0,
    max_epochs: int | None = None,
    n_latent: int = 10,
    gene_likelihood: str = "zinb",
    sample_batch_size: int = 1024,
) -> AnnData:
    """scVI (scvi-tools) trained on the training counts, sampling NEW cells from its prior.

    z ~ N(0, I), a library size drawn from the observed training library sizes, decoded by the
    generative network and sampled from its ZINB (or NB) likelihood. This is generation, not
    reconstruction of existing cells. Genes with no training count are not modelled and stay 0.
    ``max_epochs=None`` uses scvi-tools' own default (400 epochs below 20,000 cells): short runs
    leave the per-gene dispersions near their initial value (theta ~1), and the sampled cells are
    then far noisier than real ones. Needs ``pip install 'lingshu-cell[baselines]'``.
    """
    try:
        import scvi as scvi_tools
        import torch
    except ImportError as error:
        raise ImportError(f"the scVI baseline needs scvi-tools: {SCVI_INSTALL_HINT}") from error
    counts = _training_counts(train, n_cells)
    detected = np.asarray((counts != 0).sum(axis=0)).ravel() > 0
    adata = AnnData(X=counts[:, detected].astype(np.float32))
    scvi_tools.settings.seed = seed
    scvi_tools.model.SCVI.setup_anndata(adata)
    model = scvi_tools.model.SCVI(adata, n_latent=n_latent, gene_likelihood=gene_likelihood)
    model.train(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )
    module = model.module.eval()
    rng = np.random.default_rng(seed)
    library_sizes = np.asarray(counts.sum(axis=1)).ravel()
    library_sizes = library_sizes[library_sizes > 0]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the likelihood's sample() draws from torch's global generator
    blocks = []
    with torch.no_grad():
        for start in range(0, n_cells, sample_batch_size):
            size = min(sample_batch_size, n_cells - start)
            z = torch.randn(size, module.n_latent, generator=generator)
            library = torch.as_tensor(np.log(rng.choice(library_sizes, size=size)), dtype=torch.float32)[
                :, None
            ]
            batch_index = torch.zeros(size, 1, dtype=torch.long)
            px = module.generative(z=z, library=library, batch_index=batch_index)["px"]
            blocks.append(sp.csr_matrix(px.sample().numpy().round().astype(np.int64)))
    sampled = sp.vstack(blocks).tocsr()
    generated = sp.csr_matrix(
        (sampled.data, np.flatnonzero(detected)[sampled.indices], sampled.indptr),
        shape=(n_cells, counts.shape[1]),
    )
    result = _new_cells(train, generated, "scvi", seed)
    result.uns["lingshu_baseline"].update(
        epochs_trained=int(model.trainer.current_epoch),
        n_latent=int(n_latent),
        gene_likelihood=gene_likelihood,
    )
    return result


GENERATION_BASELINES: dict[str, Baseline] = {
    "independent_genes": independent_genes,
    "independent_genes_by_group": independent_genes_by_group,
    "celltype_poisson": celltype_poisson,
    "celltype_negative_binomial": celltype_negative_binomial,
    "copy_training": copy_training,
    "scvi": scvi,
}


def run_baselines(
    train: AnnData,
    names: Sequence[str],
    n_cells: int,
    seed: int = 0,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, AnnData]:
    """Run the named baselines; unknown names raise ``KeyError`` listing the known ones.

    ``options[name]`` holds extra keyword arguments of one baseline (e.g. scvi's max_epochs).
    """
    unknown = [name for name in names if name not in GENERATION_BASELINES]
    if unknown:
        raise KeyError(f"unknown baselines {unknown}; choose from {', '.join(GENERATION_BASELINES)}")
    options = options or {}
    return {name: GENERATION_BASELINES[name](train, n_cells, seed, **options.get(name, {})) for name in names}
