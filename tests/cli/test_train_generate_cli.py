import anndata as ad
import numpy as np
import scipy.sparse as sp
from typer.testing import CliRunner

from lingshu.cli import app

runner = CliRunner()


def _train_tiny(data, out, steps: int, *extra: str):
    """Run `lingshu train` on the tiny preset for a few steps."""
    args = ["train", str(data), *extra, "--preset", "tiny", "--max-steps", str(steps)]
    return runner.invoke(app, [*args, "--batch-size", "8", "--out", str(out), "--no-progress"])


def _generate(checkpoint, out, n_cells: int, steps: int, *extra: str):
    """Run `lingshu generate` without a progress bar."""
    args = ["generate", "--checkpoint", str(checkpoint), "--n-cells", str(n_cells), "--steps", str(steps)]
    return runner.invoke(app, [*args, *extra, "--out", str(out), "--no-progress"])


def test_train_then_generate_from_the_command_line(tmp_path, counts_adata):
    data = tmp_path / "cells.h5ad"
    counts_adata.write_h5ad(data)
    ckpt = tmp_path / "ckpt"
    result = _train_tiny(data, str(ckpt), 3)
    assert result.exit_code == 0, result.output
    assert "gene coverage" in result.output and (ckpt / "manifest.json").is_file()
    out = tmp_path / "gen.h5ad"
    result = _generate(ckpt, out, 3, 2)
    assert result.exit_code == 0, result.output
    generated = ad.read_h5ad(out)
    assert generated.n_obs == 3 and np.issubdtype(generated.X.dtype, np.integer)


