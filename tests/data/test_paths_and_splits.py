import pytest

from lingshu.data.io import read_counts
from lingshu.data.paths import DATASETS, data_dir, dataset_path, file_sha256
from lingshu.data.splits import apply_cell_split, load_split, make_cell_split


def test_environment_variable_sets_the_data_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("LINGSHU_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError, match="pbmc3k"):
        dataset_path("pbmc4k")


def test_missing_dataset_without_download_says_where_to_put_it(monkeypatch, tmp_path):
    monkeypatch.setenv("LINGSHU_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="LINGSHU_DATA_DIR"):
        dataset_path("kang2018", download=False)


def test_shared_pbmc3k_matches_registered_checksum(pbmc3k_path):
    assert file_sha256(pbmc3k_path) == DATASETS["pbmc3k"].sha256


def test_shipped_pbmc3k_split_is_a_fixed_20_percent(pbmc3k_path):
    adata = read_counts(pbmc3k_path, backed=True)
    split = load_split("pbmc3k_cells")
    assert split == make_cell_split(adata.obs_names, 0.2, seed=0, dataset="pbmc3k")
    train, held = apply_cell_split(adata.to_memory(), split)
    assert (train.n_obs, held.n_obs) == (2160, 540)
    assert not set(train.obs_names) & set(held.obs_names)


def test_unknown_split_lists_shipped_ones():
    with pytest.raises(FileNotFoundError, match="pbmc3k_cells"):
        load_split("nope")


def test_resolve_data_takes_a_file_or_a_registered_name(tmp_path):
    from lingshu.data.paths import resolve_data

    path = tmp_path / "cells.h5ad"
    path.write_bytes(b"x")
    assert resolve_data(str(path)) == path
    with pytest.raises(FileNotFoundError, match="pbmc3k"):
        resolve_data("not_a_file_or_dataset")
