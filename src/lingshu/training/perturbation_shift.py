"""The perturbation shift prior: each perturbation token's mean fold change, as a logit tilt.

For every perturbation (a single gene, or a cytokine) seen in training, the fold change of each
gene's mean count against the control cells of the same context, averaged over contexts (log
scale, weighted by cells). The model applies it as an exponential tilt of the token distribution,
``logit[k] += theta_g * count_k`` (the natural parameter of a Poisson or negative binomial: a
Poisson(mu) tilted so becomes Poisson(mu * e^theta)), with theta calibrated so that the tilted
control distribution has the fold-changed mean. An empirical distribution gives unseen counts a
tiny floor, and a linear tilt of that floor jumps from nothing to all the mass (knife-edge), so a
raising tilt (theta > 0) lifts the counts the control cells show for the gene and, with a Poisson
continuation (:func:`lingshu.model.tilt.poisson_tail`), the counts above them; without one a
large raise saturates at the controls' highest count. A lowering tilt acts on every count, so the
mass always moves towards zero (even where controls never showed a zero).
A combination A+B gets the tilt under which each gene's mean log1p(count) moves by its parts'
summed shifts (:func:`log_expression_shifts`; the model keeps them and forms the tilt:
``MaskPredictor.combination_tilt``), so an unseen double starts from the additive answer in
log expression, on top of which the network learns what the data say beyond it. Folds carried
to a context that never saw the perturbation are first shrunk by their sampling noise
(:mod:`lingshu.training.fold_shrinkage`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lingshu.data.conditions import ConditionSlot
from lingshu.data.loader import AlignedCounts
from lingshu.model.tilt import PSEUDO_COUNT, poisson_tail, token_values
from lingshu.training.fold_shrinkage import log_fold_variance, shrink_log_folds


def tilt_table(token_counts: np.ndarray) -> np.ndarray:
    """What a raising tilt multiplies (G, 281): each token's decoded count where the control
    cells show that token for the gene (``token_counts`` > 0), else 0 (left untilted)."""
    return np.where(np.asarray(token_counts) > 0, token_values()[None, :], 0.0)


def raising_rule(frequencies: np.ndarray, with_tail: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """What a raising tilt multiplies (G, 281) and adds past each gene's highest count.

    Without a tail (None) a raise reaches only the counts ``frequencies`` show
    (:func:`tilt_table`); with the Poisson continuation (:func:`~lingshu.model.tilt.poisson_tail`)
    it reaches every count.
    """
    if not with_tail:
        return tilt_table(frequencies), None
    return np.broadcast_to(token_values(), frequencies.shape).copy(), poisson_tail(frequencies)


@dataclass(frozen=True)
class PairMoments:
    """Per (context, label) pair of cells, numbered in sorted order (``lookup``): cell count,
    mean and per-cell variance of every gene's count, and mean log1p(count) (pairs x G)."""

    lookup: dict[tuple[str, str], int]
    sizes: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    log_means: np.ndarray


def pair_moments(
    data: AlignedCounts, obs: pd.DataFrame, label_key: str, context_key: str | None, chunk_size: int = 1024
) -> PairMoments:
    """:class:`PairMoments` of every (context, label) pair in one pass over the cells; without
    ``context_key`` every cell is in context ''. A pair of one cell has variance 0."""
    labels = obs[label_key].astype(str).to_numpy()
    contexts = obs[context_key].astype(str).to_numpy() if context_key else np.zeros(len(obs), dtype=str)
    lookup = {pair: i for i, pair in enumerate(sorted(set(zip(contexts, labels))))}
    groups = np.array([lookup[pair] for pair in zip(contexts, labels)])
    sums = np.zeros((len(lookup), len(data.observed)))
    squares, log_sums = np.zeros_like(sums), np.zeros_like(sums)
    sizes = np.bincount(groups, minlength=len(lookup)).astype(np.float64)
    for start in range(0, data.n_cells, chunk_size):
        rows = np.arange(start, min(start + chunk_size, data.n_cells))
        counts = data.rows(rows).astype(np.float64)
        np.add.at(sums, groups[rows], counts)
        np.add.at(squares, groups[rows], counts**2)
        np.add.at(log_sums, groups[rows], np.log1p(counts))
    means = sums / np.maximum(sizes, 1)[:, None]
    variances = np.maximum(squares - sizes[:, None] * means**2, 0) / np.maximum(sizes - 1, 1)[:, None]
    return PairMoments(lookup, sizes, means, variances, log_sums / np.maximum(sizes, 1)[:, None])


