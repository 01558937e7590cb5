import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from lingshu.evaluation.preprocess import (
    check_counts,
    log_normalise,
    preprocess,
    shared_genes,
)


def _adata(matrix, genes, layer=None) -> AnnData:
    matrix = np.asarray(matrix)
    adata = AnnData(
        X=sp.csr_matrix(matrix),
        var=pd.DataFrame(index=genes),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(matrix.shape[0])]),
    )
    if layer:
        adata.layers[layer] = adata.X.copy()
        adata.X = sp.csr_matrix(np.log1p(matrix))
    return adata


def test_shared_genes_keep_the_order_of_the_first_input():
    a = _adata([[1, 2, 3, 4]], ["D", "B", "A", "C"])
    b = _adata([[1, 2, 3]], ["A", "B", "D"])
    assert shared_genes([a, b]) == ["D", "B", "A"]


def test_no_shared_gene_is_a_clear_error():
    a = _adata([[1, 2]], ["A", "B"])
    b = _adata([[1, 2]], ["ENSG1", "ENSG2"])
    with pytest.raises(ValueError, match="share no gene"):
        shared_genes([a, b])


def test_log_normalise_scales_each_cell_to_10k_and_keeps_empty_cells_zero():
    counts = np.array([[1, 3, 0], [0, 0, 0], [10, 10, 80]])
    out = log_normalise(sp.csr_matrix(counts))
    assert out.dtype == np.float32 and isinstance(out, np.ndarray)
    np.testing.assert_allclose(np.expm1(out).sum(axis=1), [1e4, 0, 1e4], rtol=1e-5)
    np.testing.assert_allclose(out[0], np.log1p([2500, 7500, 0]), rtol=1e-6)
    assert np.all(out[1] == 0)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([[0.5, 1.0], [2.0, 0.0]], "non-integer"),
        ([[1, -1], [2, 0]], "negative"),
        ([[np.nan, 1.0], [2.0, 0.0]], "NaN"),
    ],
)
def test_check_counts_rejects_bad_values(matrix, message):
    with pytest.raises(ValueError, match=message):
        check_counts(_adata(matrix, ["A", "B"]), "real")


def test_check_counts_accepts_integer_valued_floats():
    check_counts(_adata(np.array([[1.0, 0.0], [3.0, 2.0]]), ["A", "B"]), "real")


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_check_counts_rejects_duplicate_gene_names():
    with pytest.raises(ValueError, match="not unique"):
        check_counts(_adata([[1, 2]], ["A", "A"]), "real")


def test_check_counts_reads_a_named_layer():
    adata = _adata([[1, 2], [3, 0]], ["A", "B"], layer="counts")
    with pytest.raises(ValueError, match="non-integer"):
        check_counts(adata, "real")
    check_counts(adata, "real", layer="counts")


def test_preprocess_normalises_over_shared_genes_and_drops_undetected_ones():
    real = _adata([[2, 2, 0, 5], [1, 3, 0, 0]], ["A", "B", "C", "X"])
    generated = _adata([[4, 0, 6], [0, 0, 0]], ["C", "B", "A"])
    matrices, genes = preprocess({"real": real, "generated": generated}, detection_reference=["real"])
    # C is shared but never detected in the real cells; X is not shared
    assert genes == ["A", "B"]
    # the generated cell is normalised over the shared genes A, B, C (6 + 0 + 4 counts)
    np.testing.assert_allclose(matrices["generated"][0], np.log1p([6000, 0]), rtol=1e-6)
    np.testing.assert_allclose(matrices["real"][0], np.log1p([5000, 5000]), rtol=1e-6)
    assert np.all(matrices["generated"][1] == 0)


def test_preprocess_names_the_bad_input():
    real = _adata([[2, 2]], ["A", "B"])
    generated = _adata([[0.3, 1.7]], ["A", "B"])
    with pytest.raises(ValueError, match="generated 'model'"):
        preprocess({"real": real, "generated 'model'": generated})
