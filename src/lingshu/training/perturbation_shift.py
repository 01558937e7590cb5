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
Tilts of the parts of a combination add up, so an unseen
double A+B starts from the product of its singles' fold changes: the additive-shift answer, on
top of which the network learns what the data say beyond it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lingshu.data.conditions import ConditionSlot
from lingshu.data.loader import AlignedCounts
from lingshu.model.tilt import TOKEN_FLOOR, poisson_tail, tilt_offsets, token_values

# Counts added to both means before the ratio: keeps genes near zero from getting huge folds.
PSEUDO_COUNT = 0.1
MAX_TILT = 30.0
N_TOKENS = len(token_values())


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


def group_means(data: AlignedCounts, groups: np.ndarray, n_groups: int, chunk_size: int = 1024) -> np.ndarray:
    """Mean count per gene (n_groups, G) of the cells in each group (-1 = in no group)."""
    sums = np.zeros((n_groups, len(data.observed)))
    sizes = np.bincount(groups[groups >= 0], minlength=n_groups).astype(np.float64)
    for start in range(0, data.n_cells, chunk_size):
        rows = np.arange(start, min(start + chunk_size, data.n_cells))
        chosen = rows[groups[rows] >= 0]
        if len(chosen):
            np.add.at(sums, groups[chosen], data.rows(chosen).astype(np.float64))
    return sums / np.maximum(sizes, 1)[:, None]


def log_fold_changes(
    data: AlignedCounts,
    obs: pd.DataFrame,
    slot: ConditionSlot,
    context_key: str | None,
    contexts: list[str] | None = None,
) -> np.ndarray:
    """Log fold changes (C, n_labels, G) of each single-part label of ``slot`` against control.

    Per context with both the perturbation and controls: log((mean_p + c) / (mean_ctrl + c)),
    c = :data:`PSEUDO_COUNT`. With ``contexts`` (the source labels, C of them) row c holds the
    context's own fold change where the pair was seen, else a transfer from the contexts that saw
    the label: their mean, weighted by perturbed cells times the similarity of their controls to
    context c's (:func:`transfer_weights`, bandwidth chosen by leaving each seen context out).
    Without ``contexts``, one row (C = 1) pooled over contexts, weighted by perturbed cells.
    Labels never seen alone (only inside combinations) and the control label get 0.
    """
    labels = obs[slot.key].astype(str).to_numpy()
    cell_contexts = obs[context_key].astype(str).to_numpy() if context_key else np.zeros(len(obs), dtype=str)
    pairs = pd.Index(sorted(set(zip(cell_contexts, labels))))
    lookup = {pair: i for i, pair in enumerate(pairs)}
    groups = np.array([lookup[(c, lab)] for c, lab in zip(cell_contexts, labels)])
    means = group_means(data, groups, len(pairs))
    sizes = np.bincount(groups, minlength=len(pairs))
    names = sorted(set(cell_contexts))
    # own[row] maps each context index (in ``names``) that saw label ``row`` to its fold change.
    own: dict[int, dict[int, np.ndarray]] = {}
    seen_sizes = np.zeros((len(slot.labels), len(names)))
    for (context, label), index in lookup.items():
        control = lookup.get((context, slot.control_label))
        if label == slot.control_label or control is None or label not in slot.labels:
            continue
        row, at = slot.labels.index(label), names.index(context)
        own.setdefault(row, {})[at] = np.log((means[index] + PSEUDO_COUNT) / (means[control] + PSEUDO_COUNT))
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
        bandwidth = choose_bandwidth(own, seen_sizes, similarity, data.observed)
    result = np.zeros((len(targets), len(slot.labels), means.shape[1]))
    for row, folds in own.items():
        seen = np.array(sorted(folds))
        stacked = np.stack([folds[i] for i in seen])
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
    own: dict[int, dict[int, np.ndarray]], sizes: np.ndarray, similarity: np.ndarray, observed: np.ndarray
) -> float:
    """The bandwidth of :data:`BANDWIDTHS` that best predicts each seen context's own fold
    changes from the other contexts' (mean squared error over observed genes, leaving one seen
    context out at a time); infinity (plain pooling) when no label is seen in three contexts."""
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
            stacked = np.stack([folds[i][observed] for i in others])
            for k, bandwidth in enumerate(BANDWIDTHS):
                guess = transfer_weights(sizes[row, others], closeness, bandwidth) @ stacked
                errors[k] += np.mean((guess - truth[observed]) ** 2)
            trials += 1
    return float(BANDWIDTHS[int(np.argmin(errors))]) if trials else np.inf


def calibrate_tilts(
    base: np.ndarray,
    log_folds: np.ndarray,
    table: np.ndarray,
    iterations: int = 32,
    pseudo_count: float = 0.0,
    tail: np.ndarray | None = None,
) -> np.ndarray:
    """Tilts theta (P, G) so that base(k) * exp(theta * table[g, k]) has its mean fold-changed.

    The fold applies as it was measured: with ``pseudo_count`` c the wanted mean is
    (mean + c) * fold - c (floored at 1% of the base mean), so a fold measured as
    (m_p + c) / (m_ctrl + c) gives back m_p in its own context, and a gene rising from almost
    nothing rises by the measured amount rather than by a multiple of almost nothing.

    ``base`` (G, 281) are the control token probabilities (as the model's token prior floors
    them), ``log_folds`` (P, G) the wanted log fold changes of the mean, ``table`` from
    :func:`tilt_table` (and ``tail``, what a raise adds past the highest count, from
    :func:`lingshu.model.tilt.poisson_tail`). The tilted mean rises monotonically with theta, so bisection on
    [-MAX_TILT, MAX_TILT] finds it (32 halvings: theta to ~1e-8); genes with no control counts,
    or no change, keep theta = 0. Tokens above a gene's highest non-negligible one are left out
    of its sums (floored at 1e-9 and never raised, they barely move its mean), which makes sparse genes cheap.
    """
    values = token_values()
    log_base = np.log(np.clip(base, TOKEN_FLOOR, None))
    base_mean = base @ values
    # Tokens up to the highest one above the floor: most genes use a few dozen of the 281.
    widths = N_TOKENS - np.argmax(((base > TOKEN_FLOOR) | (table > 0))[:, ::-1], axis=1)
    tilts = np.zeros_like(log_folds)
    todo = np.argwhere((np.abs(log_folds) > 1e-3) & (base_mean[None, :] > 0))
    todo = todo[np.argsort(widths[todo[:, 1]], kind="stable")]
    for chunk in np.array_split(todo, max(1, len(todo) // 4096)):
        if not len(chunk):
            continue
        p, g = chunk[:, 0], chunk[:, 1]
        width = int(widths[g].max())
        target = (base_mean[g] + pseudo_count) * np.exp(log_folds[p, g]) - pseudo_count
        target = np.maximum(target, 0.01 * base_mean[g])
        low, high = np.full(len(g), -MAX_TILT), np.full(len(g), MAX_TILT)
        for _ in range(iterations):
            middle = (low + high) / 2
            raised = None if tail is None else tail[g, :width]
            offsets = tilt_offsets(middle[:, None], table[g, :width], values[:width], raised)
            logits = log_base[g, :width] + offsets
            weights = np.exp(logits - logits.max(1, keepdims=True))
            mean = (weights @ values[:width]) / weights.sum(1)
            below = mean < target
            low, high = np.where(below, middle, low), np.where(below, high, middle)
        tilts[p, g] = (low + high) / 2
    return tilts
