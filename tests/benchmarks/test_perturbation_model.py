import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from lingshu.benchmarks.perturbation_model import on_genes
from lingshu.cli import app
from lingshu.training.checkpoint import load_checkpoint

runner = CliRunner()


def test_predictions_are_moved_onto_the_training_genes_with_zeros_for_undetected_ones():
    predicted = ad.AnnData(
        X=sp.csr_matrix(np.array([[1, 2], [3, 4]], dtype=np.int32)),
        var=pd.DataFrame(index=["b", "d"]),
        obs=pd.DataFrame({"pert": ["x", "y"]}, index=["p0", "p1"]),
    )
    moved = on_genes(predicted, pd.Index(["a", "b", "c", "d"]))
    np.testing.assert_array_equal(moved.X.toarray(), [[0, 1, 0, 2], [0, 3, 0, 4]])
    assert list(moved.var_names) == ["a", "b", "c", "d"] and list(moved.obs["pert"]) == ["x", "y"]


def test_the_model_runs_through_the_perturbation_benchmark_with_its_ablation(toy_perturbation_task, tmp_path):
    pytest.importorskip(
        "cell_eval", reason="needs the perturbation extra: pip install 'lingshu-cell[perturbation]'"
    )
    split = tmp_path / "toy.json"
    split.write_text(json.dumps(toy_perturbation_task[0]))
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["benchmark", "perturbation", "--split", str(split), "--methods", "lingshu,control"]
        + ["--preset", "tiny", "--max-steps", "3", "--batch-size", "16", "--ablation", "--no-plots"]
        + ["--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "metrics.csv")
    methods = set(table["method"])
    assert {"lingshu", "control", "lingshu S=8 w=0", "lingshu S=1 w=2", "lingshu S=8 w=2 no prior"} <= methods
    assert {"lingshu S=8 no shift prior", "lingshu S=8 tilts summed"} <= methods
    kinds = dict(zip(table["method"], table["kind"], strict=False))
    # The priors alone run beside the model only (not beside each ablation variant).
    assert [m for m, k in kinds.items() if k == "priors"] == ["lingshu priors alone (network off)"]
    assert {k for m, k in kinds.items() if m.startswith("lingshu") and "priors alone" not in m} == {"model"}
    # The ablation's reference S (the tiny preset's 8) reuses the main model; S=1 and 32 train their
    # own, and so do the model without the shift prior and the one that sums a double's tilts.
    assert sorted(p.name for p in (out / "ablation_models").iterdir()) == [
        "model_S1",
        "model_S32",
        "model_no_shift_prior",
        "model_tilts_summed",
    ]
    without = load_checkpoint(out / "ablation_models" / "model_no_shift_prior").model_config
    assert not without.perturbation_prior and load_checkpoint(out / "model").model_config.perturbation_prior
    summed = load_checkpoint(out / "ablation_models" / "model_tilts_summed").model_config
    assert summed.combination_rule == "tilts"
    assert load_checkpoint(out / "model").model_config.combination_rule == "log means"
    report = (out / "report.md").read_text()
    assert (
        "## Model settings" in report
        and "- `lingshu`: checkpoint step 3, 3 unmasking steps, guidance w=2.0" in report
        and "model tables: token prior, context prior, shift prior (per context, combined log means)"
        in report
    )
    assert "**Verdict, `lingshu`**: Pearson-delta" in report and "; its priors alone Pearson-delta" in report
    # One verdict per block, the model's: ablation variants have no priors row of their own.
    assert report.count("**Verdict") == report.count("**Verdict, `lingshu`**") == table["block"].nunique()
    predicted = ad.read_h5ad(out / "predictions" / "lingshu.h5ad")
    assert predicted.uns["lingshu"]["guidance"] == 2.0 and predicted.uns["lingshu"]["n_steps"] == 3
    assert list(predicted.var_names) == [f"g{i}" for i in range(predicted.n_vars)]


def test_a_pretrained_model_runs_beside_the_same_architecture_trained_from_scratch(
    toy_perturbation_task, tmp_path
):
    pytest.importorskip(
        "cell_eval", reason="needs the perturbation extra: pip install 'lingshu-cell[perturbation]'"
    )
    from lingshu.training.run import train

    split = tmp_path / "toy.json"
    split.write_text(json.dumps(toy_perturbation_task[0]))
    cells = ad.read_h5ad(toy_perturbation_task[0]["file"])
    # Pretrained without labels (the cpu architecture), on the toy file's genes.
    train(
        cells,
        tmp_path / "pre",
        preset="cpu",
        train_overrides={"max_steps": 2, "batch_size": 16},
        progress=False,
    )
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["benchmark", "perturbation", "--split", str(split), "--methods", "lingshu,control"]
        + ["--max-steps", "2", "--batch-size", "16", "--no-plots", "--out", str(out)]
        + ["--pretrained", str(tmp_path / "pre")],
    )
    assert result.exit_code == 0, result.output
    kinds = dict(pd.read_csv(out / "metrics.csv")[["method", "kind"]].drop_duplicates().values)
    assert kinds["lingshu"] == kinds["lingshu pretrained"] == "model"
    assert (
        kinds["lingshu priors alone (network off)"]
        == kinds["lingshu pretrained priors alone (network off)"]
        == "priors"
    )
    fresh, tuned = load_checkpoint(out / "model"), load_checkpoint(out / "model_pretrained")
    # Both take the pretrained architecture (not --preset small's transformer); only one its weights.
    assert fresh.model_config.encoder == tuned.model_config.encoder == "cell_mlp"
    # Without --preset both also train on the pretrained model's schedule (the cpu preset's
    # per-gene learning-rate scale, not small's), under the command line's steps and batch.
    assert fresh.train_config.gene_lr_scale == tuned.train_config.gene_lr_scale == 0.05
    assert fresh.step == tuned.step == 2 and fresh.train_config.batch_size == 16
    report = (out / "report.md").read_text()
    assert "**Verdict, `lingshu pretrained`**" in report and "**Verdict, `lingshu`**" in report


def test_a_cell_mlp_ablation_has_no_compression_variants_and_skips_the_rule_without_doubles(tmp_path):
    from lingshu.benchmarks.perturbation_model import LingshuPredictor, ablation_methods

    base = LingshuPredictor(model_dir=tmp_path / "model", preset="cpu")
    methods = ablation_methods(tmp_path / "ablation", base, combinations=False)
    assert sorted(methods) == sorted(
        ["lingshu w=0", "lingshu w=1", "lingshu w=2", "lingshu w=3", "lingshu w=2 no prior"]
        + ["lingshu no shift prior"]
    )
    # Every guidance variant samples the base model; the model without the shift prior trains its own.
    assert {m.model_dir for name, m in methods.items() if name.startswith("lingshu w=")} == {base.model_dir}
    assert methods["lingshu no shift prior"].model_overrides == {"perturbation_prior": False}
    with_doubles = ablation_methods(tmp_path / "ablation", base)
    assert with_doubles["lingshu tilts summed"].model_overrides == {"combine_log_means": False}
