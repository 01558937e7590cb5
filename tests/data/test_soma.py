import numpy as np
import pytest
import torch

from lingshu.data.io import read_counts
from lingshu.data.soma import SomaCells, is_soma_experiment
from lingshu.training.run import train

soma_io = pytest.importorskip(
    "tiledbsoma.io", reason="needs the large extra: pip install 'lingshu-cell[large]'"
)


@pytest.fixture
def experiment(tmp_path, counts_adata):
    uri = tmp_path / "experiment"
    soma_io.from_anndata(str(uri), counts_adata, measurement_name="RNA")
    counts_adata.write_h5ad(tmp_path / "whole.h5ad")
    return uri


def test_a_soma_experiment_reads_like_the_anndata_it_came_from(experiment, counts_adata):
    assert is_soma_experiment(experiment) and not is_soma_experiment(experiment.parent)
    cells = read_counts(experiment)
    assert isinstance(cells, SomaCells) and cells.isbacked and cells.shape == counts_adata.shape
    assert list(cells.obs_names) == list(counts_adata.obs_names)
    assert list(cells.var_names) == list(counts_adata.var_names)
    assert list(cells.obs["cell_type"].astype(str)) == list(counts_adata.obs["cell_type"].astype(str))
    rows = np.array([63, 0, 12, 12, 40])  # any order, repeats allowed (sampling with replacement)
    np.testing.assert_array_equal(cells.X[rows].toarray(), counts_adata.X[rows].toarray())
    np.testing.assert_array_equal(cells.X[5:50].toarray(), counts_adata.X[5:50].toarray())


def test_training_from_soma_equals_training_on_the_backed_file(experiment, tmp_path):
    options = dict(preset="tiny", train_overrides={"max_steps": 3, "batch_size": 8}, progress=False)
    a = train(read_counts(experiment), tmp_path / "a", **options)
    b = train(read_counts(tmp_path / "whole.h5ad", backed=True), tmp_path / "b", **options)
    for name, value in a.model_state.items():
        torch.testing.assert_close(value, b.model_state[name], rtol=0, atol=0)


def test_unknown_measurement_or_layer_is_explained(experiment):
    with pytest.raises(ValueError, match="no measurement 'ATAC'"):
        SomaCells(experiment, measurement="ATAC")
    with pytest.raises(ValueError, match="no X layer 'counts'"):
        read_counts(experiment, layer="counts")
