"""``lingshu data``: list registered datasets, locate them, and make/apply cell splits."""

from __future__ import annotations

from pathlib import Path

import typer

from lingshu.cli import app
from lingshu.cli._common import user_errors_as_messages
from lingshu.data.io import read_counts
from lingshu.data.paths import DATASETS, data_dir, dataset_path, resolve_data
from lingshu.data.splits import apply_cell_split, load_split, make_cell_split, save_split
from lingshu.data.writing import write_h5ad_atomic

data_app = typer.Typer(
    help="Registered datasets, the data directory, and fixed cell splits.", no_args_is_help=True
)
app.add_typer(data_app, name="data")


@data_app.command("list")
def list_datasets() -> None:
    """List registered datasets and whether each is found under the data directory."""
    typer.echo(f"data directory: {data_dir()}  (set LINGSHU_DATA_DIR to change it)")
    for name, info in DATASETS.items():
        try:
            where = str(dataset_path(name, download=False))
        except FileNotFoundError:
            where = "not found" + (" (downloadable)" if info.url else "")
        typer.echo(f"{name:18s} {info.description}\n{'':18s} {where}")


@data_app.command("path")
@user_errors_as_messages
def path(name: str = typer.Argument(..., help="Registered dataset name, e.g. pbmc3k.")) -> None:
    """Print the path of a registered dataset (downloading it when it has a public address)."""
    typer.echo(str(dataset_path(name)))


@data_app.command("make-split")
@user_errors_as_messages
def make_split(
    data: str = typer.Argument(..., help="An .h5ad file or a registered dataset name."),
    out: Path = typer.Option(..., "--out", help="Where to write the split JSON file."),
    fraction: float = typer.Option(0.2, "--fraction", help="Fraction of cells held out."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random split."),
) -> None:
    """Draw a seeded random cell split and save it as JSON (held-out cell names + rationale)."""
    path = resolve_data(data)
    adata = read_counts(path, backed=True)
    save_split(make_cell_split(adata.obs_names, fraction, seed, dataset=path.stem), out)
    typer.echo(f"wrote {out}")


@data_app.command("split")
@user_errors_as_messages
def split(
    data: str = typer.Argument(..., help="An .h5ad file or a registered dataset name."),
    split_file: str = typer.Option(
        ..., "--split", help="Split JSON file, or the name of a shipped split (e.g. pbmc3k_cells)."
    ),
    out: Path = typer.Option(..., "--out", help="Directory for train.h5ad and held_out.h5ad."),
    layer: str | None = typer.Option(None, "--layer", help="Layer holding raw counts (default X)."),
) -> None:
    """Write the training and held-out cells of a dataset as two .h5ad files."""
    adata = read_counts(resolve_data(data), layer=layer)
    train, held_out = apply_cell_split(adata, load_split(split_file))
    write_h5ad_atomic(train, out / "train.h5ad")
    write_h5ad_atomic(held_out, out / "held_out.h5ad")
    typer.echo(
        f"wrote {out / 'train.h5ad'} ({train.n_obs} cells) and "
        f"{out / 'held_out.h5ad'} ({held_out.n_obs} cells)"
    )


@data_app.command("count")
@user_errors_as_messages
def count(data: str = typer.Argument(..., help="An .h5ad file or a registered dataset name.")) -> None:
    """Print the number of cells in a file (read backed, without loading the matrix)."""
    typer.echo(str(read_counts(resolve_data(data), backed=True).n_obs))


@data_app.command("pretraining-corpus")
@user_errors_as_messages
def pretraining_corpus(
    recipe: str = typer.Option(
        "pbmc",
        "--recipe",
        help="pbmc: pbmc3k's training cells and the control cells of Kang's three files "
        "(no stimulated cell), stacked over the union of their genes.",
    ),
    out: Path = typer.Option(..., "--out", help="The .h5ad to write (train on it with lingshu train)."),
) -> None:
    """Stack the cells of a pretraining recipe into one file; each file's unmeasured genes stay
    unobserved for its cells (obs['panel'], var['measured_in_<panel>'])."""
    from lingshu.data.pretraining import build_corpus

    corpus = build_corpus(recipe)
    write_h5ad_atomic(corpus, out)
    for line in corpus.uns["lingshu_corpus"]["parts"]:
        typer.echo(f"  {line}")
    typer.echo(f"wrote {out} ({corpus.n_obs:,} cells x {corpus.n_vars:,} genes)")
