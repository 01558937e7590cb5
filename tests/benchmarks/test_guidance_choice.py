"""Sampling settings chosen on a validation block of training pairs that mirrors the task."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lingshu.benchmarks.guidance_choice import (
    VALIDATION_BLOCK,
    pearson_delta,
    sweep_settings,
    validation_pairs,
    validation_task,
)
from lingshu.data.perturbation_splits import HeldOutPair, PerturbationSplit


def _cells(pairs: dict[tuple[str, str], int], n_genes: int = 12, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    rows, obs = [], []
    for (context, label), n in pairs.items():
        mean = np.full(n_genes, 5.0)
        if label != "ctrl":
            mean[: 1 + len(label) % 5] = 20.0  # each label raises a few genes
        rows.append(rng.poisson(mean, size=(n, n_genes)))
        obs += [(context, label)] * n
    frame = pd.DataFrame(obs, columns=["type", "pert"], index=[f"c{i}" for i in range(len(obs))])
    return ad.AnnData(X=sp.csr_matrix(np.vstack(rows).astype(np.int32)), obs=frame)


def _split(held: list[tuple[str, str, str]], kind: str = "cytokine") -> PerturbationSplit:
    return PerturbationSplit(
        dataset="toy",
        context_key="type",
        perturbation_key="pert",
        control_label="ctrl",
        held_out=tuple(HeldOutPair(c, p, b) for c, p, b in held),
        perturbation_kind=kind,
    )


def test_a_cytokine_in_unseen_types_is_validated_on_another_seen_type():
    types = [f"T{i}" for i in range(7)]
    train = _cells({**{(t, "ctrl"): 20 for t in types}, **{(t, "stim"): 20 for t in types[3:]}})
    split = _split([(t, "stim", "unseen types") for t in types[:3]])
    pairs = validation_pairs(train, split, seed=0)
    assert len(pairs) == 1 and pairs[0].perturbation == "stim" and pairs[0].context in types[3:]
    assert pairs[0].block == VALIDATION_BLOCK
    fit, block, val_split = validation_task(train, split, pairs)
    assert block.n_obs == 20 and set(block.obs["type"]) == {pairs[0].context}
    assert fit.n_obs == train.n_obs - 20 and val_split.held_out == tuple(pairs)
    # Every other stimulated type stays in training: the label stays seen.
    assert (fit.obs["pert"] == "stim").sum() == 60


def test_unseen_targets_are_validated_on_other_targets_of_the_same_context():
    targets = [f"G{i}" for i in range(9)]
    train = _cells({("THP1", "ctrl"): 30, **{("THP1", t): 15 for t in targets}})
    split = _split([("THP1", "NEW1", "unseen"), ("THP1", "NEW2", "unseen")], kind="genetic")
    pairs = validation_pairs(train, split, seed=0)
    assert len(pairs) == 3 and {p.perturbation for p in pairs} <= set(targets)
    # A label seen in just one other context is not held back there (it would become unseen).
    lone = _cells({("A", "ctrl"): 20, ("B", "ctrl"): 20, ("A", "KO"): 20, ("B", "X"): 20})
    pairs = validation_pairs(lone, _split([("B", "KO", "new context")], kind="genetic"), seed=0)
    assert [(p.context, p.perturbation) for p in pairs] == [("B", "X")]
    # A null-effect block is never mirrored (its pairs would only add noise to the choice).
    assert validation_pairs(lone, _split([("B", "KO", "new context (null effect)")]), seed=0) == []
    # Nothing comparable to hold back: no block (the kind's defaults apply).
    bare = _cells({("A", "ctrl"): 20, ("A", "KO"): 20, ("B", "ctrl"): 20})
    assert validation_pairs(bare, _split([("B", "KO", "new context")]), seed=0) == []


def test_pearson_delta_is_one_for_the_real_shift_and_zero_for_none():
    cells = _cells({("A", "ctrl"): 40, ("A", "stim"): 40})
    controls, real = cells[:40], cells[40:]
    assert pearson_delta(real, real, controls) == pytest.approx(1.0)
    assert pearson_delta(controls, real, controls) == 0.0
    with pytest.raises(ValueError, match="no cells"):
        pearson_delta(real[:0], real, controls)


def test_the_setting_with_the_best_validation_score_comes_first():
    train = _cells({("A", "ctrl"): 40, ("A", "stim"): 40, ("B", "ctrl"): 40, ("B", "stim"): 40})
    split = _split([("A", "stim", "held")])
    fit, block, val_split = validation_task(train, split, [HeldOutPair("B", "stim", VALIDATION_BLOCK)])
    controls = fit[(fit.obs["type"] == "B").to_numpy() & (fit.obs["pert"] == "ctrl").to_numpy()]

    unshifted = controls.copy()
    unshifted.obs["pert"] = "stim"  # predicted cells carry the requested label

    def predict_block(step: int, w: float, prior: bool) -> ad.AnnData:
        # Only w = 2 without the prior gives the real shift; the rest give the controls' profile.
        return block if (w == 2 and not prior) else unshifted

    table = sweep_settings(predict_block, block, fit, val_split, (True, False))
    assert len(table) == 8 and (table.iloc[0]["guidance"], table.iloc[0]["prior"]) == (2.0, False)
    assert table.iloc[0]["pearson_delta"] == pytest.approx(1.0)
    # Ties go to the smaller w.
    assert list(table.iloc[1:3]["guidance"]) == [0.0, 0.0]


def test_the_model_predicts_with_the_settings_its_validation_block_chose(tmp_path):
    from dataclasses import replace

    from lingshu.benchmarks.perturbation_model import LingshuPredictor
    from lingshu.evaluation.perturbation_baselines import CellRequest
    from tests.conftest import make_perturbation_adata

    cells = make_perturbation_adata()
    split = PerturbationSplit(
        dataset="toy",
        context_key="cell_line",
        perturbation_key="perturbation",
        control_label="control",
        held_out=(HeldOutPair("ctxB", "KO1", "new context"),),
    )
    held = (cells.obs["cell_line"] == "ctxB").to_numpy() & (cells.obs["perturbation"] == "KO1").to_numpy()
    train = cells[~held].copy()
    schedule = {"max_steps": 6, "checkpoint_every": 3, "batch_size": 16}
    model = LingshuPredictor(tmp_path / "model", preset="tiny", train_overrides=schedule, progress=False)
    predicted = model(train, split, [CellRequest("ctxB", "KO1", 5)], seed=0)
    sweep = pd.read_csv(tmp_path / "model_guidance_sweep.csv")
    # KO1 is seen in ctxA only, so the block is ctxB's other single target; at each of the
    # validation model's checkpoints (steps 3 and 6), 4 w x prior on/off.
    assert set(sweep["validation_pairs"]) == {"ctxB KO2"} and len(sweep) == 16
    assert sorted(set(sweep["step"])) == [3, 6]
    assert list(sweep["pearson_delta"]) == sorted(sweep["pearson_delta"], reverse=True)
    best = sweep.iloc[0]
    provenance = predicted.uns["lingshu"]
    assert provenance["guidance"] == best["guidance"] and bool(provenance["prior"]) == bool(best["prior"])
    assert provenance["chosen_on"].startswith(
        f"validation pairs ctxB KO2: Pearson-delta step {best['step']} w="
    )
    # The validation model never saw the block; the final model saw every training cell and
    # stopped at the step chosen, on the 6-step schedule.
    from lingshu.training.checkpoint import load_checkpoint
    from lingshu.training.run import data_fingerprint

    final = load_checkpoint(tmp_path / "model")
    assert final.data_fingerprint == data_fingerprint(train) and final.step == best["step"]
    assert final.train_config.max_steps == 6
    validation = load_checkpoint(tmp_path / "model_validation")
    assert validation.data_fingerprint != data_fingerprint(train) and validation.step == 6
    # The priors alone (same directory) read the model's choice; a given w is used as given.
    off = replace(model, network=False)(train, split, [CellRequest("ctxB", "KO1", 5)], seed=0)
    assert off.uns["lingshu"]["guidance"] == best["guidance"]
    fixed = replace(model, guidance=1.5)(train, split, [CellRequest("ctxB", "KO1", 5)], seed=0)
    assert fixed.uns["lingshu"]["guidance"] == 1.5 and "chosen_on" not in fixed.uns["lingshu"]
