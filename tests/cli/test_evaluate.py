import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from typer.testing import CliRunner

from lingshu.cli import app
from lingshu.cli.evaluate import parse_generated

runner = CliRunner()


def _cells(n: int, seed: int, shift: float = 0.0, integer: bool = True) -> AnnData:
    """Small NB counts with two cell types (profiles fixed, sample seeded)."""
    profile = np.random.default_rng(99)
    means = np.exp(profile.normal(0, 1, size=(2, 40))) * np.exp(shift)
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 2, size=n)
    counts = rng.negative_binomial(3, 3 / (3 + means[types])).astype(float)
    matrix = counts if integer else np.log1p(counts)
    return AnnData(
        X=sp.csr_matrix(matrix),
        obs=pd.DataFrame({"cell_type": [f"t{t}" for t in types]}, index=[f"c{seed}-{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"G{i}" for i in range(40)]),
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("h5ad")
    paths = {}
    for name, adata in {
        "real": _cells(80, 1),
        "train": _cells(200, 2),
        "model": _cells(80, 3),
        "worse": _cells(80, 4, shift=1.0),
        "logged": _cells(80, 5, integer=False),
    }.items():
        paths[name] = folder / f"{name}.h5ad"
        adata.write_h5ad(paths[name])
    (folder / "broken.h5ad").write_text("not an h5ad file")
    paths["broken"] = folder / "broken.h5ad"
    return paths


def _run(*args: str):
    return runner.invoke(app, ["evaluate", *args, "--no-plots", "--no-progress"])


def test_help_explains_every_option():
    result = runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in (
        "--real",
        "--generated",
        "--generated-name",
        "--train",
        "--out",
        "--baselines",
        "--scvi-max-epochs",
        "--seed",
        "--layer",
        "--label-key",
        "--max-cells",
        "--plots",
        "--progress",
    ):
        assert option in result.output
    assert "independent_genes" in result.output and "ceiling" in result.output
    assert "independent_genes_by_group" in result.output


def test_evaluate_writes_a_report_and_prints_the_table(files, tmp_path):
    out = tmp_path / "report"
    result = _run(
        "--real",
        str(files["real"]),
        "--generated",
        f"lingshu={files['model']}",
        "--generated",
        f"worse={files['worse']}",
        "--train",
        str(files["train"]),
        "--baselines",
        "independent_genes,copy_training",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "metrics.csv", index_col="method")
    assert list(table.index) == [
        "lingshu",
        "worse",
        "independent_genes",
        "copy_training",
        "real_ceiling",
    ]
    assert table.loc["lingshu", "mmd"] < table.loc["worse", "mmd"]
    assert bool(table.loc["copy_training", "memorisation_flag"])
    assert "real_ceiling" in result.output and "(ceiling)" in result.output
    assert "mmd ↓" in result.output and "memorisation_flag" in result.output
    assert (out / "report.md").exists() and (out / "report.html").exists()


def test_the_grouped_lookup_baseline_and_the_unbiased_mmd_reach_the_report(files, tmp_path):
    out = tmp_path / "report"
    result = _run(
        "--real",
        str(files["real"]),
        "--generated",
        f"worse={files['worse']}",
        "--train",
        str(files["train"]),
        "--baselines",
        "independent_genes_by_group",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "metrics.csv", index_col="method")
    assert list(table.index) == ["worse", "independent_genes_by_group", "real_ceiling"]
    assert table.loc["independent_genes_by_group", "mmd_unbiased"] < table.loc["worse", "mmd_unbiased"]
    assert table.loc["worse", "mmd_pvalue"] <= 0.01
    assert "mmd_unbiased ↓" in result.output and "mmd_pvalue ↑" in result.output


def test_generated_names_can_be_given_separately(files, tmp_path):
    result = _run(
        "--real",
        str(files["real"]),
        "--generated",
        str(files["model"]),
        "--generated-name",
        "mine",
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "metrics.csv", index_col="method")
    assert list(table.index) == ["mine", "real_ceiling"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--generated", "missing.h5ad"], "not found"),
        (["--generated", "{logged}"], "non-integer"),
        (["--generated", "{broken}"], "could not read"),
        (["--baselines", "copy_training"], "--train"),
        (["--generated", "{model}", "--baselines", "gan"], "unknown baseline"),
        (["--generated", "{model}", "--generated", "{model}"], "two generated sets"),
        ([], "nothing to evaluate"),
    ],
)
def test_bad_input_gives_a_clear_error_not_a_traceback(files, tmp_path, args, message):
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    result = _run("--real", str(files["real"]), *args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_real_file_is_reported(tmp_path, files):
    result = _run(
        "--real",
        str(tmp_path / "nope.h5ad"),
        "--generated",
        str(files["model"]),
        "--out",
        str(tmp_path / "o"),
    )
    assert result.exit_code == 2 and "--real file not found" in result.output


def test_parse_generated_rules():
    parsed = parse_generated(["a=x.h5ad", "dir/y.h5ad"], [])
    assert {k: str(v) for k, v in parsed.items()} == {"a": "x.h5ad", "y": "dir/y.h5ad"}
    with pytest.raises(ValueError, match="one name per file"):
        parse_generated(["x.h5ad", "y.h5ad"], ["only_one"])


def test_an_output_path_that_is_a_file_is_reported(tmp_path, files):
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    result = _run("--real", str(files["real"]), "--generated", str(files["model"]), "--out", str(blocker))
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output


def test_checkpoint_option_puts_the_validation_curve_in_the_report(files, tmp_path):
    from lingshu.data.io import read_counts
    from lingshu.training.run import train

    train(
        read_counts(files["train"]),
        tmp_path / "ckpt",
        preset="tiny",
        train_overrides={"max_steps": 4, "batch_size": 16, "val_fraction": 0.2, "val_every": 2},
        progress=False,
    )
    out = tmp_path / "report"
    args = ["evaluate", "--real", str(files["real"]), "--generated", f"m={files['model']}"]
    result = runner.invoke(
        app, [*args, "--checkpoint", str(tmp_path / "ckpt"), "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    curve = pd.read_csv(out / "learning_curve.csv")
    assert list(curve["step"]) == [2, 4]
    assert (out / "learning_curve.png").is_file()
    assert "learning_curve.png" in (out / "report.md").read_text()


def test_checkpoint_option_refuses_a_folder_that_is_not_a_checkpoint(files, tmp_path):
    result = _run(
        "--real",
        str(files["real"]),
        "--generated",
        str(files["model"]),
        "--checkpoint",
        str(tmp_path),
        "--out",
        str(tmp_path / "r"),
    )
    assert result.exit_code != 0 and "not a lingshu checkpoint" in result.output
