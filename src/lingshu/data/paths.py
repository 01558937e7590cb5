"""Where datasets live: the data directory setting and a registry of the public datasets.

The data directory is, in order: ``$LINGSHU_DATA_DIR``; ``../shared/data`` (relative to the
working directory, then to this source tree) when it exists; else a user cache
(``$XDG_CACHE_HOME/lingshu/data`` or ``~/.cache/lingshu/data``). Datasets with a public download
address are fetched into the cache on first use when they are not found.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ENV_DATA_DIR = "LINGSHU_DATA_DIR"


@dataclass(frozen=True)
class DatasetInfo:
    """One registered dataset: file name under the data directory and how to obtain it."""

    name: str
    relative_path: str
    description: str
    sha256: str | None = None
    url: str | None = None


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            "pbmc3k",
            "pbmc3k/pbmc3k_raw_annotated.h5ad",
            "10x Genomics pbmc3k, 2,700 PBMCs x 32,738 genes, obs['cell_type']",
            "7ac19df8628545c7cffe7d0cb3e0a197420e1b32035b28c03890e5f765ae5728",
            "https://cf.10xgenomics.com/samples/cell-exp/1.1.0/pbmc3k/"
            "pbmc3k_filtered_gene_bc_matrices.tar.gz",
        ),
        DatasetInfo(
            "kang2018",
            "kang2018/kang2018_celltypes_counts.h5ad",
            "Kang 2018 PBMCs, control vs IFN-beta, obs['cell_type'], obs['condition']",
            "f73d6b9b1054ef6cdd93bc1197aed2e72eac5d507f10c935dec15860866df2c7",
        ),
        DatasetInfo(
            "kang2018_donors",
            "kang2018/kang2018_donors_counts.h5ad",
            "Kang 2018 subset with donor labels",
            "38cf21449fa68fb37990276e5591276bade0d8204eb521ce13c841d4f2be7d5b",
        ),
        DatasetInfo(
            "kang2018_ctrl_stim",
            "kang2018/kang2018_ctrl_stim_counts.h5ad",
            "Kang 2018, 1,000 control + 1,000 IFN-beta stimulated PBMCs, obs['condition']",
            "2d9ae62e056a8e5e91aeb39c48c4f6f64ad142febc3d3f096bbffbd3a9d704dd",
        ),
        DatasetInfo(
            "papalexi2021",
            "papalexi2021/papalexi2021_thp1_crispr_counts.h5ad",
            "Papalexi 2021 THP-1 ECCITE-seq CRISPR screen, obs['perturbation']",
            "968c841439a59bad5121888839a16be4a9213c4caabee9bf26fd2ea2a63d6c39",
        ),
        DatasetInfo(
            "norman2019",
            "norman2019/norman2019_mcfaline2023_counts.h5ad",
            "Norman 2019 K562 CRISPRa + McFaline 2023 glioma lines, obs['perturbation']",
            "31cd8d31f0b51a2fe4d516875e4fd49f9399e608df3e75f98e66197575e908a1",
        ),
    ]
}


def cache_dir() -> Path:
    """The per-user cache directory used when no shared data directory exists."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lingshu" / "data"


def data_dir() -> Path:
    """Resolve the data directory (see module docstring for the order)."""
    configured = os.environ.get(ENV_DATA_DIR)
    if configured:
        return Path(configured).expanduser()
    source_root = Path(__file__).resolve().parents[3]
    for candidate in (
        Path.cwd() / ".." / "shared" / "data",
        source_root / ".." / "shared" / "data",
    ):
        if candidate.is_dir():
            return candidate.resolve()
    return cache_dir()


def dataset_path(name: str, download: bool = True) -> Path:
    """Path of registered dataset ``name``, downloading it into the cache if needed and possible."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; registered datasets: {sorted(DATASETS)}")
    info = DATASETS[name]
    for root in dict.fromkeys([data_dir(), cache_dir()]):
        path = root / info.relative_path
        if path.is_file():
            return path
    if not (download and info.url):
        raise FileNotFoundError(
            f"dataset {name!r} not found under {data_dir()} (expected {info.relative_path}). "
            f"Set {ENV_DATA_DIR} to the folder that holds it"
            + ("" if info.url else "; it has no public download address in the registry")
        )
    return _download_pbmc3k(cache_dir() / info.relative_path, info.url)


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _download_pbmc3k(target: Path, url: str) -> Path:
    """Fetch the 10x pbmc3k matrix and write it as an h5ad of raw counts (no cell-type labels)."""
    import scanpy as sc

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        archive = Path(tmp) / "pbmc3k.tar.gz"
        with urllib.request.urlopen(url, timeout=120) as response, open(archive, "wb") as out:
            shutil.copyfileobj(response, out)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        matrix_dir = next(Path(tmp).rglob("matrix.mtx")).parent
        adata = sc.read_10x_mtx(matrix_dir, var_names="gene_symbols", make_unique=True)
        adata.X = adata.X.astype("int32")
        partial = Path(tmp) / "pbmc3k.h5ad"
        adata.write_h5ad(partial)
        os.replace(partial, target)
    return target


def resolve_data(data: str | Path) -> Path:
    """An existing file (or directory of shards), or a registered dataset name (e.g. ``pbmc3k``)."""
    path = Path(data)
    if path.is_file() or path.is_dir():
        return path
    if str(data) in DATASETS:
        return dataset_path(str(data))
    raise FileNotFoundError(
        f"{data!r} is neither a file, a directory of shards nor a registered dataset ({sorted(DATASETS)})"
    )
