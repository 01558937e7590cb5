import numpy as np

from lingshu.data.loader import AlignedCounts, epoch_order
from lingshu.data.vocabulary import GeneVocabulary


def test_rows_follow_vocabulary_order_with_unobserved_genes_zero(counts_adata):
    vocab = GeneVocabulary(["GENE2", "MISSING", "GENE7"])
    data = AlignedCounts(counts_adata, vocab.align(counts_adata))
    rows = data.rows(np.array([5, 1, 9]))
    dense = counts_adata.X.toarray()
    np.testing.assert_array_equal(rows[:, 0], dense[[5, 1, 9], 2])
    np.testing.assert_array_equal(rows[:, 2], dense[[5, 1, 9], 7])
    assert (rows[:, 1] == 0).all() and not data.observed[1]


def test_backed_rows_equal_in_memory_rows(tmp_path, counts_adata):
    import anndata as ad

    path = tmp_path / "cells.h5ad"
    counts_adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    vocab = GeneVocabulary.from_adata(counts_adata)
    idx = np.array([30, 2, 17, 2])
    np.testing.assert_array_equal(
        AlignedCounts(backed, vocab.align(backed)).rows(idx),
        AlignedCounts(counts_adata, vocab.align(counts_adata)).rows(idx),
    )


def test_epoch_orders_are_permutations_and_reproducible():
    for block in (1, 7):
        order = epoch_order(100, seed=3, epoch=2, block_size=block)
        np.testing.assert_array_equal(np.sort(order), np.arange(100))
        np.testing.assert_array_equal(order, epoch_order(100, seed=3, epoch=2, block_size=block))
        assert not np.array_equal(order, epoch_order(100, seed=3, epoch=3, block_size=block))


def test_batches_resume_at_any_step(counts_adata):
    data = AlignedCounts(counts_adata, GeneVocabulary.from_adata(counts_adata).align(counts_adata))
    straight = [idx for _, (_, idx, _) in zip(range(7), data.iter_batches(10, seed=1))]
    resumed = [idx for _, (_, idx, _) in zip(range(3), data.iter_batches(10, seed=1, start_step=4))]
    for a, b in zip(straight[4:], resumed):
        np.testing.assert_array_equal(a, b)
