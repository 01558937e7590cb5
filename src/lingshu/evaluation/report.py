"""Score generated cells (model and baselines) against held-out real cells and write a report.

:func:`evaluate_generation` is the one entry point: it aligns and normalises every input,
adds the real-vs-real ceiling row, runs the registered metrics, and writes ``metrics.csv``,
``metrics_meta.json``, ``proportions.csv``, ``markers.csv``, ``report.md``, ``report.html``
and PNG figures into one directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from threadpoolctl import threadpool_limits

from lingshu.data.writing import atomic_path, atomic_write_text
from lingshu.evaluation import plots, render
from lingshu.evaluation.baselines import CELL_TYPE_KEY, GENERATION_BASELINES, run_baselines
from lingshu.evaluation.celltypes import (
    expression_summary,
    marker_table,
    proportions,
    rank_markers,
)
from lingshu.evaluation.embedding import subsample_index
from lingshu.evaluation.metrics import (
    GENERATION_METRICS,
    MEMORISATION_THRESHOLD,
    MetricContext,
    score_generation,
)
from lingshu.evaluation.preprocess import check_counts, preprocess

CEILING = "real_ceiling"
MIN_REAL_CELLS = 10
UMAP_MAX_CELLS = 1500  # per side: enough to see structure, keeps UMAP to seconds
CEILING_DESCRIPTIONS = {
    "train_subsample": (
        "real_ceiling = {n} training cells drawn at random (the size of the held-out set) "
        "scored against the held-out cells exactly like a generator; its memorisation ratio "
        "uses the remaining training cells as the reference"
    ),
    "half_split": (
        "real_ceiling = a random half of the real cells ({n} cells) scored against the other "
        "half (no --train given); it is computed on half-size samples, so for size-dependent "
        "metrics (MMD, iLISI, W1) it is slightly pessimistic"
    ),
}


@dataclass
class _Method:
    """One row of the table while it is being scored."""

    name: str
    kind: str
    matrix: np.ndarray
    reference: np.ndarray
    context: MetricContext
    values: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def _labels(adata: AnnData) -> np.ndarray | None:
    if CELL_TYPE_KEY not in adata.obs:
        return None
    return adata.obs[CELL_TYPE_KEY].astype(object).to_numpy()


def _standardise(adata: AnnData, layer: str | None, label_key: str, name: str) -> AnnData:
    """An AnnData with the counts in X and the labels in obs['cell_type'] (matrix not copied).

    Everything downstream (baselines included) then reads one fixed place.
    """
    if layer is None and label_key == CELL_TYPE_KEY:
        return adata
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"{name}: layer {layer!r} not found; available: {sorted(adata.layers)}")
    obs = pd.DataFrame(index=adata.obs_names)
    if label_key in adata.obs:
        obs[CELL_TYPE_KEY] = adata.obs[label_key].to_numpy()
    matrix = adata.X if layer is None else adata.layers[layer]
    return AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=adata.var_names))


def _validate(
    real: AnnData,
    generated: Mapping[str, AnnData],
    train: AnnData | None,
    baselines: Sequence[str],
) -> None:
    if not generated and not baselines:
        raise ValueError("nothing to evaluate: give at least one generated set or baseline")
    if baselines and train is None:
        raise ValueError("baselines are fitted on the training cells: pass train (--train)")
    unknown = [b for b in baselines if b not in GENERATION_BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {list(GENERATION_BASELINES)}")
    clashes = sorted(set(generated) & (set(baselines) | {CEILING}))
    if clashes:
        raise ValueError(f"generated set names clash with baseline/ceiling names: {clashes}")
    if real.n_obs < MIN_REAL_CELLS:
        raise ValueError(f"real: needs at least {MIN_REAL_CELLS} cells, got {real.n_obs}")
    check_counts(real, "real")
    if train is not None:
        if train.n_obs < 2:
            raise ValueError("train: needs at least 2 cells")
        check_counts(train, "train")
    for name, adata in generated.items():
        check_counts(adata, f"generated {name!r}")


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator:
    """A rich progress bar on stderr (a no-op object when disabled)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )
    with progress:
        task = progress.add_task("evaluating", total=total)

        def step(description: str, advance: int = 1) -> None:
            progress.update(task, description=description, advance=advance)

        yield step


