import sys
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lingshu.data.perturbation_splits import split_from_dict
from lingshu.evaluation.perturbation_scoring import (
    METRICS,
    block_summary,
    context_file,
    import_cell_eval,
    improvement_score,
    score_context,
    spearman_brown,
)

pytest.importorskip(
    "cell_eval", reason="needs the perturbation extra: pip install 'lingshu-cell[perturbation]'"
)

N_GENES = 40
SPLIT = split_from_dict(
    {
        "dataset": "toy",
        "context_key": "line",
        "perturbation_key": "pert",
        "control_label": "control",
        "held_out": [{"context": "c1", "perturbation": "A"}, {"context": "c1", "perturbation": "B"}],
    }
)


def cells(rng, pert: str, n: int) -> ad.AnnData:
    mean = np.full(N_GENES, 6.0)
    if pert == "A":
        mean[:8] *= 5.0
    elif pert == "B":
        mean[8:16] *= 0.1
        mean[16:20] *= 4.0
    x = rng.negative_binomial(4, 4 / (4 + mean), size=(n, N_GENES)).astype(np.int32)
    obs = pd.DataFrame(
        {"line": "c1", "pert": pert}, index=[f"{pert}-{rng.integers(1 << 40)}" for _ in range(n)]
    )
    return ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Real held-out A and B, a perfect prediction (fresh draws), a control prediction, the ceiling."""
    rng = np.random.default_rng(0)
    controls = cells(rng, "control", 80)
    real = context_file(ad.concat([cells(rng, "A", 60), cells(rng, "B", 60)]), controls, SPLIT, "real")
    perfect = context_file(ad.concat([cells(rng, "A", 60), cells(rng, "B", 60)]), controls, SPLIT, "pred")
    no_effect = ad.concat([cells(rng, "control", 60), cells(rng, "control", 60)])
    no_effect.obs["pert"] = ["A"] * 60 + ["B"] * 60
    no_effect = context_file(no_effect, controls, SPLIT, "pred")
    root = tmp_path_factory.mktemp("scoring")
    timings, tables = {}, {}
    for name, predicted in (("perfect", perfect), ("control", no_effect), ("ceiling", None)):
        started = time.perf_counter()
        tables[name] = score_context(real, predicted, SPLIT, root / name)
        timings[name] = time.perf_counter() - started
    print(f"cell-eval timings (s): {timings}")
    return tables


def test_every_metric_is_reported_per_perturbation(scored):
    table = scored["perfect"]
    assert list(table.index) == ["A", "B"]
    assert set(METRICS) - {"de_spearman_sig"} <= set(table.columns)
    assert table[["mae", "pearson_delta", "discrimination_score_l1", "overlap_at_N"]].notna().all().all()


def test_perfect_prediction_beats_the_control_predictor(scored):
    perfect, control = block_summary(scored["perfect"]), block_summary(scored["control"])
    assert perfect["pearson_delta"] > 0.9 > 0.5 > control["pearson_delta"]
    assert perfect["mae"] < control["mae"]
    assert perfect["discrimination_score_l1"] == 1.0
    assert perfect["overlap_at_N"] > 0.6 > control["overlap_at_N"]
    assert improvement_score(perfect, control) > 0.3
    assert improvement_score(control, control) == 0.0
    assert improvement_score(control, perfect) < 0.05


def test_cell_eval_ceiling_is_high_for_a_strong_effect(scored):
    ceiling = spearman_brown(block_summary(scored["ceiling"]))
    assert ceiling["pearson_delta"] > 0.8
    assert np.isnan(ceiling["mae"])  # no Spearman-Brown ceiling for an error metric


def test_single_perturbation_context_has_no_discrimination_score(tmp_path):
    rng = np.random.default_rng(1)
    split = split_from_dict({**SPLIT.to_dict(), "held_out": [{"context": "c1", "perturbation": "A"}]})
    real = context_file(cells(rng, "A", 30), cells(rng, "control", 30), split, "real")
    table = score_context(real, real, split, tmp_path)
    assert np.isnan(table.loc["A", "discrimination_score_l1"])
    assert table.loc["A", "pearson_delta"] == pytest.approx(1.0)


def test_fractional_counts_are_refused():
    rng = np.random.default_rng(2)
    expected = cells(rng, "A", 5)
    expected.X = sp.csr_matrix(expected.X.toarray() * 0.5 + 0.25)
    with pytest.raises(ValueError, match="not integer counts"):
        context_file(expected, cells(rng, "control", 5), SPLIT, "pred")


def test_missing_cell_eval_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "cell_eval", None)  # makes `import cell_eval` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'lingshu-cell\[perturbation\]'"):
        import_cell_eval()