def test_log_normalised_input_gives_a_clear_error_not_a_traceback(tmp_path, counts_adata):
    counts_adata.X = sp.csr_matrix(np.log1p(counts_adata.X.toarray().astype(np.float32)))
    data = tmp_path / "logged.h5ad"
    counts_adata.write_h5ad(data)
    result = runner.invoke(app, ["train", str(data), "--preset", "tiny", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "error:" in result.output and "log1p" in result.output
    assert "Traceback" not in result.output


def test_unknown_preset_and_missing_checkpoint_are_reported(tmp_path, counts_adata):
    data = tmp_path / "cells.h5ad"
    counts_adata.write_h5ad(data)
    result = runner.invoke(app, ["train", str(data), "--preset", "huge", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "unknown preset" in result.output
    result = runner.invoke(
        app,
        [
            "generate",
            "--checkpoint",
            str(tmp_path / "none"),
            "--n-cells",
            "2",
            "--out",
            str(tmp_path / "g.h5ad"),
        ],
    )
    assert result.exit_code == 2 and "checkpoint directory not found" in result.output


def test_holdout_split_excludes_its_cells_from_training(tmp_path, counts_adata):
    from lingshu.data.splits import make_cell_split, save_split
    from lingshu.training.checkpoint import load_checkpoint

    data = tmp_path / "cells.h5ad"
    counts_adata.write_h5ad(data)
    split = tmp_path / "split.json"
    save_split(make_cell_split(counts_adata.obs_names, 0.25, seed=0), split)
    result = _train_tiny(data, str(tmp_path / "c"), 2, "--holdout", str(split))
    assert result.exit_code == 0, result.output
    assert "training on 48 cells" in result.output
    assert load_checkpoint(tmp_path / "c").step == 2


def test_data_split_writes_train_and_held_out_files(tmp_path, counts_adata):
    from lingshu.data.splits import make_cell_split, save_split

    data = tmp_path / "cells.h5ad"
    counts_adata.write_h5ad(data)
    save_split(make_cell_split(counts_adata.obs_names, 0.25, seed=0), tmp_path / "split.json")
    result = runner.invoke(
        app,
        [
            "data",
            "split",
            str(data),
            "--split",
            str(tmp_path / "split.json"),
            "--out",
            str(tmp_path / "parts"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(tmp_path / "parts" / "held_out.h5ad").n_obs == 16
    assert ad.read_h5ad(tmp_path / "parts" / "train.h5ad").n_obs == 48


def test_conditional_train_and_generate_on_the_command_line(tmp_path, counts_adata):
    data = tmp_path / "cells.h5ad"
    counts_adata.write_h5ad(data)
    ckpt = tmp_path / "ckpt"
    result = _train_tiny(data, str(ckpt), 2, "--source-key", "cell_type")
    assert result.exit_code == 0, result.output
    out = tmp_path / "gen.h5ad"
    result = _generate(ckpt, out, 2, 1, "--condition", "cell_type=type2")
    assert result.exit_code == 0, result.output
    assert list(ad.read_h5ad(out).obs["cell_type"]) == ["type2", "type2"]
    result = runner.invoke(
        app,
        [
            "generate",
            "--checkpoint",
            str(ckpt),
            "--n-cells",
            "2",
            "--condition",
            "cell_type",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2 and "KEY=LABEL" in result.output


def test_train_reads_a_directory_of_shards(tmp_path, counts_adata):
    shards = tmp_path / "shards"
    shards.mkdir()
    counts_adata[:30].copy().write_h5ad(shards / "a.h5ad")
    counts_adata[30:].copy().write_h5ad(shards / "b.h5ad")
    result = _train_tiny(shards, tmp_path / "ckpt", 1)
    assert result.exit_code == 0, result.output
    assert "training on 64 cells" in result.output
    split = tmp_path / "split.json"
    split.write_text('{"held_out_cells": ["cell0"]}')
    result = _train_tiny(shards, tmp_path / "c2", 1, "--holdout", str(split))
    assert result.exit_code == 2 and "--holdout needs a single .h5ad file" in result.output


def test_depth_bins_and_their_table_width_from_the_command_line(tmp_path, counts_adata):
    data = tmp_path / "cells.h5ad"
    counts_adata.write_h5ad(data)
    for width, expected in (
        ("0", "depth prior (2 bins)"),
        ("5", "depth prior (2 bins, tables below count 5)"),
    ):
        ckpt = tmp_path / f"ckpt{width}"
        extra = ("--source-key", "cell_type", "--depth-bins", "2", "--depth-table-width", width)
        result = _train_tiny(data, str(ckpt), 1, *extra)
        assert result.exit_code == 0, result.output
        out = tmp_path / f"gen{width}.h5ad"
        assert _generate(ckpt, out, 2, 1).exit_code == 0
        assert ad.read_h5ad(out).uns["lingshu"]["model_priors"].endswith(expected)


def test_fine_tuning_starts_from_a_pretrained_checkpoint(tmp_path, counts_adata):
    from tests.conftest import make_counts_adata

    first, second = tmp_path / "first.h5ad", tmp_path / "second.h5ad"
    counts_adata.write_h5ad(first)
    other = make_counts_adata(n_cells=48, n_genes=30, seed=5)
    other.var_names = [f"GENE{j}" for j in range(20)] + [f"NEW{j}" for j in range(10)]
    other.write_h5ad(second)
    assert _train_tiny(first, tmp_path / "pre", 2).exit_code == 0
    result = _train_tiny(second, tmp_path / "tuned", 2, "--init-from", str(tmp_path / "pre"))
    assert result.exit_code == 0, result.output
    from lingshu.training.checkpoint import load_checkpoint

    known = load_checkpoint(tmp_path / "pre").vocabulary.genes
    genes = load_checkpoint(tmp_path / "tuned").vocabulary.genes
    added = genes[len(known) :]  # the second file's genes the first did not detect
    assert genes[: len(known)] == known and {f"NEW{j}" for j in range(10)} <= set(added)
    assert set(added) <= set(other.var_names) - set(known)
    assert (
        f"init-from: {len(known)} of this model's {len(genes)} genes carry the pretrained model's weights"
        in result.output
    )
    missing = _train_tiny(second, tmp_path / "x", 2, "--init-from", str(tmp_path / "nothing"))
    assert missing.exit_code == 2 and "checkpoint directory not found" in missing.output
