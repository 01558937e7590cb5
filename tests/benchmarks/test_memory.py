import anndata as ad
import numpy as np

from lingshu.benchmarks.memory import run_memory_benchmark, write_synthetic_h5ad


def test_synthetic_file_is_sparse_integer_counts(tmp_path):
    path = write_synthetic_h5ad(tmp_path / "s.h5ad", n_cells=250, n_genes=30, chunk=100)
    adata = ad.read_h5ad(path, backed="r")
    assert adata.shape == (250, 30)
    block = adata.X[:250]
    assert np.issubdtype(block.dtype, np.integer) and block.nnz < 0.5 * 250 * 30
    # chunks are drawn from different seeds: no repeated block of cells
    assert (block[:100] != block[100:200]).nnz > 0


def test_memory_benchmark_trains_backed_and_in_memory_in_fresh_processes(tmp_path):
    records = run_memory_benchmark(
        tmp_path, cell_counts=(200, 2000), n_genes=40, modes=("backed", "in_memory"), max_steps=2
    )
    assert [(r.n_cells, r.mode) for r in records] == [
        (200, "backed"), (200, "in_memory"), (2000, "backed"), (2000, "in_memory"),
    ]  # fmt: skip
    assert records[2].file_mb > records[0].file_mb
    for r in records:
        assert 0.05 < r.peak_host_ram_gb < 16 and r.train_wall_s > 0
        assert (r.loader_cells_per_s is not None) == (r.mode == "backed")
    assert (tmp_path / "model_2000_backed" / "manifest.json").is_file()