def log_expression_shifts(
    moments: PairMoments, slot: ConditionSlot, contexts: list[str], observed: np.ndarray
) -> np.ndarray:
    """Each single-part label's shift in mean log1p(count) against control (C, n_labels, G),
    per context of ``contexts`` where the context has both the label's cells and controls;
    NaN where it has not (genes not ``observed``: 0)."""
    log_means = moments.log_means
    result = np.full((len(contexts), len(slot.labels), log_means.shape[1]), np.nan)
    for (context, label), index in moments.lookup.items():
        control = moments.lookup.get((context, slot.control_label))
        if context in contexts and label in slot.labels and control is not None:
            result[contexts.index(context), slot.labels.index(label)] = log_means[index] - log_means[control]
    result[..., ~observed] = 0.0
    return result


def log_fold_changes(
    data: AlignedCounts,
    obs: pd.DataFrame,
    slot: ConditionSlot,
    context_key: str | None,
    contexts: list[str] | None = None,
    moments: PairMoments | None = None,
) -> np.ndarray:
    """Log fold changes (C, n_labels, G) of each single-part label of ``slot`` against control.

    Per context with both the perturbation and controls: log((mean_p + c) / (mean_ctrl + c)),
    c = :data:`PSEUDO_COUNT`. With ``contexts`` (the source labels, C of them) row c holds the
    context's own fold change where the pair was seen, as measured, else a transfer from the
    contexts that saw the label: their fold changes shrunk by their sampling noise
    (:func:`~lingshu.training.fold_shrinkage.shrink_log_folds`: a source's noise is only noise
    elsewhere), averaged with weights of perturbed cells times the similarity of their controls
    to context c's (:func:`transfer_weights`, bandwidth chosen by leaving each seen context out).
    Without ``contexts``, one row (C = 1) pooled over contexts, weighted by perturbed cells.
    Labels never seen alone (only inside combinations) and the control label get 0.
    ``moments`` (:func:`pair_moments` of these cells) saves the pass over the data when given.
    """
    moments = moments or pair_moments(data, obs, slot.key, context_key)
    lookup, sizes, means, variances = moments.lookup, moments.sizes, moments.means, moments.variances
    names = sorted({context for context, _ in lookup})
    # own[row] maps each context index (in ``names``) that saw label ``row`` to its fold change,
    # shrunk[row] to the same shrunk by its noise: what travels to other contexts.
    own: dict[int, dict[int, np.ndarray]] = {}
    shrunk: dict[int, dict[int, np.ndarray]] = {}
    seen_sizes = np.zeros((len(slot.labels), len(names)))
    for (context, label), index in lookup.items():
        control = lookup.get((context, slot.control_label))
        if label == slot.control_label or control is None or label not in slot.labels:
            continue
        row, at = slot.labels.index(label), names.index(context)
        fold = np.log((means[index] + PSEUDO_COUNT) / (means[control] + PSEUDO_COUNT))
        own.setdefault(row, {})[at] = fold
        if contexts:
            noise = log_fold_variance(
                means[index],
                variances[index],
                sizes[index],
                means[control],
                variances[control],
                sizes[control],
                PSEUDO_COUNT,
            )
            shrunk.setdefault(row, {})[at] = shrink_log_folds(fold, noise)
        seen_sizes[row, at] = sizes[index]
    targets = [names.index(c) if c in names else -1 for c in contexts] if contexts else [-1]
    # Similarity between contexts with controls (NaN elsewhere: plain pooling); only a
    # per-context table transfers by it.
    similarity = np.full((len(names), len(names)), np.nan)
    bandwidth = np.inf
    if contexts:
        with_controls = [i for i, name in enumerate(names) if (name, slot.control_label) in lookup]
        control_rows = [lookup[(names[i], slot.control_label)] for i in with_controls]
        pairwise = control_similarity(means[control_rows], data.observed)
        similarity[np.ix_(with_controls, with_controls)] = pairwise
        bandwidth = choose_bandwidth(own, seen_sizes, similarity, data.observed, shrunk)
    result = np.zeros((len(targets), len(slot.labels), means.shape[1]))
    for row, folds in own.items():
        seen = np.array(sorted(folds))
        travelling = shrunk.get(row, folds)  # pooled into one row (no contexts): as measured
        stacked = np.stack([travelling[i] for i in seen])
        for out, target in enumerate(targets):
            if target in folds:
                result[out, row] = folds[target]
            else:
                closeness = similarity[target, seen] if target >= 0 else np.full(len(seen), np.nan)
                weights = transfer_weights(seen_sizes[row, seen], closeness, bandwidth)
                result[out, row] = weights @ stacked
    result[..., ~data.observed] = 0.0
    return result


