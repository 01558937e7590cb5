"""Data-parallel training (2 CPU processes, gloo) gives the single-process model."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import pytest
import torch

from lingshu.training import distributed
from lingshu.training.checkpoint import load_checkpoint
from lingshu.training.run import train

TINY = {"max_steps": 3, "batch_size": 8, "checkpoint_every": 3, "warmup_steps": 2}


@pytest.fixture
def ddp_worker(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # spawned processes inherit sys.path
    import ddp_worker

    yield ddp_worker
    sys.modules.pop("ddp_worker", None)


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture
def one_thread():
    """Each of the 2 spawned processes gets one of the 2 cores; the reference run uses the same
    single-threaded kernels (with 2 threads, reduction order alone moves weights by ~1e-5)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_processes_train_the_single_process_model(tmp_path, counts_adata, ddp_worker, one_thread):
    single = train(counts_adata, tmp_path / "single", preset="tiny", train_overrides=TINY, progress=False)
    saves = tmp_path / "saves.txt"
    # Two micro-batches of 2 cells per rank: gradients are accumulated, then all-reduced once.
    overrides = {**TINY, "micro_batch_size": 2}
    options = {"preset": "tiny", "train_overrides": overrides, "progress": False, "device": "cpu"}
    started = time.perf_counter()
    distributed.launch(ddp_worker.train_recording_saves, 2, saves, counts_adata, tmp_path / "ddp", options)
    print(f"2-process run: {time.perf_counter() - started:.1f} s")
    # Written once, by rank 0 (checkpoint_every == max_steps: one save, no final re-save).
    assert saves.read_text().split() == ["0"]
    parallel = load_checkpoint(tmp_path / "ddp", with_optimizer=True)
    assert parallel.step == single.step == 3 and parallel.optimizer_state is not None
    weights = _max_difference(parallel.model_state, single.model_state)
    ema = _max_difference(parallel.ema_state["model"], single.ema_state["model"])
    print(f"max |weight difference| 2 processes vs 1: {weights:.3g} (EMA {ema:.3g})")
    for key, value in single.model_state.items():
        torch.testing.assert_close(parallel.model_state[key], value, rtol=0, atol=1e-5)
    for key, value in single.ema_state["model"].items():
        torch.testing.assert_close(parallel.ema_state["model"][key], value, rtol=0, atol=1e-5)
    assert parallel.log[-1]["loss"] == pytest.approx(single.log[-1]["loss"], rel=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "saves.txt", "single"]  # no temp dirs


def test_batch_must_split_evenly_over_processes():
    distributed.check_batch_size(8, 2)
    with pytest.raises(ValueError, match="not divisible by the 3 training processes"):
        distributed.check_batch_size(8, 3)
    assert [distributed.shard(8, r, 2) for r in range(2)] == [slice(0, 4), slice(4, 8)]


def test_cli_resumes_a_run_in_two_processes(tmp_path, counts_adata, one_thread):
    """`lingshu train --devices 2 --resume` continues a 2-step run to the single-process 3-step model."""
    from typer.testing import CliRunner

    from lingshu.cli import app

    data = tmp_path / "cells.h5ad"
    counts_adata.write_h5ad(data)
    common = ["train", str(data), "--preset", "tiny", "--batch-size", "8", "--no-progress"]
    runner = CliRunner()
    result = runner.invoke(app, [*common, "--max-steps", "3", "--out", str(tmp_path / "single")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*common, "--max-steps", "2", "--out", str(tmp_path / "ddp")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*common, "--devices", "3", "--out", str(tmp_path / "odd")])
    assert result.exit_code == 2 and "not divisible by the 3 training processes" in result.output
    started = time.perf_counter()
    resume = ["--max-steps", "3", "--resume", "--devices", "2", "--out", str(tmp_path / "ddp")]
    result = runner.invoke(app, [*common, *resume])
    print(f"2-process CLI resume: {time.perf_counter() - started:.1f} s")
    assert result.exit_code == 0, result.output
    assert "in 2 processes" in result.output and "step 3" in result.output
    single, parallel = load_checkpoint(tmp_path / "single"), load_checkpoint(tmp_path / "ddp")
    assert parallel.step == 3
    difference = _max_difference(parallel.model_state, single.model_state)
    print(f"max |weight difference| CLI 2-process resume vs 1: {difference:.3g}")
    for key, value in single.model_state.items():
        torch.testing.assert_close(parallel.model_state[key], value, rtol=0, atol=1e-5)


def test_an_error_in_a_process_is_raised_with_its_own_type():
    """A bad-input ValueError inside a spawned process reaches the caller (and the CLI's
    error message) as a ValueError, not as a wrapped multiprocessing exception."""
    with pytest.raises(ValueError, match="invalid literal"):
        distributed.launch(functools.partial(int, "not a number"), 2)
