"""``lingshu evaluate``: score generated cells against held-out real cells and write a report."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from lingshu.cli import app
from lingshu.cli._common import user_errors_as_messages


def _read(path: Path, what: str):
    """Read an .h5ad file, turning unreadable files into a clear error."""
    import anndata

    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return anndata.read_h5ad(path)
    except Exception as error:  # h5py/anndata raise many types for a corrupt or foreign file
        raise ValueError(f"could not read {what} file {path} as .h5ad: {error}") from error


def parse_generated(items: list[str], names: list[str]) -> dict[str, Path]:
    """Map ``--generated`` values (``PATH`` or ``NAME=PATH``) and ``--generated-name`` to paths."""
    if names and len(names) != len(items):
        raise ValueError(
            f"--generated-name was given {len(names)} times for {len(items)} --generated files; "
            "give one name per file, in the same order"
        )
    parsed: dict[str, Path] = {}
    for i, item in enumerate(items):
        if "=" in item and not Path(item).exists():
            name, path = item.split("=", 1)
            if names:
                raise ValueError(f"{item!r}: use either NAME=PATH or --generated-name, not both")
        else:
            path = item
            name = names[i] if names else Path(item).stem
        if not name:
            raise ValueError(f"{item!r}: empty name")
        if name in parsed:
            raise ValueError(f"two generated sets are named {name!r}; name them with NAME=PATH")
        parsed[name] = Path(path)
    return parsed


def _parse_baselines(value: str) -> list[str]:
    from lingshu.evaluation.baselines import GENERATION_BASELINES

    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in GENERATION_BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {', '.join(GENERATION_BASELINES)}")
    return names


def _print_table(table) -> None:
    """Metrics as rows (with their direction) and methods as columns: fits a terminal."""
    from rich.console import Console
    from rich.table import Table

    from lingshu.evaluation.metrics import GENERATION_METRICS
    from lingshu.evaluation.render import format_value

    view = Table(title="Generation metrics vs held-out real cells")
    view.add_column("metric", no_wrap=True)
    for method, kind in table["kind"].items():
        header = f"{method}\n(ceiling)" if kind == "ceiling" else str(method)
        view.add_column(
            header, justify="right", overflow="fold", style="green" if kind == "ceiling" else None
        )
    for column in (c for c in table.columns if c != "kind"):
        metric = GENERATION_METRICS.get(column)
        label = f"{column} {metric.direction}" if metric else column
        view.add_row(label, *[format_value(v) for v in table[column]])
    # a terminal sets the width; redirected output (logs, CI) gets room for whole names
    Console(width=None if sys.stdout.isatty() else 220).print(view)


@app.command("evaluate")
@user_errors_as_messages
def evaluate(
    real: Path = typer.Option(
        ...,
        "--real",
        help="Held-out real cells (.h5ad, raw integer counts; obs['cell_type'] enables the "
        "cell-type metrics, proportions and markers).",
    ),
    generated: list[str] = typer.Option(
        [],
        "--generated",
        help="Generated cells (.h5ad, raw integer counts). Repeat to compare several models; "
        "write NAME=PATH to name one (default name: the file stem).",
    ),
    generated_name: list[str] = typer.Option(
        [],
        "--generated-name",
        help="Name for each --generated file, repeated in the same order (alternative to NAME=PATH).",
    ),
    train: Path | None = typer.Option(
        None,
        "--train",
        help="The model's training cells (.h5ad). Enables the memorisation check and the "
        "baselines, and makes the real-vs-real ceiling a training subsample of the held-out "
        "size (without it: a random half of --real against the other half).",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Report directory: metrics.csv, metrics_meta.json, report.md, report.html, "
        "proportions.csv, markers.csv and PNG plots.",
    ),
    baselines: str = typer.Option(
        "",
        "--baselines",
        help="Comma-separated baselines fitted on --train and scored alongside: "
        "independent_genes, independent_genes_by_group, celltype_poisson, "
        "celltype_negative_binomial, copy_training, scvi (scvi needs "
        "pip install 'lingshu-cell\\[baselines]'). Default: none.",
    ),
    scvi_max_epochs: int | None = typer.Option(
        None,
        "--scvi-max-epochs",
        help="Training epochs of the scvi baseline (default: scvi-tools' own choice, 400 for "
        "small data; fewer is faster on CPU but leaves its samples too noisy).",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of every subsample, PCA, classifier, baseline and UMAP."
    ),
    layer: str | None = typer.Option(
        None, "--layer", help="Read raw counts from this layer of every file instead of X."
    ),
    label_key: str = typer.Option(
        "cell_type",
        "--label-key",
        help="obs column holding cell types in every file (real labels train the cell-type "
        "classifier; generated labels are the requested types of conditional generation).",
    ),
    max_cells: int = typer.Option(
        5000,
        "--max-cells",
        help="At most this many cells per side enter the PCA-based metrics (MMD, iLISI) and W1.",
    ),
    plots: bool = typer.Option(
        True, "--plots/--no-plots", help="Write PNG plots (UMAP, proportions, markers, bars)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="The model's checkpoint directory: its validation curve (validation.csv) is plotted "
        "in the report.",
    ),
) -> None:
    """Score generated cells against held-out real cells (Pearson/Spearman of gene means, MMD
    biased and unbiased with a permutation p-value, Wasserstein-1, iLISI, cell-type
    proportions, memorisation), always next to the real-vs-real ceiling, and write a report."""
    from lingshu.evaluation.report import evaluate_generation

    baseline_names = _parse_baselines(baselines)
    paths = parse_generated(generated, generated_name)
    if not paths and not baseline_names:
        raise ValueError("nothing to evaluate: give --generated and/or --baselines")
    if baseline_names and train is None:
        raise ValueError("--baselines are fitted on the training cells: also give --train")
    real_cells = _read(real, "--real")
    train_cells = None if train is None else _read(train, "--train")
    generated_cells = {name: _read(path, f"--generated {name!r}") for name, path in paths.items()}
    curve = None
    if checkpoint is not None:
        if not (checkpoint / "manifest.json").is_file():
            raise FileNotFoundError(f"--checkpoint {checkpoint} is not a lingshu checkpoint directory")
        if (checkpoint / "validation.csv").is_file():
            import pandas as pd

            curve = pd.read_csv(checkpoint / "validation.csv")
    table = evaluate_generation(
        real_cells,
        generated_cells,
        train_cells,
        out,
        seed=seed,
        baselines=baseline_names,
        baseline_options={"scvi": {"max_epochs": scvi_max_epochs}},
        layer=layer,
        label_key=label_key,
        max_cells=max_cells,
        plots_enabled=plots,
        progress=progress,
        learning_curve=curve,
    )
    _print_table(table)
    typer.echo(f"report written to {out}/report.md (and report.html, metrics.csv)")
