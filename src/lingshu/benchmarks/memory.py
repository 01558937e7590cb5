"""Host RAM of training as the number of cells grows: disk-backed streaming versus in memory.

Writes synthetic count files of increasing size (sparse, heavy-tailed, like real UMI data), then
runs a short `lingshu train` on each in a fresh process and records that process's peak resident
memory, plus how fast the loader alone streams mini-batches from the backed file. With
``--backed`` the peak must stay flat as the file grows; read into memory it grows with the file.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import anndata as ad
import pandas as pd
import scipy.sparse as sp

from lingshu.benchmarks.speed import synthetic_counts
from lingshu.data.io import read_counts
from lingshu.data.loader import AlignedCounts
from lingshu.data.vocabulary import GeneVocabulary


@dataclass
class MemoryResult:
    n_cells: int
    n_genes: int
    file_mb: float
    mode: str  # "backed" or "in_memory"
    peak_host_ram_gb: float
    train_wall_s: float
    loader_cells_per_s: float | None


def write_synthetic_h5ad(path: Path, n_cells: int, n_genes: int, seed: int = 0, chunk: int = 20_000) -> Path:
    """A CSR count file of ``n_cells`` x ``n_genes``, drawn chunk by chunk (never dense in full)."""
    blocks = [
        sp.csr_matrix(synthetic_counts(min(chunk, n_cells - start), n_genes, seed=seed + start))
        for start in range(0, n_cells, chunk)
    ]
    adata = ad.AnnData(
        X=sp.vstack(blocks, format="csr"),
        obs=pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"GENE{j}" for j in range(n_genes)]),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)
    return path


def loader_throughput(path: Path, batch_size: int = 256, n_batches: int = 20) -> float:
    """Cells per second the backed loader delivers (block-shuffled reads, aligned, densified)."""
    adata = read_counts(path, backed=True)
    data = AlignedCounts(adata, GeneVocabulary(list(adata.var_names)).align(adata))
    batches = data.iter_batches(batch_size, seed=0)
    next(batches)  # open the file and warm the cache of the first block
    start = time.perf_counter()
    for _ in range(n_batches):
        next(batches)
    return batch_size * n_batches / (time.perf_counter() - start)


# Runs `lingshu` in the child and writes the peak RSS of *its own* address space (VmHWM) at exit.
# getrusage/wait4 cannot be used: Linux carries the parent's high-water mark across fork+exec,
# so every child would report at least the size of this (data-generating) process.
_CHILD = """
import atexit, sys
from pathlib import Path
report = Path(sys.argv[1])
def _write_peak():
    status = Path("/proc/self/status").read_text().splitlines()
    report.write_text(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
atexit.register(_write_peak)
sys.argv = ["lingshu", *sys.argv[2:]]
from lingshu.cli import main
main()
"""


def peak_ram_of_training(
    path: Path, out_dir: Path, backed: bool, max_steps: int, preset: str
) -> tuple[float, float]:
    """Run `lingshu train` in a fresh process; return (its peak RSS in GB, wall seconds)."""
    report = out_dir.with_name(out_dir.name + ".peak_kib")
    arguments = [
        "train", str(path), "--preset", preset, "--max-steps", str(max_steps), "--out", str(out_dir),
        "--no-progress", "--device", "cpu", *(["--backed"] if backed else []),
    ]  # fmt: skip
    start = time.perf_counter()
    finished = subprocess.run(
        [sys.executable, "-c", _CHILD, str(report), *arguments], capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if finished.returncode != 0:
        raise RuntimeError(f"training run failed (lingshu {' '.join(arguments)}):\n{finished.stderr[-2000:]}")
    return int(report.read_text()) / 2**20, wall


def run_memory_benchmark(
    work_dir: str | Path,
    cell_counts: tuple[int, ...] = (20_000, 200_000),
    n_genes: int = 2_000,
    modes: tuple[str, ...] = ("backed", "in_memory"),
    max_steps: int = 20,
    preset: str = "tiny",
    seed: int = 0,
) -> list[MemoryResult]:
    """Peak host RAM of a short training run per file size and mode (see module docstring)."""
    work_dir = Path(work_dir)
    results = []
    for n_cells in cell_counts:
        path = write_synthetic_h5ad(work_dir / f"synthetic_{n_cells}x{n_genes}.h5ad", n_cells, n_genes, seed)
        loader_rate = loader_throughput(path)
        for mode in modes:
            ram, wall = peak_ram_of_training(
                path, work_dir / f"model_{n_cells}_{mode}", mode == "backed", max_steps, preset
            )
            results.append(
                MemoryResult(
                    n_cells=n_cells,
                    n_genes=n_genes,
                    file_mb=path.stat().st_size / 2**20,
                    mode=mode,
                    peak_host_ram_gb=ram,
                    train_wall_s=wall,
                    loader_cells_per_s=loader_rate if mode == "backed" else None,
                )
            )
    return results


def results_as_records(results: list[MemoryResult]) -> list[dict]:
    return [asdict(r) for r in results]