def evaluate_generation(
    real: AnnData,
    generated: Mapping[str, AnnData],
    train: AnnData | None,
    out_dir: str | Path,
    seed: int = 0,
    *,
    baselines: Sequence[str] = (),
    baseline_options: Mapping[str, Mapping[str, Any]] | None = None,
    layer: str | None = None,
    label_key: str = CELL_TYPE_KEY,
    max_cells: int = 5000,
    max_train_cells: int = 10_000,
    n_markers: int = 5,
    plots_enabled: bool = True,
    progress: bool = True,
    blas_threads: int | None = 1,
    learning_curve: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Score each generated set against the held-out ``real`` cells and write a report.

    Args:
        real: held-out real cells (raw integer counts; cell types in ``obs[label_key]``
            optional).
        generated: name -> generated cells (raw integer counts; ``obs[label_key]`` if
            generated conditionally).
        train: the model's training cells; enables the memorisation metric, the baselines
            and the training-subsample ceiling. ``None``: the ceiling is a half split of real.
        out_dir: report directory (created; files in it are replaced atomically).
        seed: seeds every subsample, PCA, classifier, baseline and UMAP.
        baselines: names from ``GENERATION_BASELINES`` to fit on ``train`` and score too.
        baseline_options: extra keyword arguments per baseline, e.g.
            ``{"scvi": {"max_epochs": 50}}``.
        layer: read counts from this layer of every input instead of ``X``.
        label_key: ``obs`` column with cell types in every input (default ``cell_type``).
        max_cells: at most this many cells (drawn at random) of each set are scored; also
            the number of cells each baseline generates when ``real`` is larger.
        max_train_cells: training cells kept (at random) for the memorisation reference and
            the ceiling; bounds memory (10,000 x 16k genes is ~0.65 GB dense float32).
        n_markers: marker genes per cell type in the marker table.
        plots_enabled: write PNG figures (UMAP, proportions, markers, metric bars).
        progress: show a progress bar on stderr.
        blas_threads: BLAS threads during evaluation (``None`` = library default). One thread
            avoids contention between numpy's and scipy's OpenBLAS pools on small machines.
        learning_curve: the model's validation curve (columns ``step``, ``train_seconds``,
            ``val_nll``, as a checkpoint's ``validation.csv``): plotted and copied to the report.

    Returns:
        One row per method (models, then baselines, then ``real_ceiling``): ``kind``,
        ``n_cells``, one column per metric and ``memorisation_flag``.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} exists and is not a folder")
    real = _standardise(real, layer, label_key, "real")
    train = None if train is None else _standardise(train, layer, label_key, "train")
    generated = {
        name: _standardise(a, layer, label_key, f"generated {name!r}") for name, a in generated.items()
    }
    _validate(real, generated, train, baselines)
    # baselines run + normalise + every row scored (models, baselines, ceiling) + plots + write
    n_steps = 2 * len(baselines) + len(generated) + 3 + int(plots_enabled)
    limit = threadpool_limits(blas_threads, user_api="blas") if blas_threads else nullcontext()
    with limit, _progress(progress, n_steps) as step:
        step("running baselines", advance=0)
        for name in baselines:
            n_cells = min(real.n_obs, max_cells)
            generated = {**generated, **run_baselines(train, [name], n_cells, seed, baseline_options)}
            step(f"baseline {name}")
        kinds = {name: ("baseline" if name in baselines else "model") for name in generated}
        step("normalising")
        methods, genes, ceiling_mode, ceiling_n, genes_per_input = _prepare(
            real, generated, kinds, train, seed, max_cells, max_train_cells
        )
        step("scoring", advance=0)
        for method in methods:
            method.values, method.notes = score_generation(method.reference, method.matrix, method.context)
            step(f"scored {method.name}")
        table = _metrics_table(methods)
        extras = _celltype_outputs(methods, genes, n_markers)
        figures: dict[str, str] = {}
        if plots_enabled:
            step("plotting", advance=0)
            figures = _write_figures(methods, table, extras, genes, out_dir, seed)
            if learning_curve is not None and len(learning_curve):
                path = plots.plot_learning_curve(learning_curve, out_dir / "learning_curve.png")
                figures["Learning curve: validation NLL per gene at t = 0.5"] = path.name
            step("plots written")
        if learning_curve is not None:
            with atomic_path(out_dir / "learning_curve.csv") as tmp:
                learning_curve.to_csv(tmp, index=False)
        meta = _meta(methods, table, genes, ceiling_mode, ceiling_n, seed, max_cells, started)
        meta["genes_per_input"] = genes_per_input
        _write_outputs(out_dir, table, extras, meta, figures)
        step("done")
    return table


