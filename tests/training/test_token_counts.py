import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from lingshu.data.loader import AlignedCounts
from lingshu.data.vocabulary import GeneVocabulary
from lingshu.training.token_counts import token_counts


def test_a_width_keeps_the_low_tokens_and_counts_the_tail_in_one_column():
    counts = np.array([[0, 1], [2, 7], [1, 150], [0, 0]])
    adata = ad.AnnData(X=sp.csr_matrix(counts), var=pd.DataFrame(index=["A", "B"]))
    data = AlignedCounts(adata, GeneVocabulary.from_adata(adata, min_cells=0).align(adata))
    table = token_counts(data, np.array([0, 0, 1, -1]), n_groups=2, width=2, chunk_size=3).numpy()
    # gene A: group 0 saw 0 and 2 (tail), group 1 saw 1; gene B: group 0 saw 1 and 7, group 1 saw 150
    np.testing.assert_array_equal(table[0], [[1, 0, 1], [0, 1, 1]])
    np.testing.assert_array_equal(table[1], [[0, 1, 0], [0, 0, 1]])


def test_full_tables_count_every_token_of_each_group():
    counts = np.array([[0, 3], [0, 3], [150, 0]])
    adata = ad.AnnData(X=sp.csr_matrix(counts), var=pd.DataFrame(index=["A", "B"]))
    data = AlignedCounts(adata, GeneVocabulary.from_adata(adata, min_cells=0).align(adata))
    table = token_counts(data, np.array([0, 0, 0]), n_groups=1).numpy()[0]
    assert table.shape == (2, 281) and table.sum() == 6
    assert table[0, 0] == 2 and table[0, 105] == 1 and table[1, 3] == 2 and table[1, 0] == 1
