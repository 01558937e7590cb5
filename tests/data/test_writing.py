import anndata as ad
import numpy as np
import pytest

from lingshu.data.writing import atomic_path, atomic_write_text, write_h5ad_atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_partial(tmp_path):
    target = atomic_write_text(tmp_path / "report.md", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_h5ad_round_trip(tmp_path):
    adata = ad.AnnData(np.arange(6, dtype=np.int32).reshape(2, 3))
    path = write_h5ad_atomic(adata, tmp_path / "sub" / "cells.h5ad")
    np.testing.assert_array_equal(ad.read_h5ad(path).X, adata.X)
    assert [p.name for p in path.parent.iterdir()] == ["cells.h5ad"]
