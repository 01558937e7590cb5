"""Sampling settings of a perturbation model chosen on a validation block of its training pairs.

The guidance weight w (and, for genetic perturbations, whether the prior injection is used) is
not a constant per perturbation kind: a model is trained on the training cells minus a block of
(context, perturbation) pairs held back *like the split's held-out pairs*, predicts that block
under every setting of a small grid at each of its checkpoints, and the step and setting with the
best Pearson-delta there are the ones the final model (trained on every training cell, stopped
at that step of the same schedule) predicts the held-out pairs with
(:class:`lingshu.benchmarks.perturbation_model.LingshuPredictor`). The held-out cells are never
looked at.

How the block mirrors the task: where a held-out label is seen in other training contexts (a
cytokine in an unseen cell type, a target in a new cell line), the block is that label in other
training contexts that are not held out, keeping it seen in at least one context; where it is not
(an unseen combination or target), the block is other training pairs of the held-out contexts
with the same number of parts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import anndata as ad
import numpy as np
import pandas as pd

from lingshu.data.perturbation_splits import NULL_EFFECT_SUFFIX, HeldOutPair, PerturbationSplit
from lingshu.evaluation.preprocess import count_matrix, log_normalise

GUIDANCE_GRID = (0.0, 1.0, 2.0, 3.0)
VALIDATION_BLOCK = "validation"
MAX_PAIRS_PER_BLOCK = 3
MIN_VALIDATION_CELLS = 10
MAX_PREDICTED_CELLS = 200


def _pairs(adata: ad.AnnData, split: PerturbationSplit) -> pd.Series:
    """Cells per training (context, perturbation) pair, controls left out."""
    frame = pd.DataFrame(
        {
            "context": adata.obs[split.context_key].astype(str).to_numpy(),
            "perturbation": adata.obs[split.perturbation_key].astype(str).to_numpy(),
        }
    )
    sizes = frame.groupby(["context", "perturbation"]).size()
    return sizes[sizes.index.get_level_values("perturbation") != split.control_label]


def validation_pairs(train: ad.AnnData, split: PerturbationSplit, seed: int) -> list[HeldOutPair]:
    """Training pairs held back to choose sampling settings on (see the module docstring): per
    held-out block at most :data:`MAX_PAIRS_PER_BLOCK` and a third of its candidates, drawn
    with ``seed``. Empty where the training data offer no such pair."""
    sizes = _pairs(train, split)
    sizes = sizes[sizes >= MIN_VALIDATION_CELLS]
    seen_contexts: dict[str, set[str]] = {}
    for context, perturbation in sizes.index:
        seen_contexts.setdefault(perturbation, set()).add(context)
    held_contexts = {p.context for p in split.held_out}
    rng = np.random.default_rng([seed, 0x6D1])
    chosen: list[HeldOutPair] = []
    for block in split.blocks:
        if block.endswith(NULL_EFFECT_SUFFIX):
            continue  # pairs with no real effect would only add noise to the choice
        candidates = set()
        for pair in (p for p in split.held_out if p.block == block):
            elsewhere = seen_contexts.get(pair.perturbation, set()) - held_contexts
            if len(elsewhere) >= 2:  # holding one back keeps the label seen, as in the task
                candidates |= {(c, pair.perturbation) for c in elsewhere}
            else:
                n_parts = len(pair.perturbation.split("+"))
                candidates |= {
                    (c, p) for c, p in sizes.index if c == pair.context and len(p.split("+")) == n_parts
                }
        ordered = sorted(candidates - {(p.context, p.perturbation) for p in chosen})
        n = min(MAX_PAIRS_PER_BLOCK, max(1, len(ordered) // 3)) if ordered else 0
        for i in sorted(rng.choice(len(ordered), n, replace=False)):
            chosen.append(HeldOutPair(*ordered[i], VALIDATION_BLOCK))
    return chosen


def validation_task(
    train: ad.AnnData, split: PerturbationSplit, pairs: Sequence[HeldOutPair]
) -> tuple[ad.AnnData, ad.AnnData, PerturbationSplit]:
    """(training cells without the block, the block's cells, the split that holds it out)."""
    keys = set(zip(train.obs[split.context_key].astype(str), train.obs[split.perturbation_key].astype(str)))
    missing = [(p.context, p.perturbation) for p in pairs if (p.context, p.perturbation) not in keys]
    if missing:
        raise ValueError(f"validation pairs {missing} have no training cells")
    held = np.zeros(train.n_obs, dtype=bool)
    contexts = train.obs[split.context_key].astype(str).to_numpy()
    labels = train.obs[split.perturbation_key].astype(str).to_numpy()
    for pair in pairs:
        held |= (contexts == pair.context) & (labels == pair.perturbation)
    return train[~held].copy(), train[held].copy(), replace(split, held_out=tuple(pairs))


def pearson_delta(predicted: ad.AnnData, real: ad.AnnData, controls: ad.AnnData) -> float:
    """Pearson correlation over genes of the predicted and the real mean shift from the
    controls, in log-normalised expression (cell-eval's headline metric, without its DE)."""
    if min(predicted.n_obs, real.n_obs, controls.n_obs) == 0:
        raise ValueError("pearson_delta needs predicted, real and control cells (no cells in one)")
    base = _mean_log_expression(controls)
    return _correlation(_mean_log_expression(predicted) - base, _mean_log_expression(real) - base)


def _mean_log_expression(cells: ad.AnnData) -> np.ndarray:
    return log_normalise(count_matrix(cells)).mean(0)


def _correlation(shift_pred: np.ndarray, shift_real: np.ndarray) -> float:
    if shift_pred.std() == 0 or shift_real.std() == 0:
        return 0.0
    return float(np.corrcoef(shift_pred, shift_real)[0, 1])


def sweep_settings(
    predict_block: Callable[[int, float, bool], ad.AnnData],
    block: ad.AnnData,
    train: ad.AnnData,
    split: PerturbationSplit,
    prior_options: Sequence[bool],
    grid: Sequence[float] = GUIDANCE_GRID,
    steps: Sequence[int] = (0,),
) -> pd.DataFrame:
    """Pearson-delta on each validation pair of ``predict_block(step, w, prior)`` for every
    training step (in the order given) and setting; one row per (step, setting) with the mean
    over pairs, best first (ties: the earlier step, then the smaller w)."""

    def cells_of(cells: ad.AnnData, context: str, label: str) -> ad.AnnData:
        keep = (cells.obs[split.context_key].astype(str) == context) & (
            cells.obs[split.perturbation_key].astype(str) == label
        )
        return cells[keep.to_numpy()]

    # Each pair's control profile and real shift, computed once for every step and setting.
    pairs = []
    for p in split.held_out:
        real, controls = (
            cells_of(block, p.context, p.perturbation),
            cells_of(train, p.context, split.control_label),
        )
        if min(real.n_obs, controls.n_obs) == 0:
            raise ValueError(f"validation pair {p.context} {p.perturbation} has no real or control cells")
        base = _mean_log_expression(controls)
        pairs.append((p, base, _mean_log_expression(real) - base))
    records = []
    for step in steps:
        for prior in prior_options:
            for w in grid:
                predicted = predict_block(int(step), float(w), bool(prior))
                scores = []
                for p, base, shift_real in pairs:
                    mine = cells_of(predicted, p.context, p.perturbation)
                    if mine.n_obs == 0:
                        raise ValueError(
                            f"no predicted cells for validation pair {p.context} {p.perturbation}"
                        )
                    scores.append(_correlation(_mean_log_expression(mine) - base, shift_real))
                records.append(
                    {
                        "step": int(step),
                        "guidance": float(w),
                        "prior": bool(prior),
                        "pearson_delta": float(np.mean(scores)),
                    }
                )
    table = pd.DataFrame.from_records(records)
    return table.sort_values(
        ["pearson_delta", "step", "guidance"], ascending=[False, True, True], kind="stable"
    ).reset_index(drop=True)
