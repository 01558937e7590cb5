import numpy as np
import pytest
import torch

from lingshu.data.io import read_counts
from lingshu.data.shards import ShardedCells
from lingshu.training.run import train


@pytest.fixture
def shard_dir(tmp_path, counts_adata):
    folder = tmp_path / "shards"
    folder.mkdir()
    for i, (start, stop) in enumerate([(0, 10), (10, 41), (41, 64)]):
        counts_adata[start:stop].copy().write_h5ad(folder / f"part{i}.h5ad")
    counts_adata.write_h5ad(tmp_path / "whole.h5ad")
    return folder


def test_shards_read_as_one_backed_dataset_in_any_row_order(shard_dir, counts_adata):
    cells = read_counts(shard_dir)
    assert cells.isbacked and cells.shape == counts_adata.shape
    assert list(cells.obs_names) == list(counts_adata.obs_names)
    rows = np.array([63, 0, 12, 11, 40, 41, 5])
    np.testing.assert_array_equal(cells.X[rows].toarray(), counts_adata.X[rows].toarray())
    np.testing.assert_array_equal(cells.X[8:45].toarray(), counts_adata.X[8:45].toarray())
    with pytest.raises(IndexError):
        cells.X[np.array([64])]


def test_training_on_shards_equals_training_on_the_whole_backed_file(shard_dir, tmp_path):
    options = dict(preset="tiny", train_overrides={"max_steps": 3, "batch_size": 8}, progress=False)
    a = train(read_counts(shard_dir), tmp_path / "a", **options)
    b = train(read_counts(tmp_path / "whole.h5ad", backed=True), tmp_path / "b", **options)
    for name, value in a.model_state.items():
        torch.testing.assert_close(value, b.model_state[name], rtol=0, atol=0)


def test_bad_shard_directories_are_explained(tmp_path, counts_adata):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no .h5ad shards"):
        ShardedCells(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    counts_adata[:10].copy().write_h5ad(mixed / "a.h5ad")
    counts_adata[10:20, ::-1].copy().write_h5ad(mixed / "b.h5ad")
    with pytest.raises(ValueError, match="b.h5ad has other genes"):
        ShardedCells(mixed)
