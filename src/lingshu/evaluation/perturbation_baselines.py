"""Perturbation baselines and the predictor interface every method (the model included) follows.

A predictor gets the training cells of a split, the split itself and a list of requests (one per
held-out (context, perturbation), with the number of real held-out cells), and returns that many
new cells per request as raw integer counts over the training genes, labelled in
``obs[split.context_key]`` and ``obs[split.perturbation_key]``.

The baselines draw overdispersed negative-binomial counts (or resample real cells): Poisson cells
or fractional expected counts would be scored wrongly (see DESIGN.md, "Scoring pitfalls").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from lingshu.data.perturbation_splits import PerturbationSplit
from lingshu.evaluation.baselines import MIN_DISPERSION, negative_binomial_moments, sample_negative_binomial
from lingshu.evaluation.preprocess import count_matrix

COMBINATION_SEPARATOR = "+"


@dataclass(frozen=True)
class CellRequest:
    """Predict ``n_cells`` cells of ``perturbation`` in ``context``."""

    context: str
    perturbation: str
    n_cells: int


class Predictor(Protocol):
    """Anything called as ``predictor(train, split, requests, seed) -> AnnData`` (see module doc)."""

    def __call__(
        self, train: AnnData, split: PerturbationSplit, requests: Sequence[CellRequest], seed: int
    ) -> AnnData: ...


def requests_for(held_out: AnnData, split: PerturbationSplit) -> list[CellRequest]:
    """One request per held-out pair of the split, sized like its real held-out cells."""
    contexts = held_out.obs[split.context_key].astype(str).to_numpy()
    perts = held_out.obs[split.perturbation_key].astype(str).to_numpy()
    return [
        CellRequest(
            p.context, p.perturbation, int(((contexts == p.context) & (perts == p.perturbation)).sum())
        )
        for p in split.held_out
    ]


@dataclass
class GroupStats:
    """Per (context, perturbation) group of the training cells: mean counts and mean depth."""

    means: dict[tuple[str, str], np.ndarray]
    depths: dict[tuple[str, str], float]
    rows: dict[tuple[str, str], np.ndarray]
    counts: sp.csr_matrix

    @classmethod
    def of(cls, train: AnnData, split: PerturbationSplit) -> GroupStats:
        counts = count_matrix(train)
        keys = pd.MultiIndex.from_arrays(
            [train.obs[split.context_key].astype(str), train.obs[split.perturbation_key].astype(str)]
        )
        codes, groups = pd.factorize(keys)
        # One sparse indicator product gives every group's summed counts at once.
        indicator = sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))))
        sums = np.asarray((indicator @ counts).todense())
        sizes = np.bincount(codes)
        library = np.asarray(counts.sum(axis=1)).ravel()
        means, depths, rows = {}, {}, {}
        for i, key in enumerate(groups):
            key = (str(key[0]), str(key[1]))
            means[key] = sums[i] / sizes[i]
            rows[key] = np.flatnonzero(codes == i)
            depths[key] = float(library[rows[key]].mean())
        return cls(means, depths, rows, counts)

    def perturbations_in(self, context: str, control: str) -> list[str]:
        return [p for c, p in self.means if c == context and p != control]


def _control_key(split: PerturbationSplit, context: str, stats: GroupStats) -> tuple[str, str]:
    key = (context, split.control_label)
    if key not in stats.means:
        raise ValueError(f"no training {split.control_label!r} cells in context {context!r}")
    return key


def _wrap(
    blocks: Sequence[sp.spmatrix],
    requests: Sequence[CellRequest],
    train: AnnData,
    split: PerturbationSplit,
    name: str,
) -> AnnData:
    """Stack per-request cells into one labelled AnnData of int32 counts."""
    contexts = np.repeat([r.context for r in requests], [r.n_cells for r in requests])
    perts = np.repeat([r.perturbation for r in requests], [r.n_cells for r in requests])
    obs = pd.DataFrame(
        {split.context_key: pd.Categorical(contexts), split.perturbation_key: pd.Categorical(perts)},
        index=[f"{name}-{i}" for i in range(len(perts))],
    )
    counts = (
        sp.vstack([sp.csr_matrix(b) for b in blocks]).tocsr() if blocks else sp.csr_matrix((0, train.n_vars))
    )
    adata = AnnData(X=counts.astype(np.int32), obs=obs, var=pd.DataFrame(index=train.var_names))
    adata.uns["lingshu_predictor"] = {"name": name}
    return adata


def _nb_from_means(
    name: str,
    mean_of: Callable[[CellRequest, GroupStats], np.ndarray],
    train: AnnData,
    split: PerturbationSplit,
    requests: Sequence[CellRequest],
    seed: int,
) -> AnnData:
    """NB cells with the predicted per-gene means and the context's control dispersion.

    The dispersion comes from the real control cells of the same context (what the prediction is
    anchored on), floored so that every gene stays overdispersed.
    """
    stats = GroupStats.of(train, split)
    rng = np.random.default_rng(seed)
    blocks = []
    for request in requests:
        control_rows = stats.rows[_control_key(split, request.context, stats)]
        _, phi = negative_binomial_moments(stats.counts[control_rows], MIN_DISPERSION)
        mean = np.clip(mean_of(request, stats), 0.0, None)
        blocks.append(sample_negative_binomial(mean, phi, request.n_cells, rng))
    return _wrap(blocks, requests, train, split, name)


def control(
    train: AnnData, split: PerturbationSplit, requests: Sequence[CellRequest], seed: int = 0
) -> AnnData:
    """Predict no effect: the context's real control cells, resampled with replacement."""
    stats = GroupStats.of(train, split)
    rng = np.random.default_rng(seed)
    blocks = []
    for request in requests:
        rows = stats.rows[_control_key(split, request.context, stats)]
        blocks.append(stats.counts[rng.choice(rows, size=request.n_cells, replace=True)])
    return _wrap(blocks, requests, train, split, "control")