def _prepare(
    real: AnnData,
    generated: Mapping[str, AnnData],
    kinds: Mapping[str, str],
    train: AnnData | None,
    seed: int,
    max_cells: int,
    max_train_cells: int,
) -> tuple[list[_Method], list[str], str, int, dict[str, int]]:
    """Normalise everything together and build one scoring context per row.

    Also returns the number of genes each input carried (before intersecting).
    """
    rng = np.random.default_rng([seed, 7])
    # at most max_cells per set are ever densified; metrics subsample to that anyway
    real = real[subsample_index(real.n_obs, max_cells, rng)]
    generated = {
        name: adata[subsample_index(adata.n_obs, max_cells, rng)] for name, adata in generated.items()
    }
    inputs: dict[str, AnnData] = {"real": real}
    if train is not None:
        kept = subsample_index(train.n_obs, max_train_cells, rng)
        # ceiling cells first, then the rest: both become views of one dense matrix
        n_ceiling = min(real.n_obs, kept.size - 1)  # keep >= 1 training cell as reference
        order = rng.permutation(kept)
        ordered = np.r_[np.sort(order[:n_ceiling]), np.sort(order[n_ceiling:])]
        train = train[ordered]
        inputs["train"] = train
    keys = {name: f"{kinds[name]} {name!r}" for name in generated}
    inputs.update({keys[name]: adata for name, adata in generated.items()})
    matrices, genes = preprocess(
        inputs, detection_reference=["real", "train"] if train is not None else ["real"]
    )
    genes_per_input = {key: int(adata.n_vars) for key, adata in inputs.items()}
    real_matrix, real_labels = matrices["real"], _labels(real)

    def context(**kwargs) -> MetricContext:
        return MetricContext(seed=seed, max_cells=max_cells, **kwargs)

    shared = context(real_labels=real_labels, train=matrices.get("train"))
    methods = [
        _Method(
            name,
            kinds[name],
            matrices[keys[name]],
            real_matrix,
            context(
                real_labels=real_labels,
                generated_labels=_labels(adata),
                train=shared.train,
                reference_cache=shared.reference_cache,
            ),
        )
        for name, adata in generated.items()
    ]
    if train is not None:
        mode, n = "train_subsample", n_ceiling
        train_labels = _labels(train)
        ceiling = _Method(
            CEILING,
            "ceiling",
            matrices["train"][:n],
            real_matrix,
            context(
                real_labels=real_labels,
                generated_labels=None if train_labels is None else train_labels[:n],
                train=matrices["train"][n:],
            ),
        )
    else:
        mode = "half_split"
        order = rng.permutation(real.n_obs)
        n = real.n_obs // 2
        half, other = np.sort(order[:n]), np.sort(order[n:])
        ceiling = _Method(
            CEILING,
            "ceiling",
            real_matrix[half],
            real_matrix[other],
            context(
                real_labels=None if real_labels is None else real_labels[other],
                generated_labels=None if real_labels is None else real_labels[half],
            ),
        )
    return [*methods, ceiling], genes, mode, n, genes_per_input


