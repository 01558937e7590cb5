import json

import pytest
import torch

from lingshu.training.checkpoint import load_checkpoint, save_checkpoint
from lingshu.training.run import train

TINY = {"max_steps": 6, "batch_size": 8, "checkpoint_every": 3, "warmup_steps": 2}


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_is_self_describing(tmp_path, counts_adata):
    result = train(counts_adata, tmp_path / "ckpt", preset="tiny", train_overrides=TINY, progress=False)
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {
        "manifest.json",
        "config.json",
        "vocabulary.json",
        "conditions.json",
        "permutation.npy",
        "model.pt",
        "ema.pt",
        "optimizer.pt",
        "train_log.jsonl",
    } <= files
    manifest = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert manifest["step"] == 6 and len(manifest["data_fingerprint"]) == 64
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.vocabulary.genes == result.vocabulary.genes
    assert _states_equal(loaded.model_state, result.model_state)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dirs left


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"condition_keys": {"source": "cell_type"}, "depth_bins": 3},
        {
            "train_overrides": {"val_fraction": 0.25},
            "model_overrides": {"head": "tilted", "value_embedding": True},
        },
    ],
    ids=["unconditional", "cell-type-and-depth", "tilted-with-validation"],
)
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, counts_adata, options):
    options = dict(options)
    extra = options.pop("train_overrides", {})
    straight = train(
        counts_adata,
        tmp_path / "a",
        preset="tiny",
        train_overrides={**TINY, **extra},
        progress=False,
        **options,
    )
    train(
        counts_adata,
        tmp_path / "b",
        preset="tiny",
        train_overrides={**TINY, **extra, "max_steps": 3},
        progress=False,
        **options,
    )
    resumed = train(
        counts_adata,
        tmp_path / "b",
        preset="tiny",
        train_overrides={"max_steps": 6},
        resume=True,
        progress=False,
        **options,
    )
    assert resumed.step == straight.step == 6
    assert _states_equal(resumed.model_state, straight.model_state)
    assert _states_equal(resumed.ema_state["model"], straight.ema_state["model"])
    assert resumed.validation_log == straight.validation_log or all(
        a["val_nll"] == b["val_nll"] and a["step"] == b["step"]
        for a, b in zip(resumed.validation_log, straight.validation_log, strict=True)
    )
    if straight.best_state is not None:
        assert _states_equal(resumed.best_state, straight.best_state)


def test_validation_slice_is_logged_and_the_best_weights_are_kept_for_sampling(tmp_path, counts_adata):
    overrides = {**TINY, "val_fraction": 0.25, "val_every": 2}
    result = train(counts_adata, tmp_path / "v", preset="tiny", train_overrides=overrides, progress=False)
    assert [int(r["step"]) for r in result.validation_log] == [2, 4, 6]
    assert all(r["train_seconds"] > 0 and r["val_nll"] > 0 for r in result.validation_log)
    loaded = load_checkpoint(tmp_path / "v")
    assert (tmp_path / "v" / "validation.csv").is_file() and (tmp_path / "v" / "best.pt").is_file()
    best = loaded.best_validation
    assert best["val_nll"] == min(r["val_nll"] for r in result.validation_log)
    assert _states_equal(loaded.build_model().state_dict(), loaded.best_state)
    # The validation cells are never trained on: the fingerprint is of the whole file, but the
    # model saw 3/4 of the cells (the data loader's cell count).
    assert loaded.train_config.val_fraction == 0.25


def test_validation_fraction_must_leave_cells_on_both_sides(tmp_path, counts_adata):
    with pytest.raises(ValueError, match="val-fraction"):
        train(
            counts_adata,
            tmp_path / "x",
            preset="tiny",
            train_overrides={**TINY, "val_fraction": 1.0},
            progress=False,
        )


def test_same_seed_gives_the_same_model_and_another_seed_does_not(tmp_path, counts_adata):
    a = train(counts_adata, tmp_path / "a", preset="tiny", train_overrides=TINY, progress=False)
    b = train(counts_adata, tmp_path / "b", preset="tiny", train_overrides=TINY, progress=False)
    c = train(
        counts_adata,
        tmp_path / "c",
        preset="tiny",
        train_overrides={**TINY, "seed": 1},
        progress=False,
    )
    assert _states_equal(a.model_state, b.model_state)
    assert not _states_equal(a.model_state, c.model_state)


