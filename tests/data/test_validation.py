import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from lingshu.data.io import read_counts
from lingshu.data.validation import CountsValidationError, validate_counts


def test_valid_integer_counts_pass_dense_and_sparse(counts_adata):
    validate_counts(counts_adata.X)
    validate_counts(counts_adata.X.toarray())
    validate_counts(counts_adata.X.astype(np.float32))  # float storage of integers is fine


def test_log_normalised_input_is_named_as_such(counts_adata):
    logged = np.log1p(counts_adata.X.toarray().astype(float))
    with pytest.raises(CountsValidationError, match="log1p-normalised"):
        validate_counts(logged)


def test_normalised_large_values_are_rejected(counts_adata):
    scaled = counts_adata.X.toarray() * 37.3
    with pytest.raises(CountsValidationError, match="non-integer"):
        validate_counts(scaled)


def test_negative_values_are_rejected(counts_adata):
    x = counts_adata.X.toarray().astype(float)
    x[0, 0] = -1
    with pytest.raises(CountsValidationError, match="negative"):
        validate_counts(x)


def test_nan_is_rejected(counts_adata):
    x = counts_adata.X.toarray().astype(float)
    x[1, 2] = np.nan
    with pytest.raises(CountsValidationError, match="NaN"):
        validate_counts(sp.csr_matrix(x))


@pytest.mark.parametrize("shape", [(0, 5), (5, 0)])
def test_empty_matrices_are_rejected(shape):
    with pytest.raises(CountsValidationError, match="no cells|no genes"):
        validate_counts(np.zeros(shape))


def test_all_zero_matrix_is_rejected():
    with pytest.raises(CountsValidationError, match="only zeros"):
        validate_counts(sp.csr_matrix((4, 3), dtype=np.int32))


def test_layer_name_appears_in_the_message(counts_adata):
    with pytest.raises(CountsValidationError, match="layer 'counts'"):
        validate_counts(np.log1p(counts_adata.X.toarray().astype(float)), layer="counts")


def test_read_counts_from_layer_and_backed(tmp_path, counts_adata):
    counts_adata.layers["counts"] = counts_adata.X.copy()
    counts_adata.X = sp.csr_matrix(np.log1p(counts_adata.X.toarray().astype(np.float32)))
    path = tmp_path / "cells.h5ad"
    counts_adata.write_h5ad(path)
    with pytest.raises(CountsValidationError, match="log1p"):
        read_counts(path)
    adata = read_counts(path, layer="counts")
    assert adata.X.sum() == counts_adata.layers["counts"].sum()
    with pytest.raises(CountsValidationError, match="layer 'raw' not found"):
        read_counts(path, layer="raw")


def test_backed_read_validates_without_loading(tmp_path, counts_adata):
    path = tmp_path / "cells.h5ad"
    counts_adata.write_h5ad(path)
    adata = read_counts(path, backed=True)
    assert adata.isbacked


def test_missing_and_empty_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_counts(tmp_path / "absent.h5ad")
    empty = tmp_path / "empty.h5ad"
    empty.write_bytes(b"")
    with pytest.raises(CountsValidationError, match="empty"):
        read_counts(empty)
    garbage = tmp_path / "garbage.h5ad"
    garbage.write_text("not hdf5")
    with pytest.raises(CountsValidationError, match="not a readable"):
        read_counts(garbage)


def test_gene_less_anndata_is_rejected(tmp_path):
    adata = ad.AnnData(X=sp.csr_matrix((3, 0), dtype=np.int32))
    path = tmp_path / "nogenes.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(CountsValidationError, match="no genes"):
        read_counts(path)