def _metrics_table(methods: Sequence[_Method]) -> pd.DataFrame:
    rows = []
    for method in methods:
        ratio = method.values.get("memorisation_ratio", float("nan"))
        flag = pd.NA if np.isnan(ratio) else bool(ratio < method.context.memorisation_threshold)
        rows.append(
            {
                "method": method.name,
                "kind": method.kind,
                "n_cells": method.matrix.shape[0],
                **method.values,
                "memorisation_flag": flag,
            }
        )
    table = pd.DataFrame(rows).set_index("method")
    table["memorisation_flag"] = table["memorisation_flag"].astype("boolean")
    return table


@dataclass(frozen=True)
class _CellTypeOutputs:
    proportions: pd.DataFrame | None
    markers: pd.DataFrame | None
    marker_genes: dict[str, list[str]]
    group_labels: dict[str, np.ndarray]


def _celltype_outputs(methods: Sequence[_Method], genes: Sequence[str], n_markers: int) -> _CellTypeOutputs:
    """Proportions and marker statistics, for rows scored against the main real set."""
    main = [m for m in methods if m.reference is methods[0].reference]
    ctx = main[0].context
    if not ctx.has("real_labels"):
        return _CellTypeOutputs(None, None, {}, {})
    real = main[0].reference
    classes = ctx.classifier(real).classes
    group_labels: dict[str, np.ndarray] = {}
    columns = {"real": proportions(ctx.real_labels, classes)}
    for method in main:
        predicted = method.context.predicted_labels(real, method.matrix)
        columns[method.name] = proportions(predicted, classes)
        # markers: group generated cells by the type they were generated as, if known
        own = method.context.generated_labels
        group_labels[method.name] = own if method.context.has("generated_labels") else predicted
    table = pd.DataFrame(columns).sort_values("real", ascending=False)
    table.index.name = "cell_type"
    marker_genes = rank_markers(real, ctx.real_labels, genes, n_markers=n_markers)
    marker_rows = [
        marker_table(real, ctx.real_labels, m.matrix, group_labels[m.name], genes, marker_genes).assign(
            method=m.name
        )
        for m in main
    ]
    markers = pd.concat(marker_rows, ignore_index=True) if marker_genes else None
    if markers is not None:
        markers = markers[["method", *[c for c in markers.columns if c != "method"]]]
    return _CellTypeOutputs(table, markers, marker_genes, group_labels)


def _write_figures(
    methods: Sequence[_Method],
    table: pd.DataFrame,
    extras: _CellTypeOutputs,
    genes: Sequence[str],
    out_dir: Path,
    seed: int,
) -> dict[str, str]:
    figures = {}
    panels = []
    for method in methods:
        embedding = method.context.joint_embedding(method.reference, method.matrix)
        rng = np.random.default_rng([seed, 11])
        real_rows = subsample_index(embedding.real.shape[0], UMAP_MAX_CELLS, rng)
        gen_rows = subsample_index(embedding.generated.shape[0], UMAP_MAX_CELLS, rng)
        coords = plots.umap_coords(
            np.vstack([embedding.real[real_rows], embedding.generated[gen_rows]]), seed
        )
        is_generated = np.r_[np.zeros(real_rows.size, bool), np.ones(gen_rows.size, bool)]
        cell_types = None
        real_labels = method.context.real_labels
        gen_labels = extras.group_labels.get(method.name, method.context.generated_labels)
        if real_labels is not None and gen_labels is not None:
            cell_types = np.r_[
                np.asarray(real_labels, dtype=object)[embedding.real_index][real_rows],
                np.asarray(gen_labels, dtype=object)[embedding.generated_index][gen_rows],
            ].astype(str)
        panels.append(plots.UmapPanel(method.name, coords, is_generated, cell_types))
    figures["UMAP of real vs generated cells"] = plots.plot_umaps(panels, out_dir / "umap.png").name
    kinds = table["kind"]
    metric_bars = plots.plot_metric_bars(table, GENERATION_METRICS, kinds, out_dir / "metric_bars.png")
    figures["Metrics per method"] = metric_bars.name
    if extras.proportions is not None:
        figures["Cell-type proportions"] = plots.plot_proportions(
            extras.proportions, out_dir / "celltype_proportions.png"
        ).name
    if extras.marker_genes:
        figures["Marker genes"] = _marker_figure(methods, extras, genes, out_dir).name
    return figures


