import numpy as np
import pytest
import scipy.sparse as sp

from lingshu.data.vocabulary import GeneVocabulary


def test_vocabulary_from_detected_genes(counts_adata):
    dense = counts_adata.X.toarray()
    dense[:, 3] = 0
    dense[:, 4] = 0
    dense[:2, 4] = 1  # detected in exactly two cells
    counts_adata.X = sp.csr_matrix(dense)
    detected = {g for g, n in zip(counts_adata.var_names, (dense > 0).sum(0)) if n >= 1}
    vocab = GeneVocabulary.from_adata(counts_adata)
    assert "GENE3" not in vocab.genes and set(vocab.genes) == detected
    assert (
        "GENE4" in vocab.genes and "GENE4" not in GeneVocabulary.from_adata(counts_adata, min_cells=3).genes
    )


def test_alignment_reorders_and_marks_missing_genes_unobserved(counts_adata):
    vocab = GeneVocabulary(["GENE5", "NOT_MEASURED", "GENE0"])
    alignment = vocab.align(counts_adata)
    np.testing.assert_array_equal(alignment.columns, [5, -1, 0])
    np.testing.assert_array_equal(alignment.observed, [True, False, True])
    aligned = alignment.take(counts_adata.X).toarray()
    np.testing.assert_array_equal(aligned[:, 0], counts_adata.X[:, 5].toarray().ravel())
    np.testing.assert_array_equal(aligned[:, 2], counts_adata.X[:, 0].toarray().ravel())
    report = alignment.report()
    assert "2 of 3 vocabulary genes matched" in report
    assert (
        "1 missing" in report and f"{counts_adata.n_vars - 2} dataset genes not in the vocabulary" in report
    )


def test_alignment_falls_back_to_ensembl_ids(counts_adata):
    counts_adata.var["gene_ids"] = [f"ENSG{i:05d}" for i in range(counts_adata.n_vars)]
    vocab = GeneVocabulary(["OLD_SYMBOL", "GENE1"], ensembl_ids=["ENSG00002", "ENSG00001"])
    np.testing.assert_array_equal(vocab.align(counts_adata).columns, [2, 1])


def test_duplicates_are_rejected(counts_adata):
    with pytest.raises(ValueError, match="duplicate"):
        GeneVocabulary(["A", "A"])
    counts_adata.var_names = ["X"] * counts_adata.n_vars
    with pytest.raises(ValueError, match="var_names_make_unique"):
        GeneVocabulary(["X"]).align(counts_adata)


def test_round_trip_through_dict():
    vocab = GeneVocabulary(["A", "B"], ["E1", "E2"])
    assert GeneVocabulary.from_dict(vocab.to_dict()) == vocab
