"""End-to-end generation benchmark: split -> train -> generate (several step counts) -> evaluate.

The model is scored beside the real-vs-real ceiling and the baselines, on held-out cells it never
saw, and the report includes a quality-versus-sampling-steps table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lingshu.data.io import read_counts
from lingshu.data.paths import resolve_data
from lingshu.data.splits import apply_cell_split, load_split
from lingshu.data.writing import write_h5ad_atomic
from lingshu.evaluation.report import evaluate_generation
from lingshu.inference.generate import generate
from lingshu.training.checkpoint import load_checkpoint
from lingshu.training.run import train

DEFAULT_BASELINES = ("independent_genes", "celltype_poisson", "celltype_negative_binomial", "copy_training")


def run_generation_benchmark(
    out_dir: str | Path,
    dataset: str = "pbmc3k",
    split: str = "pbmc3k_cells",
    preset: str = "small",
    max_steps: int | None = None,
    min_cells: int = 10,
    sampling_steps: Sequence[int] = (16, 64, 256),
    baselines: Sequence[str] = DEFAULT_BASELINES,
    baseline_options: dict | None = None,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    condition_key: str | None = "cell_type",
    depth_bins: int = 8,
) -> pd.DataFrame:
    """Run the whole comparison and write ``out_dir/report`` plus ``out_dir/timings.json``.

    ``checkpoint`` reuses a trained model instead of training one (its training data must be the
    training part of the same split). ``condition_key`` (an ``obs`` column such as the cell type)
    trains a model conditioned on it and generates cells with labels drawn in training
    proportions; None, or a column the data lack, trains an unconditional model.
    ``depth_bins`` > 0 adds library-size bins within each label (drawn with it when generating;
    8 as in ``make demo``, 0 for none).
    """
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    adata = read_counts(resolve_data(dataset))
    train_cells, held_out = apply_cell_split(adata, load_split(split))
    if checkpoint is None:
        checkpoint = out_dir / "model"
        started = time.perf_counter()
        overrides = {"seed": seed, **({} if max_steps is None else {"max_steps": max_steps})}
        conditional = condition_key is not None and condition_key in train_cells.obs
        train(
            train_cells,
            checkpoint,
            preset=preset,
            min_cells=min_cells,
            train_overrides=overrides,
            progress=progress,
            condition_keys={"source": condition_key} if conditional else None,
            depth_bins=depth_bins,
        )
        timings["train_s"] = time.perf_counter() - started
    model = load_checkpoint(Path(checkpoint))
    generated = {}
    for steps in sampling_steps:
        started = time.perf_counter()
        cells = generate(model, held_out.n_obs, n_steps=steps, seed=seed, progress=progress)
        timings[f"generate_{steps}_steps_s"] = time.perf_counter() - started
        write_h5ad_atomic(cells, out_dir / f"generated_{steps}_steps.h5ad")
        generated[f"lingshu ({steps} steps)"] = cells
    started = time.perf_counter()
    table = evaluate_generation(
        held_out,
        generated,
        train_cells,
        out_dir / "report",
        seed=seed,
        baselines=baselines,
        baseline_options=baseline_options,
        progress=progress,
    )
    timings["evaluate_s"] = time.perf_counter() - started
    (out_dir / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    return table
