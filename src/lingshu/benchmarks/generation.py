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
from lingshu.training.validation import DEFAULT_VAL_FRACTION

DEFAULT_BASELINES = (
    "independent_genes",
    "independent_genes_by_group",
    "celltype_poisson",
    "celltype_negative_binomial",
    "copy_training",
)
NETWORK_OFF = "priors alone (network off)"
PLAIN_UNMASKING = "plain unmasking (no state prior)"


def run_generation_benchmark(
    out_dir: str | Path,
    dataset: str = "pbmc3k",
    split: str = "pbmc3k_cells",
    preset: str = "cpu",
    max_steps: int | None = None,
    min_cells: int = 10,
    sampling_steps: Sequence[int] = (16, 32),
    baselines: Sequence[str] = DEFAULT_BASELINES,
    baseline_options: dict | None = None,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    conditional_key: str | None = "cell_type",
    conditional_preset: str = "cpu",
    depth_bins: int = 0,
) -> pd.DataFrame:
    """Run the whole comparison and write ``out_dir/report`` plus ``out_dir/timings.json``.

    The headline model is label-free (the paper's unconditional setting): ``preset`` trained on
    the training cells with no labels (or ``checkpoint``, trained on the training part of the
    same split), generated at each of ``sampling_steps``, beside its priors alone (network off).
    With ``conditional_key`` (an ``obs`` column the data have, e.g. the cell type) a second
    model, ``conditional_preset`` conditioned on it and on ``depth_bins`` library-size bins
    within it, is scored too, with its own priors alone; None skips it.
    """
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    adata = read_counts(resolve_data(dataset))
    train_cells, held_out = apply_cell_split(adata, load_split(split))
    # Both models hold back a tenth of their training cells and keep their best validation
    # weights, as `make demo` and `lingshu train` do.
    overrides = {
        "seed": seed,
        "val_fraction": DEFAULT_VAL_FRACTION,
        **({} if max_steps is None else {"max_steps": max_steps}),
    }

    def fit(path: Path, name: str, chosen: str, **options) -> Path:
        started = time.perf_counter()
        train(
            train_cells,
            path,
            preset=chosen,
            min_cells=min_cells,
            train_overrides=overrides,
            progress=progress,
            **options,
        )
        timings[f"train_{name}_s"] = time.perf_counter() - started
        return path

    if checkpoint is None:
        checkpoint = fit(out_dir / "model", "label_free", preset)
    models = {"lingshu": load_checkpoint(Path(checkpoint))}
    if conditional_key is not None and conditional_key in train_cells.obs:
        conditional = fit(
            out_dir / "model_conditional",
            "conditional",
            conditional_preset,
            condition_keys={"source": conditional_key},
            depth_bins=depth_bins,
        )
        models[f"lingshu conditional ({conditional_key})"] = load_checkpoint(conditional)
    generated = {}
    for name, model in models.items():
        for steps in sampling_steps:
            started = time.perf_counter()
            cells = generate(model, held_out.n_obs, n_steps=steps, seed=seed, progress=progress)
            slug = name.replace(" ", "_").replace("(", "").replace(")", "")
            timings[f"generate_{slug}_{steps}_steps_s"] = time.perf_counter() - started
            write_h5ad_atomic(cells, out_dir / f"generated_{slug}_{steps}_steps.h5ad")
            generated[f"{name} ({steps} steps)"] = cells
        prefix = "" if name == "lingshu" else f"{name}: "
        generated[prefix + NETWORK_OFF] = generate(
            model, held_out.n_obs, n_steps=max(sampling_steps), seed=seed, progress=progress, network=False
        )
        if model.state_prior is not None:  # the ablation: the same network, no state drawn first
            generated[f"{prefix}{PLAIN_UNMASKING} ({max(sampling_steps)} steps)"] = generate(
                model,
                held_out.n_obs,
                n_steps=max(sampling_steps),
                seed=seed,
                progress=progress,
                state_prior=False,
            )
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
