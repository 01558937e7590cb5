import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lingshu.data.writing import atomic_write_text
from lingshu.evaluation import GENERATION_METRICS, evaluate_generation

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cells(counts_factory):
    return {
        "train": counts_factory(400, seed=1, n_unassigned=10),
        "real": counts_factory(150, seed=2, n_unassigned=4),
        "good": counts_factory(150, seed=3),
        "shifted": counts_factory(150, seed=4, shift=1.5),
    }


@pytest.fixture(scope="module")
def full_report(cells, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    model = cells["good"].copy()
    del model.obs["cell_type"]  # unconditional model output
    table = evaluate_generation(
        cells["real"],
        {"model": model, "shifted": cells["shifted"]},
        cells["train"],
        out,
        seed=0,
        baselines=["independent_genes", "celltype_negative_binomial", "copy_training"],
        progress=False,
    )
    return table, out


def test_table_has_models_baselines_and_the_ceiling(full_report):
    table, _ = full_report
    assert list(table.index) == [
        "model",
        "shifted",
        "independent_genes",
        "celltype_negative_binomial",
        "copy_training",
        "real_ceiling",
    ]
    assert list(table["kind"]) == ["model"] * 2 + ["baseline"] * 3 + ["ceiling"]
    assert set(GENERATION_METRICS) <= set(table.columns)
    assert table.loc["real_ceiling", "n_cells"] == 150


def test_scores_rank_methods_as_constructed(full_report):
    table, _ = full_report
    assert table.loc["model", "mmd"] < table.loc["shifted", "mmd"]
    assert table.loc["model", "ilisi"] > table.loc["independent_genes", "ilisi"]
    assert table.loc["real_ceiling", "mmd"] < table.loc["independent_genes", "mmd"]
    # the unbiased MMD of a real-like sample is noise around 0, the shifted set is clearly off
    assert abs(table.loc["model", "mmd_unbiased"]) < 0.2 * table.loc["model", "mmd"]
    assert table.loc["model", "mmd_pvalue"] > 0.01 and table.loc["real_ceiling", "mmd_pvalue"] > 0.01
    assert table.loc["shifted", "mmd_pvalue"] <= 0.01
    # conditional labels exist only for the NB baseline, the shifted set and the ceiling
    assert np.isnan(table.loc["model", "celltype_accuracy"])
    assert table.loc["celltype_negative_binomial", "celltype_accuracy"] > 0.8


def test_copy_training_is_flagged_and_honest_sets_are_not(full_report):
    table, _ = full_report
    flags = table["memorisation_flag"]
    assert bool(flags["copy_training"]) and table.loc["copy_training", "memorisation_ratio"] == 0
    for name in ("model", "celltype_negative_binomial", "real_ceiling"):
        assert not bool(flags[name]), name
    # the ceiling is measured against training cells it was not drawn from: ratio ~1
    assert 0.8 < table.loc["real_ceiling", "memorisation_ratio"] < 1.25


def test_files_are_written(full_report):
    table, out = full_report
    names = {p.name for p in out.iterdir()}
    expected = {
        "metrics.csv",
        "metrics_meta.json",
        "report.md",
        "report.html",
        "proportions.csv",
        "markers.csv",
        "umap.png",
        "metric_bars.png",
        "celltype_proportions.png",
        "marker_dotplot.png",
    }
    assert expected <= names
    assert not [n for n in names if n.startswith(".")], "temporary files left behind"
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC
    csv = pd.read_csv(out / "metrics.csv", index_col="method")
    assert list(csv.index) == list(table.index)
    for column in ("mmd", "mmd_unbiased", "mmd_pvalue"):
        np.testing.assert_allclose(csv[column], table[column])


def test_meta_and_report_explain_directions_and_ceiling(full_report):
    _, out = full_report
    meta = json.loads((out / "metrics_meta.json").read_text())
    assert meta["metrics"]["mmd"]["higher_is_better"] is False
    assert meta["metrics"]["pearson_mean"]["direction"] == "↑"
    assert meta["ceiling"]["mode"] == "train_subsample"
    assert "celltype_accuracy" in meta["skipped"]["model"]
    report = (out / "report.md").read_text()
    assert "real_ceiling (ceiling)" in report and "mmd ↓" in report
    assert "mmd_unbiased ↓" in report and "mmd_pvalue ↑" in report
    assert "dominated by its diagonal" in report and "sampling noise" in report
    assert "How to read" in report and "## Cell-type proportions" in report
    assert "## Marker genes" in report and "umap.png" in report
    html = (out / "report.html").read_text()
    assert '<tr class="ceiling">' in html and "<img" in html


def test_marker_table_compares_real_and_generated(full_report):
    _, out = full_report
    markers = pd.read_csv(out / "markers.csv")
    assert {
        "method",
        "cell_type",
        "gene",
        "real_frac_expressing",
        "generated_frac_expressing",
        "real_mean",
        "generated_mean",
    } <= set(markers.columns)
    # the real set's markers are expressed more in their own type than in the others
    copy = markers[markers["method"] == "copy_training"]
    top = copy[copy["rank"] == 1]
    assert (top["real_mean"] > 0).all() and (top["generated_mean"] > 0).all()
    proportions = pd.read_csv(out / "proportions.csv", index_col="cell_type")
    np.testing.assert_allclose(proportions.sum(), 1.0)


def test_without_train_the_ceiling_is_a_half_split(cells, tmp_path):
    table = evaluate_generation(
        cells["real"],
        {"model": cells["good"]},
        None,
        tmp_path,
        progress=False,
        plots_enabled=False,
    )
    meta = json.loads((tmp_path / "metrics_meta.json").read_text())
    assert meta["ceiling"]["mode"] == "half_split"
    assert table.loc["real_ceiling", "n_cells"] == 75
    assert table["memorisation_ratio"].isna().all()
    assert table["memorisation_flag"].isna().all()
    assert "--train" in meta["skipped"]["model"]["memorisation_ratio"]
    assert not list(tmp_path.glob("*.png"))


def test_bad_inputs_raise_clear_errors(cells, tmp_path):
    with pytest.raises(ValueError, match="--train"):
        evaluate_generation(cells["real"], {}, None, tmp_path, baselines=["copy_training"])
    with pytest.raises(ValueError, match="unknown baselines"):
        evaluate_generation(cells["real"], {}, cells["train"], tmp_path, baselines=["gan"])
    logged = cells["good"].copy()
    logged.X = sp.csr_matrix(np.log1p(logged.X.toarray()))
    with pytest.raises(ValueError, match="generated 'model'.*non-integer"):
        evaluate_generation(cells["real"], {"model": logged}, None, tmp_path)
    with pytest.raises(ValueError, match="clash"):
        evaluate_generation(
            cells["real"],
            {"copy_training": cells["good"]},
            cells["train"],
            tmp_path,
            baselines=["copy_training"],
        )


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_counts_can_come_from_a_layer(cells, tmp_path):
    def logged_with_counts_layer(adata):
        out = adata.copy()
        out.layers["counts"] = out.X.copy()
        out.X = sp.csr_matrix(np.log1p(out.X.toarray()))
        return out

    real, model = logged_with_counts_layer(cells["real"]), logged_with_counts_layer(cells["good"])
    with pytest.raises(ValueError, match="non-integer"):
        evaluate_generation(real, {"model": model}, None, tmp_path, progress=False)
    table = evaluate_generation(
        real, {"model": model}, None, tmp_path, layer="counts", progress=False, plots_enabled=False
    )
    assert table.loc["model", "pearson_mean"] > 0.9


def test_labels_can_come_from_another_obs_column(cells, tmp_path):
    def relabel(adata):
        out = adata.copy()
        out.obs = out.obs.rename(columns={"cell_type": "annotation"})
        return out

    real, model = relabel(cells["real"]), relabel(cells["shifted"])
    plain = evaluate_generation(real, {"model": model}, None, tmp_path, progress=False, plots_enabled=False)
    assert plain["celltype_tvd"].isna().all()
    keyed = evaluate_generation(
        real,
        {"model": model},
        None,
        tmp_path,
        progress=False,
        plots_enabled=False,
        label_key="annotation",
    )
    assert keyed.loc["model", "celltype_accuracy"] > 0.8
