import json

import pandas as pd

from lingshu.benchmarks.generation import run_generation_benchmark
from lingshu.data.splits import make_cell_split, save_split
from lingshu.training.checkpoint import load_checkpoint


def _run_benchmark(tmp_path, cells, **options):
    """The benchmark on ``cells`` split 75/25, with a copy of training cells as the baseline."""
    data, split = tmp_path / "cells.h5ad", tmp_path / "split.json"
    cells.write_h5ad(data)
    save_split(make_cell_split(cells.obs_names, 0.25, seed=0), split)
    return run_generation_benchmark(
        tmp_path / "bench",
        dataset=str(data),
        split=str(split),
        baselines=("copy_training",),
        progress=False,
        **options,
    )


def test_generation_benchmark_scores_model_baselines_and_ceiling(tmp_path, counts_adata):
    table = _run_benchmark(
        tmp_path,
        counts_adata,
        preset="tiny",
        conditional_preset="tiny",
        depth_bins=2,
        max_steps=3,
        min_cells=1,
        sampling_steps=(2, 4),
    )
    names = set(map(str, table.index))
    assert {"lingshu (2 steps)", "lingshu (4 steps)", "priors alone (network off)"} <= names
    assert {
        "lingshu conditional (cell_type) (2 steps)",
        "lingshu conditional (cell_type): priors alone (network off)",
    } <= names
    assert "copy_training" in names
    report = tmp_path / "bench" / "report"
    assert (report / "report.md").is_file() and (report / "metrics.csv").is_file()
    assert "ceiling" in (report / "metrics.csv").read_text().lower()
    timings = json.loads((tmp_path / "bench" / "timings.json").read_text())
    assert {"train_label_free_s", "train_conditional_s", "generate_lingshu_2_steps_s", "evaluate_s"} <= set(
        timings
    )
    # The headline model is label-free; the second is conditioned on the cell type and depth.
    assert load_checkpoint(tmp_path / "bench" / "model").model_config.n_contexts == 0
    config = load_checkpoint(tmp_path / "bench" / "model_conditional").model_config
    assert config.n_contexts == 3 and config.depth_bins == 2
    metrics = pd.read_csv(report / "metrics.csv", index_col=0)
    # Conditional cells carry their requested type, which the report scores against a classifier.
    assert 0 <= metrics.loc["lingshu conditional (cell_type) (2 steps)", "celltype_accuracy"] <= 1
    assert pd.isna(metrics.loc["lingshu (2 steps)"].get("celltype_accuracy", float("nan")))


def test_a_model_with_a_state_prior_is_also_scored_with_plain_unmasking(tmp_path):
    from tests.conftest import make_counts_adata

    table = _run_benchmark(
        tmp_path,
        make_counts_adata(n_cells=240, seed=3),
        preset="cpu",
        max_steps=3,
        min_cells=1,
        sampling_steps=(2,),
        conditional_key=None,
    )
    assert load_checkpoint(tmp_path / "bench" / "model").state_prior is not None
    names = set(map(str, table.index))
    assert {
        "lingshu (2 steps)",
        "plain unmasking (no state prior) (2 steps)",
        "priors alone (network off)",
    } <= names