# Bandwidths tried for the similarity weighting; infinity is plain pooling by perturbed cells.
BANDWIDTHS = (0.01, 0.02, 0.05, 0.1, 0.2, np.inf)


def control_similarity(control_means: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Pearson correlation (C, C) between contexts' control profiles: log1p of each context's
    mean counts scaled to 10,000, over the observed genes."""
    totals = np.maximum(control_means[:, observed].sum(1, keepdims=True), 1e-12)
    profiles = np.log1p(control_means[:, observed] / totals * 1e4)
    return np.corrcoef(profiles) if len(profiles) > 1 else np.ones((1, 1))


def transfer_weights(sizes: np.ndarray, similarity: np.ndarray, bandwidth: float) -> np.ndarray:
    """Normalised weights of the contexts that saw a label, for a context that did not:
    perturbed cells x exp((r - 1) / bandwidth), r their controls' correlation with its controls
    (plain cell weights where r is unknown or the bandwidth infinite)."""
    weights = np.asarray(sizes, dtype=np.float64)
    if np.isfinite(bandwidth) and not np.isnan(similarity).any():
        weights = weights * np.exp((similarity - 1.0) / bandwidth)
    return weights / max(weights.sum(), 1e-300)


def choose_bandwidth(
    own: dict[int, dict[int, np.ndarray]],
    sizes: np.ndarray,
    similarity: np.ndarray,
    observed: np.ndarray,
    travelling: dict[int, dict[int, np.ndarray]] | None = None,
) -> float:
    """The bandwidth of :data:`BANDWIDTHS` that best predicts each seen context's own fold
    changes from the other contexts' (``travelling``: what they carry to other contexts, by
    default ``own``; mean squared error over observed genes, leaving one seen context out at a
    time); infinity (plain pooling) when no label is seen in three contexts."""
    travelling = own if travelling is None else travelling
    errors = np.zeros(len(BANDWIDTHS))
    trials = 0
    for row, folds in own.items():
        if len(folds) < 3:
            continue
        for left_out, truth in folds.items():
            others = np.array([i for i in folds if i != left_out])
            closeness = similarity[left_out, others]
            if np.isnan(closeness).any():
                continue
            stacked = np.stack([travelling[row][i][observed] for i in others])
            for k, bandwidth in enumerate(BANDWIDTHS):
                guess = transfer_weights(sizes[row, others], closeness, bandwidth) @ stacked
                errors[k] += np.mean((guess - truth[observed]) ** 2)
            trials += 1
    return float(BANDWIDTHS[int(np.argmin(errors))]) if trials else np.inf
