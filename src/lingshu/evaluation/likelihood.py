"""Held-out masked likelihood of a checkpoint beside its priors alone and lookup tables.

Rows, all scored on the same mask draws of the same held-out cells:
- the model (its network and priors);
- the same checkpoint with the network's contribution removed (its priors alone);
- reference tables fitted on the training cells: one token distribution per gene (global), one
  per true cell type and gene (an oracle a label-free model does not get), one per cell type x
  depth bin and gene (the lookup table a conditional model with depth tables amounts to).
Each table is shrunk towards the coarser one (global towards all genes pooled); the strength is
chosen on a validation slice of the training cells, never on the held-out cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lingshu.data.conditions import ConditionMap
from lingshu.data.depth import DEPTH_SLOT, library_sizes, with_depth_column
from lingshu.data.loader import AlignedCounts
from lingshu.data.tokenizer import encode_counts
from lingshu.data.vocabulary import GeneVocabulary
from lingshu.model.likelihood import (
    CellNLL,
    fit_shrunk_table,
    mask_draws,
    model_nll,
    pooled_distribution,
    table_nll,
)
from lingshu.model.transformer import MaskPredictor
from lingshu.training.token_counts import token_counts

MASK_LEVELS = (0.1, 0.5, 0.9)
VALIDATION_FRACTION = 0.1
MODEL, NETWORK_OFF = "model", "network off (priors alone)"
GLOBAL, CELL_TYPE, TYPE_DEPTH = "global per-gene table", "cell-type table (oracle)", "cell type x depth table"


@dataclass
class TableFit:
    """A lookup table: log token probabilities (K, G, 281) and each held-out cell's row."""

    log_probabilities: torch.Tensor
    groups: np.ndarray
    shrinkage: float


def tokens_of(data: AlignedCounts) -> torch.Tensor:
    """Every cell's expression tokens (N, G) in vocabulary order."""
    return torch.from_numpy(encode_counts(data.rows(np.arange(data.n_cells))))


