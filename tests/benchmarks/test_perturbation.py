import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from lingshu.benchmarks.perturbation import (
    CELL_EVAL_CEILING,
    HALF_SPLIT,
    resolve_methods,
    run_perturbation_benchmark,
)
from lingshu.data.perturbation_splits import split_from_dict
from lingshu.evaluation.perturbation_baselines import PERTURBATION_BASELINES

pytest.importorskip(
    "cell_eval", reason="needs the perturbation extra: pip install 'lingshu-cell[perturbation]'"
)


@pytest.fixture(scope="module")
def result(toy_perturbation_task, tmp_path_factory):
    record, oracle = toy_perturbation_task
    split = split_from_dict(record, name="toy")
    methods = {**PERTURBATION_BASELINES, "oracle": oracle}
    return run_perturbation_benchmark(
        split, methods, tmp_path_factory.mktemp("out"), seed=0, plots=True, umap=False
    )


def test_metrics_csv_has_one_row_per_method_and_block(result):
    table = pd.read_csv(result.out_dir / "metrics.csv")
    methods = [*PERTURBATION_BASELINES, "oracle", HALF_SPLIT, CELL_EVAL_CEILING]
    assert sorted(zip(table["method"], table["block"], strict=True)) == sorted(
        (m, b) for m in methods for b in ("new context", "doubles")
    )
    assert dict(zip(table["method"], table["kind"], strict=True))["oracle"] == "model"
    for column in ("mae", "pearson_delta", "overlap_at_N", "pr_auc", "score_vs_perturbation_mean"):
        assert column in table


def test_oracle_and_additive_shift_beat_the_trivial_baselines(result):
    table = result.metrics.set_index(["block", "method"])
    for block in ("new context", "doubles"):
        assert table.loc[(block, "oracle"), "score_vs_perturbation_mean"] > 0.3
        assert table.loc[(block, "additive_shift"), "pearson_delta"] > 0.8
        assert table.loc[(block, "control"), "pearson_delta"] < 0.5
    assert table.loc[("doubles", "additive_shift"), "score_vs_perturbation_mean"] > 0.1
    # PDS exists where two perturbations share a context (c2), not for the lone double in c1.
    assert table.loc[("new context", "oracle"), "discrimination_score_l1"] == 1.0
    assert np.isnan(table.loc[("doubles", "oracle"), "discrimination_score_l1"])
    assert table.loc[("new context", CELL_EVAL_CEILING), "pearson_delta"] > 0.8


def test_report_and_figures_are_written(result):
    report = (result.out_dir / "report.md").read_text()
    assert "## new context" in report and "## doubles" in report and "synthetic" in report
    for path in result.figures.values():
        assert (result.out_dir / path).stat().st_size > 1000
    assert len(result.figures) == 3  # bars and two LFC scatters (UMAP skipped: umap-learn compiles slowly)
    predicted = ad.read_h5ad(result.out_dir / "predictions" / "additive_shift.h5ad")
    assert np.issubdtype(predicted.X.dtype, np.integer) and predicted.n_obs == 150


def test_a_method_returning_the_wrong_cells_is_rejected(toy_perturbation_task, tmp_path):
    record, oracle = toy_perturbation_task
    split = split_from_dict(record)

    def too_few(train, split, requests, seed):
        return oracle(train, split, requests, seed)[:-1]

    with pytest.raises(ValueError, match="'too_few' returned cells"):
        run_perturbation_benchmark(split, {"too_few": too_few}, tmp_path / "out", plots=False)


def test_unknown_method_lists_the_registry():
    with pytest.raises(KeyError, match="additive_shift"):
        resolve_methods(["nope"])


def test_user_split_file_is_accepted(toy_perturbation_task, tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(toy_perturbation_task[0]))
    result = run_perturbation_benchmark(path, ["control"], tmp_path / "out", plots=False)
    # The score's reference (the perturbation mean) is added, so that every method gets a score.
    assert set(result.metrics["method"]) == {"control", "perturbation_mean", HALF_SPLIT, CELL_EVAL_CEILING}
    assert (
        result.metrics.loc[result.metrics["method"] == "control", "score_vs_perturbation_mean"].notna().all()
    )


def test_the_model_settings_line_says_how_targets_without_a_token_were_predicted():
    from lingshu.benchmarks.perturbation import model_settings

    def provenance(average: bool) -> dict:
        requests = {
            "0": {"perturbation": "KO1", "conditioned_on": "KO1", "prior_genes": ["KO1"]},
            "1": {
                "perturbation": "NEW",
                "conditioned_on": "control",
                "prior_genes": [],
                "average_shift": average,
            },
        }
        return {"checkpoint_step": 4, "n_steps": 3, "guidance": 2.0, "prior": True, "requests": requests}

    averaged = model_settings(provenance(True))
    assert "(0-1 genes pre-filled per condition)" in averaged
    assert "no token for NEW: sampled under the control token" in averaged
    assert "average perturbation shift and the prior injection" in averaged
    assert "average" not in model_settings(provenance(False))