def _marker_figure(
    methods: Sequence[_Method], extras: _CellTypeOutputs, genes: Sequence[str], out_dir: Path
) -> Path:
    """Dot plot of the top two markers per type, real then each method."""
    types = list(extras.marker_genes)
    dot_genes = list(dict.fromkeys(g for t in types for g in extras.marker_genes[t][:2]))
    main = [m for m in methods if m.name in extras.group_labels]
    genes_index = {g: i for i, g in enumerate(genes)}
    columns = [genes_index[g] for g in dot_genes]
    summaries = {"real": expression_summary(main[0].reference, main[0].context.real_labels, types, columns)}
    for method in main:
        summaries[method.name] = expression_summary(
            method.matrix, extras.group_labels[method.name], types, columns
        )
    return plots.plot_marker_dots(summaries, types, dot_genes, out_dir / "marker_dotplot.png")


def _meta(
    methods: Sequence[_Method],
    table: pd.DataFrame,
    genes: Sequence[str],
    ceiling_mode: str,
    ceiling_n: int,
    seed: int,
    max_cells: int,
    started: float,
) -> dict:
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics": {
            name: {
                "direction": metric.direction,
                "higher_is_better": metric.higher_is_better,
                "target": metric.target,
                "requires": list(metric.requires),
                "description": metric.description,
            }
            for name, metric in GENERATION_METRICS.items()
        },
        "columns": {
            "kind": "model (a generated set given to us), baseline, or ceiling (real vs real)",
            "n_cells": "number of generated cells scored",
            "memorisation_flag": (
                f"true when memorisation_ratio < {MEMORISATION_THRESHOLD}: generated cells sit "
                "much closer to training cells than new real cells do (copying)"
            ),
        },
        "ceiling": {
            "mode": ceiling_mode,
            "n_cells": int(ceiling_n),
            "description": CEILING_DESCRIPTIONS[ceiling_mode].format(n=ceiling_n),
        },
        "skipped": {m.name: m.notes for m in methods if m.notes},
        "n_genes": len(genes),
        "n_real_cells": int(methods[0].reference.shape[0]),
        "preprocessing": (
            "shared genes of all inputs, genes with no count in the real (held-out and "
            "training) cells dropped, each cell scaled to 10,000 counts over the shared genes, "
            "log1p"
        ),
        "seed": seed,
        "max_cells_per_side": max_cells,
        "memorisation_threshold": MEMORISATION_THRESHOLD,
        "methods": list(table.index),
        "wall_time_s": round(time.perf_counter() - started, 2),
    }


def _write_outputs(
    out_dir: Path,
    table: pd.DataFrame,
    extras: _CellTypeOutputs,
    meta: dict,
    figures: Mapping[str, str],
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "metrics.csv") as tmp:
        table.to_csv(tmp)
    if extras.proportions is not None:
        with atomic_path(out_dir / "proportions.csv") as tmp:
            extras.proportions.to_csv(tmp)
    if extras.markers is not None:
        with atomic_path(out_dir / "markers.csv") as tmp:
            extras.markers.to_csv(tmp, index=False)
    atomic_write_text(
        out_dir / "metrics_meta.json", json.dumps(meta, indent=2, default=str, ensure_ascii=False)
    )
    content = render.ReportContent(
        metrics=table,
        registry=GENERATION_METRICS,
        meta=meta,
        proportions=extras.proportions,
        markers=extras.markers,
        figures=dict(figures),
    )
    atomic_write_text(out_dir / "report.md", render.to_markdown(content))
    atomic_write_text(out_dir / "report.html", render.to_html(content))