def depth_bin_edges(sizes: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner library-size quantile edges (n_bins - 1,) of training cells."""
    return np.quantile(sizes, np.arange(1, n_bins) / n_bins)


def group_rows(
    labels: np.ndarray, sizes: np.ndarray, train_labels: np.ndarray, train_sizes: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(train groups, cells' groups, names) of cell type x depth bin, bins cut at each type's
    training library-size quantiles; a label the training cells lack is an error."""
    types = sorted(set(train_labels))
    unknown = sorted(set(labels) - set(types))
    if unknown:
        raise ValueError(f"held-out cell types not among the training cells: {unknown}")
    train_groups, groups, names = np.zeros(len(train_labels), int), np.zeros(len(labels), int), []
    for label in types:
        members = train_labels == label
        bins = max(1, min(n_bins, int(members.sum()) // 2))
        edges = depth_bin_edges(train_sizes[members], bins)
        train_groups[members] = len(names) + np.searchsorted(edges, train_sizes[members], side="right")
        held = labels == label
        groups[held] = len(names) + np.searchsorted(edges, sizes[held], side="right")
        names += [f"{label} depth {b + 1}/{bins}" for b in range(bins)]
    return train_groups, groups, names


def fit_table(
    fitted: torch.Tensor, validation: torch.Tensor, base: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Log probabilities (K, G, 281) of a table shrunk towards ``base`` (:func:`fit_shrunk_table`)."""
    probabilities, strength = fit_shrunk_table(fitted, validation, base)
    return torch.log(probabilities).float(), strength


def reference_tables(
    train: ad.AnnData,
    cells: ad.AnnData,
    vocabulary: GeneVocabulary,
    label_key: str | None,
    depth_bins: int,
    seed: int = 0,
) -> dict[str, TableFit]:
    """The global, cell-type and cell type x depth tables fitted on ``train`` for ``cells``."""
    data = AlignedCounts(train, vocabulary.align(train))
    rng = np.random.default_rng(seed)
    validation = np.zeros(data.n_cells, bool)
    validation[rng.choice(data.n_cells, max(1, int(VALIDATION_FRACTION * data.n_cells)), replace=False)] = (
        True
    )

    def tallies(groups: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token counts of the fitting part and of the validation part, per group."""
        fitted, held = (
            token_counts(data, np.where(keep, groups, -1), n) for keep in (~validation, validation)
        )
        return fitted, held

    observed = torch.from_numpy(data.observed)
    fitted, held = tallies(np.zeros(data.n_cells, int), 1)
    pooled = pooled_distribution((fitted + held)[0], observed)
    global_log, strength = fit_table(fitted, held, pooled)
    n_cells = cells.n_obs
    tables = {GLOBAL: TableFit(global_log, np.zeros(n_cells, int), strength)}
    if not label_key:
        return tables
    for frame, what in ((train.obs, "training"), (cells.obs, "held-out")):
        if label_key not in frame.columns:
            raise ValueError(f"the {what} cells have no obs column {label_key!r} for the cell-type tables")
    train_labels = train.obs[label_key].astype(str).to_numpy()
    labels = cells.obs[label_key].astype(str).to_numpy()
    types = sorted(set(train_labels))
    train_types = np.searchsorted(types, train_labels)
    unknown = sorted(set(labels) - set(types))
    if unknown:
        raise ValueError(f"held-out cell types not among the training cells: {unknown}")
    base = global_log.exp().double()
    type_log, strength = fit_table(*tallies(train_types, len(types)), base)
    tables[CELL_TYPE] = TableFit(type_log, np.searchsorted(types, labels), strength)
    if depth_bins > 0:
        sizes = library_sizes(AlignedCounts(cells, vocabulary.align(cells)))
        train_groups, groups, names = group_rows(labels, sizes, train_labels, library_sizes(data), depth_bins)
        type_of_group = np.searchsorted(types, [name.rsplit(" depth ", 1)[0] for name in names])
        depth_base = type_log.exp().double()[type_of_group]
        depth_log, strength = fit_table(*tallies(train_groups, len(names)), depth_base)
        tables[TYPE_DEPTH] = TableFit(depth_log, groups, strength)
    return tables


def checkpoint_conditions(
    conditions: ConditionMap, cells: ad.AnnData, data: AlignedCounts
) -> torch.Tensor | None:
    """The held-out cells' condition tokens for a conditional checkpoint (None without slots);
    a depth slot takes each cell's library-size bin among the held-out cells of its type."""
    if not conditions.n_slots:
        return None
    if conditions.slot("perturbation") is not None:
        raise ValueError(
            "the likelihood benchmark scores generation models; this checkpoint has a perturbation slot"
        )
    obs = cells.obs
    depth = conditions.slot(DEPTH_SLOT)
    for slot in conditions.slots:
        if slot is not depth and slot.key not in obs.columns:
            raise ValueError(
                f"the checkpoint is conditioned on obs column {slot.key!r}, which the cells lack"
            )
    if depth is not None:
        source = conditions.slot("source")
        obs = with_depth_column(obs, data, len(depth.labels), source.key if source else None)
    return torch.from_numpy(conditions.encode_obs(obs)).long()


def priors_nll(
    model: MaskPredictor,
    tokens: torch.Tensor,
    observed: torch.Tensor,
    t: float,
    draws: torch.Tensor,
    conditions: torch.Tensor | None,
) -> CellNLL:
    """The model's NLL with its network off. Without conditions its priors are its token table
    alone, the same for every cell: scored as a table (the same numbers, no forward pass)."""
    if conditions is None and model.token_prior is not None:
        log_p = torch.log_softmax(model.token_prior.detach().float(), -1)[None]
        return table_nll(log_p, np.zeros(len(tokens), int), tokens, observed, t, draws)
    return model_nll(model, tokens, observed, t, draws, conditions, network=False)


def score_rows(
    model: MaskPredictor,
    tokens: torch.Tensor,
    observed: torch.Tensor,
    conditions: torch.Tensor | None,
    tables: dict[str, TableFit],
    levels: Sequence[float],
    n_draws: int,
    seed: int,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (method, mask level, draw): per-gene and per-cell NLL, same draws for all."""
    records = []
    n_observed = int(observed.sum())
    jobs = [(t, d) for t in levels for d in range(n_draws)]
    for t, draw in tqdm(jobs, desc="likelihood", disable=not progress):
        draws = mask_draws(len(tokens), tokens.shape[1], seed * 1000 + draw)
        results: dict[str, CellNLL] = {
            MODEL: model_nll(model, tokens, observed, t, draws, conditions),
            NETWORK_OFF: priors_nll(model, tokens, observed, t, draws, conditions),
        }
        for name, table in tables.items():
            results[name] = table_nll(table.log_probabilities, table.groups, tokens, observed, t, draws)
        for name, result in results.items():
            records.append(
                {
                    "method": name,
                    "t": t,
                    "draw": draw,
                    "nll_per_gene": result.per_gene,
                    "nll_per_cell": result.per_cell(n_observed),
                }
            )
    return pd.DataFrame.from_records(records)


def summarise(raw: pd.DataFrame, reference: str = GLOBAL) -> pd.DataFrame:
    """Mean and sd over draws per method and level, and each row's gain over the ``reference``
    row (the global table) in nats per cell on the same draws (positive = better)."""
    base = raw[raw.method == reference].set_index(["t", "draw"]).nll_per_cell
    raw = raw.assign(gain_per_cell=[base[(t, d)] - v for t, d, v in zip(raw.t, raw.draw, raw.nll_per_cell)])
    order = {name: i for i, name in enumerate(raw.method.unique())}
    summary = (
        raw.groupby(["method", "t"], sort=False)
        .agg(
            nll_per_gene=("nll_per_gene", "mean"),
            nll_per_gene_sd=("nll_per_gene", "std"),
            nll_per_cell=("nll_per_cell", "mean"),
            nll_per_cell_sd=("nll_per_cell", "std"),
            gain_per_cell=("gain_per_cell", "mean"),
            gain_per_cell_sd=("gain_per_cell", "std"),
            draws=("draw", "count"),
        )
        .reset_index()
    )
    return summary.sort_values(["t", "method"], key=lambda c: c.map(order) if c.name == "method" else c)


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table, one row per method, one column group per mask level."""
    levels = sorted(summary.t.unique())
    header = "| method | " + " | ".join(f"t = {t:g}: nats/gene | gain nats/cell" for t in levels) + " |"
    lines = [header, "|---|" + "---|---|" * len(levels)]
    for method in summary.method.unique():
        cells = []
        for t in levels:
            row = summary[(summary.method == method) & (summary.t == t)].iloc[0]
            nll = f"{row.nll_per_gene:.4f} ± {row.nll_per_gene_sd:.4f}"
            cells.append(f"{nll} | {row.gain_per_cell:+.1f} ± {row.gain_per_cell_sd:.1f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate_likelihood(
    model: MaskPredictor,
    vocabulary: GeneVocabulary,
    conditions: ConditionMap,
    cells: ad.AnnData,
    train: ad.AnnData | None = None,
    label_key: str | None = "cell_type",
    depth_bins: int = 8,
    levels: Sequence[float] = MASK_LEVELS,
    n_draws: int = 3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, per-draw rows) of the masked NLL of ``cells`` under the model, its priors alone
    and, with ``train``, the reference tables (cell-type ones where both files carry
    ``label_key``). Mask levels must lie in (0, 1]; at least 2 draws give an sd."""
    if not levels or any(not 0 < t <= 1 for t in levels):
        raise ValueError(f"mask levels must lie in (0, 1], got {list(levels)}")
    if n_draws < 1:
        raise ValueError(f"--draws must be >= 1, got {n_draws}")
    alignment = vocabulary.align(cells)
    data = AlignedCounts(cells, alignment)
    if data.n_cells == 0:
        raise ValueError("the held-out file has no cells")
    tokens, observed = tokens_of(data), torch.from_numpy(alignment.observed)
    encoded = checkpoint_conditions(conditions, cells, data)
    tables: dict[str, TableFit] = {}
    if train is not None:
        labelled = label_key if label_key and label_key in train.obs and label_key in cells.obs else None
        tables = reference_tables(train, cells, vocabulary, labelled, depth_bins, seed)
    raw = score_rows(model, tokens, observed, encoded, tables, levels, n_draws, seed, progress)
    # Without the training cells there is no table: gains are against the priors alone.
    return summarise(raw, GLOBAL if GLOBAL in tables else NETWORK_OFF), raw