def perturbation_mean_profile(context: str, split: PerturbationSplit, stats: GroupStats) -> np.ndarray:
    """cell-eval's baseline for counts: the mean of per-perturbation training means, in the context.

    Where the context has perturbed training cells (Norman, Papalexi) this is exactly cell-eval's
    ``build_base_mean_adata`` restricted to the context, on the count scale. Where it has none
    (Kang: a held-out cell type has only its controls in training) the means of every training
    perturbation of every context are averaged after scaling each to the depth of this context's
    controls; it then carries other cell types' identity, which is why it is weak there.
    """
    control_key = _control_key(split, context, stats)
    own = stats.perturbations_in(context, split.control_label)
    if own:
        return np.mean([stats.means[(context, p)] for p in own], axis=0)
    others = [key for key in stats.means if key[1] != split.control_label]
    if not others:
        raise ValueError("the training cells hold no perturbed cells; perturbation_mean needs some")
    depth = stats.depths[control_key]
    return np.mean([stats.means[key] * depth / max(stats.depths[key], 1e-12) for key in others], axis=0)


def perturbation_mean(
    train: AnnData, split: PerturbationSplit, requests: Sequence[CellRequest], seed: int = 0
) -> AnnData:
    """NB cells around :func:`perturbation_mean_profile` (the same profile for every perturbation)."""
    return _nb_from_means(
        "perturbation_mean",
        lambda r, stats: perturbation_mean_profile(r.context, split, stats),
        train,
        split,
        requests,
        seed,
    )


def target_shift(target: str, context: str, split: PerturbationSplit, stats: GroupStats) -> np.ndarray | None:
    """Mean shift of ``target`` from control, in the depth of ``context``'s controls; None if unseen.

    Seen in the same context (a single of a held-out double), that context's own shift is used;
    otherwise the shifts of every context where it was perturbed are averaged, each scaled by the
    ratio of control depths so that lines sequenced at different depths combine.
    """
    if (context, target) in stats.means:
        return stats.means[(context, target)] - stats.means[_control_key(split, context, stats)]
    depth = stats.depths[_control_key(split, context, stats)]
    shifts = []
    for other, pert in stats.means:
        if pert == target and (other, split.control_label) in stats.means:
            control_key = (other, split.control_label)
            scale = depth / max(stats.depths[control_key], 1e-12)
            shifts.append((stats.means[(other, pert)] - stats.means[control_key]) * scale)
    return np.mean(shifts, axis=0) if shifts else None


def additive_shift_profile(request: CellRequest, split: PerturbationSplit, stats: GroupStats) -> np.ndarray:
    """Context's control mean + the target's shift (A+B: the sum of the seen singles' shifts).

    A target seen nowhere (Papalexi's unseen targets) falls back to the mean shift of the
    perturbation-mean profile, i.e. this baseline then equals ``perturbation_mean``.
    """
    control_mean = stats.means[_control_key(split, request.context, stats)]
    parts = request.perturbation.split(COMBINATION_SEPARATOR)
    shifts = [s for s in (target_shift(t, request.context, split, stats) for t in parts) if s is not None]
    if not shifts:
        return perturbation_mean_profile(request.context, split, stats)
    return np.clip(control_mean + np.sum(shifts, axis=0), 0.0, None)


def additive_shift(
    train: AnnData, split: PerturbationSplit, requests: Sequence[CellRequest], seed: int = 0
) -> AnnData:
    """NB cells around :func:`additive_shift_profile`."""
    return _nb_from_means(
        "additive_shift",
        lambda r, stats: additive_shift_profile(r, split, stats),
        train,
        split,
        requests,
        seed,
    )


def real_half_split(held_out: AnnData, split: PerturbationSplit, seed: int = 0) -> tuple[AnnData, AnnData]:
    """The real-vs-real ceiling: each held-out group's real cells shuffled into two disjoint halves.

    Returns ``(reference_half, predicted_half)``; an odd cell is left out so the halves match.
    """
    rng = np.random.default_rng(seed)
    keys = (
        held_out.obs[split.context_key].astype(str)
        + "\x00"
        + held_out.obs[split.perturbation_key].astype(str)
    ).to_numpy()
    first, second = [], []
    for key in dict.fromkeys(keys):
        rows = rng.permutation(np.flatnonzero(keys == key))
        half = rows.size // 2
        if half < 1:
            raise ValueError(
                f"held-out group {key.replace(chr(0), ' / ')!r} has < 2 cells; cannot half-split"
            )
        first.append(rows[:half])
        second.append(rows[half : 2 * half])
    return held_out[np.concatenate(first)].copy(), held_out[np.concatenate(second)].copy()


# The methods registry: name -> predictor. The benchmark adds the model here as "lingshu".
PERTURBATION_BASELINES: Mapping[str, Predictor] = {
    "control": control,
    "perturbation_mean": perturbation_mean,
    "additive_shift": additive_shift,
}