def test_a_stop_step_gives_the_full_schedules_weights_at_that_step(tmp_path, counts_adata):
    schedule = {**TINY, "max_steps": 8, "log_every": 1, "checkpoint_every": 4}

    def tiny(name: str, **overrides):
        return train(
            counts_adata,
            tmp_path / name,
            preset="tiny",
            train_overrides={**schedule, **overrides},
            progress=False,
        )

    straight = tiny("a")
    stopped = tiny("b", stop_step=5)
    assert stopped.step == 5 and load_checkpoint(tmp_path / "b").step == 5
    # The learning rates of the first five steps are the 8-step schedule's, not a 5-step one's.
    assert [r["lr"] for r in stopped.log] == [r["lr"] for r in straight.log][:5]
    assert stopped.log[-1]["lr"] > straight.log[-1]["lr"]
    # Resuming does not inherit the stop: it goes on to the schedule's end, as if never stopped.
    resumed = train(counts_adata, tmp_path / "b", preset="tiny", resume=True, progress=False)
    assert resumed.step == 8
    assert _states_equal(resumed.model_state, straight.model_state)
    with pytest.raises(ValueError, match="stop_step must be in"):
        tiny("c", stop_step=9)


def test_resume_refuses_other_data_and_overwrite_needs_resume(tmp_path, counts_adata):
    train(counts_adata, tmp_path / "a", preset="tiny", train_overrides=TINY, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(counts_adata, tmp_path / "a", preset="tiny", train_overrides=TINY, progress=False)
    other = counts_adata[:40].copy()
    with pytest.raises(ValueError, match="data differ"):
        train(other, tmp_path / "a", preset="tiny", resume=True, progress=False)


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, counts_adata, monkeypatch):
    result = train(counts_adata, tmp_path / "ckpt", preset="tiny", train_overrides=TINY, progress=False)
    before = sorted(p.name for p in (tmp_path / "ckpt").iterdir())

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    result.step = 99
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(result, tmp_path / "ckpt")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == before
    assert load_checkpoint(tmp_path / "ckpt").step == 6
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_gradient_accumulation_matches_one_big_batch(tmp_path, counts_adata):
    whole = train(counts_adata, tmp_path / "a", preset="tiny", train_overrides=TINY, progress=False)
    accumulated = train(
        counts_adata,
        tmp_path / "b",
        preset="tiny",
        train_overrides={**TINY, "micro_batch_size": 3},
        progress=False,
    )
    for key, value in whole.model_state.items():
        torch.testing.assert_close(accumulated.model_state[key], value, rtol=1e-4, atol=1e-5)


def test_activation_checkpointing_changes_nothing_but_memory(tmp_path, counts_adata, monkeypatch):
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    plain = train(counts_adata, tmp_path / "a", preset="tiny", train_overrides=TINY, progress=False)
    recomputed = train(
        counts_adata,
        tmp_path / "b",
        preset="tiny",
        train_overrides={**TINY, "activation_checkpointing": True},
        progress=False,
    )
    assert recomputed.train_config.activation_checkpointing and len(calls) > 0
    assert _states_equal(plain.model_state, recomputed.model_state)


def test_bf16_autocast_changes_the_loss_only_by_rounding(tmp_path, counts_adata):
    overrides = {**TINY, "log_every": 1}
    fp32 = train(counts_adata, tmp_path / "a", preset="tiny", train_overrides=overrides, progress=False)
    bf16 = train(
        counts_adata,
        tmp_path / "b",
        preset="tiny",
        train_overrides={**overrides, "precision": "bf16"},
        progress=False,
    )
    losses_fp32 = torch.tensor([r["loss"] for r in fp32.log])
    losses_bf16 = torch.tensor([r["loss"] for r in bf16.log])
    assert len(losses_fp32) == TINY["max_steps"]
    torch.testing.assert_close(losses_bf16, losses_fp32, rtol=2e-2, atol=0)
    assert not torch.equal(losses_bf16, losses_fp32)  # bf16 really ran
    assert all(v.dtype == torch.float32 for v in bf16.model_state.values() if v.is_floating_point())
    with pytest.raises(ValueError, match="precision must be one of"):
        train(
            counts_adata, tmp_path / "c", preset="tiny", train_overrides={"precision": "fp8"}, progress=False
        )
