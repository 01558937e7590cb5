import json

import numpy as np
from typer.testing import CliRunner

from lingshu.benchmarks.speed import synthetic_counts
from lingshu.cli import app


def test_synthetic_counts_are_sparse_and_heavy_tailed():
    counts = synthetic_counts(200, 1000)
    assert (counts == 0).mean() > 0.8
    assert counts.max() > 50 and np.issubdtype(counts.dtype, np.integer)


def test_speed_benchmark_writes_json_with_every_figure(tmp_path):
    out = tmp_path / "speed.json"
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "speed",
            "--preset",
            "tiny",
            "--genes",
            "256",
            "--micro-batches",
            "2,4",
            "--train-steps",
            "1",
            "--sample-steps",
            "8",
            "--timed-sample-steps",
            "2",
            "--out",
            str(out),
            "--profile",
        ],
    )
    assert result.exit_code == 0, result.output
    profile = json.loads(out.with_suffix(".profile.json").read_text())
    assert profile["attention_kernel"] == "flash (CPU)" and "attention kernel: flash (CPU)" in result.output
    shares = [op["share"] for op in profile["top_ops"]]
    assert 0 < sum(shares) <= 1 + 1e-9 and shares == sorted(shares, reverse=True)
    assert "aten::mm" in [op["op"] for op in profile["top_ops"]]  # the matmuls must show up
    records = json.loads(out.read_text())
    assert [r["micro_batch"] for r in records] == [2, 4]
    for r in records:
        assert r["train_cells_per_s"] > 0 and r["sample_cells_per_s"] > 0 and r["cfg_cells_per_s"] > 0
        assert r["flops_per_cell_train"] > 0 and r["peak_host_ram_gb"] > 0
        assert r["device"].startswith("CPU")


def test_attention_kernel_is_read_from_the_operator_names():
    from lingshu.benchmarks.profile import attention_kernel

    assert (
        attention_kernel(["aten::mm", "aten::_scaled_dot_product_flash_attention_for_cpu"]) == "flash (CPU)"
    )
    assert (
        attention_kernel(["aten::_scaled_dot_product_flash_attention", "aten::_flash_attention_forward"])
        == "flash"
    )
    assert attention_kernel(["aten::_scaled_dot_product_efficient_attention"]) == "memory-efficient"
    assert attention_kernel(["aten::mm"]) == "none recorded"
