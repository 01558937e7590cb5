import anndata as ad
import numpy as np

from lingshu.cli import app
from lingshu.training.checkpoint import load_checkpoint
from tests.cli.test_train_generate_cli import _generate, _train_tiny, runner
from tests.conftest import make_perturbation_adata


def _predict(checkpoint, out, *extra: str):
    args = ["predict", "--checkpoint", str(checkpoint), *extra, "--out", str(out), "--no-progress"]
    return runner.invoke(app, args)


def test_train_a_perturbation_model_then_predict_from_the_command_line(tmp_path):
    data = tmp_path / "screen.h5ad"
    make_perturbation_adata(n_per_group=12).write_h5ad(data)
    ckpt = tmp_path / "ckpt"
    keys = ["--source-key", "cell_line", "--perturbation-key", "perturbation", "--control-label", "control"]
    result = _train_tiny(data, ckpt, 2, *keys, "--control-fraction", "0.2")
    assert result.exit_code == 0, result.output
    assert "controls capped at 20%" in result.output

    out = tmp_path / "pred.h5ad"
    result = _predict(ckpt, out, "--context", "ctxB", "--perturbation", "KO2", "--n-cells", "3")
    assert result.exit_code == 0, result.output
    assert "guidance w=2" in result.output and "prior on" in result.output
    predicted = ad.read_h5ad(out)
    assert predicted.n_obs == 3 and np.issubdtype(predicted.X.dtype, np.integer)
    assert set(predicted.obs["perturbation"]) == {"KO2"}

    table = tmp_path / "pairs.csv"
    table.write_text("context,perturbation,n_cells\nctxA,KO1+KO2,2\nctxB,control,1\n")
    result = _predict(ckpt, out, "--table", str(table), "--guidance", "0", "--no-prior")
    assert result.exit_code == 0, result.output
    assert list(ad.read_h5ad(out).obs["perturbation"]) == ["KO1+KO2", "KO1+KO2", "control"]

    # Guided generation is available on the generate command too.
    result = _generate(
        ckpt,
        tmp_path / "gen.h5ad",
        2,
        2,
        "--condition",
        "cell_line=ctxA",
        "--condition",
        "perturbation=KO1",
        "--guidance",
        "2",
    )
    assert result.exit_code == 0, result.output


def test_predict_reports_unknown_names_and_wrong_models_clearly(tmp_path, counts_adata):
    data = tmp_path / "screen.h5ad"
    make_perturbation_adata(n_per_group=8).write_h5ad(data)
    ckpt = tmp_path / "ckpt"
    keys = ["--source-key", "cell_line", "--perturbation-key", "perturbation", "--control-label", "control"]
    assert _train_tiny(data, ckpt, 1, *keys).exit_code == 0
    result = _predict(ckpt, tmp_path / "p.h5ad", "--context", "ctxA", "--perturbation", "KO9")
    assert result.exit_code == 2 and "never seen in training" in result.output
    assert "--unseen average" in result.output
    assert not (tmp_path / "p.h5ad").exists()
    result = _predict(
        ckpt, tmp_path / "p.h5ad", "--context", "ctxA", "--perturbation", "KO9", "--unseen", "mean"
    )
    assert result.exit_code == 2 and "unseen must be one of error, control, average" in result.output
    result = _predict(
        ckpt, tmp_path / "p.h5ad", "--context", "ctxA", "--perturbation", "KO9", "--unseen", "average"
    )
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(tmp_path / "p.h5ad").uns["lingshu"]["requests"]["0"]["average_shift"]
    result = _predict(ckpt, tmp_path / "p.h5ad", "--context", "ctxA")
    assert result.exit_code == 2 and "give --perturbation" in result.output
    result = _train_tiny(
        data, tmp_path / "c2", 1, "--perturbation-key", "perturbation", "--control-label", "ctl"
    )
    assert result.exit_code == 2 and "control label 'ctl' does not occur" in result.output

    plain = tmp_path / "plain.h5ad"
    counts_adata.write_h5ad(plain)
    assert _train_tiny(plain, tmp_path / "u", 1).exit_code == 0
    result = _predict(tmp_path / "u", tmp_path / "p.h5ad", "--perturbation", "KO1")
    assert result.exit_code == 2 and "without a perturbation condition" in result.output


def test_the_poisson_tail_is_on_for_cytokines_and_a_switch_and_combinations_sum_log_means_unless_told(
    tmp_path,
):
    data = tmp_path / "screen.h5ad"
    make_perturbation_adata(n_per_group=8).write_h5ad(data)
    keys = ["--source-key", "cell_line", "--perturbation-key", "perturbation", "--control-label", "control"]
    for name, extra, expected in (
        ("genetic", (), False),
        ("cytokine", ("--perturbation-kind", "cytokine"), True),
        ("switched", ("--poisson-tail",), True),
    ):
        result = _train_tiny(data, tmp_path / name, 1, *keys, *extra)
        assert result.exit_code == 0, result.output
        checkpoint = load_checkpoint(tmp_path / name)
        assert checkpoint.model_config.has_poisson_tail is expected
        assert ("Poisson tail" in checkpoint.model_config.priors()) is expected
        if expected:  # some gene's distribution continues past its highest control count
            assert checkpoint.model_state["tilt_tail"].abs().sum() > 0
        else:
            assert checkpoint.model_state.get("tilt_tail") is None
        # Combinations take their parts' summed log-expression shifts unless told otherwise.
        assert checkpoint.model_config.combination_rule == "log means"
        assert checkpoint.model_state["perturbation_log_shift"].abs().sum() > 0
        assert "perturbation_fold" not in checkpoint.model_state
    for rule, buffer in (("folds", "perturbation_fold"), ("tilts", None)):
        result = _train_tiny(data, tmp_path / rule, 1, *keys, "--combination", rule)
        assert result.exit_code == 0, result.output
        other = load_checkpoint(tmp_path / rule)
        assert other.model_config.combination_rule == rule
        assert "perturbation_log_shift" not in other.model_state
        assert (buffer in other.model_state) if buffer else "perturbation_fold" not in other.model_state
    result = _train_tiny(data, tmp_path / "bad", 1, *keys, "--combination", "products")
    assert result.exit_code != 0 and "log-means" in result.output
