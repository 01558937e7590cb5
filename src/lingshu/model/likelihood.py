"""Masked negative log-likelihood at fixed mask levels: the yardstick for every model choice.

At mask level t each observed gene of a cell is hidden with probability t (a uniform draw below
t); the model predicts the hidden genes from the visible ones and scores -log p(true token).
Every row of a comparison (the model, its priors alone, lookup tables) uses the same draws, so
their differences are not mask noise. Tables ignore the visible genes: they are what a model
that learns nothing about the cell scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lingshu.data.tokenizer import MASK_TOKEN
from lingshu.model.transformer import MaskPredictor

# Cells per forward pass when scoring: bounds the (cells x masked genes x 281) logits.
SCORE_BATCH = 32
# Pseudo-cell strengths a table's shrinkage is chosen from (on validation cells).
SHRINKAGE_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


@dataclass
class CellNLL:
    """Per cell: summed NLL (nats) over its masked observed genes, and how many there were."""

    nll: np.ndarray
    n_masked: np.ndarray

    @property
    def per_gene(self) -> float:
        """Mean NLL per scored gene (nats), pooled over cells."""
        return float(self.nll.sum() / max(self.n_masked.sum(), 1))

    def per_cell(self, n_observed: int) -> float:
        """NLL per cell scaled to every observed gene (nats): per-gene NLL x observed genes."""
        return self.per_gene * n_observed


def mask_draws(n_cells: int, n_genes: int, seed: int) -> torch.Tensor:
    """Uniform draws (n_cells, n_genes) that fix which genes a mask level hides (draw < t)."""
    return torch.rand(n_cells, n_genes, generator=torch.Generator().manual_seed(seed))


def masked_positions(
    observed: torch.Tensor, t: float, draws: torch.Tensor, scored: torch.Tensor | None = None
) -> torch.Tensor:
    """(cells, genes) boolean: the observed genes hidden at mask level ``t`` (and among the
    ``scored`` genes (G,) where given: the others are hidden or shown alike, but not scored)."""
    hidden = (draws < t) & observed
    return hidden if scored is None else hidden & scored


@torch.no_grad()
def model_nll(
    model: MaskPredictor,
    tokens: torch.Tensor,
    observed: torch.Tensor,
    t: float,
    draws: torch.Tensor,
    conditions: torch.Tensor | None = None,
    network: bool = True,
    scored: torch.Tensor | None = None,
) -> CellNLL:
    """The model's masked NLL of each cell at mask level ``t`` (``network=False``: its priors
    alone, the network's contribution removed). ``tokens`` (N, G) and ``draws`` (N, G) on CPU;
    ``scored`` (G,) restricts the score to some genes."""
    model.eval()
    observed = observed.expand_as(tokens) if observed.dim() == 1 else observed
    hidden_mask = masked_positions(observed, t, draws)
    scored_mask = hidden_mask if scored is None else hidden_mask & scored
    totals, counts = np.zeros(len(tokens)), scored_mask.sum(1).numpy()
    device = next(model.parameters()).device
    for start in range(0, len(tokens), SCORE_BATCH):
        part = slice(start, start + SCORE_BATCH)
        block, hide = tokens[part].to(device), hidden_mask[part].to(device)
        inputs = torch.where(hide | ~observed[part].to(device), MASK_TOKEN, block)
        cond = None if conditions is None else conditions[part].to(device)
        hidden = model.encode(inputs, cond)
        cells, genes = scored_mask[part].to(device).nonzero(as_tuple=True)
        logits = model.logits_at(
            hidden,
            cells,
            genes,
            model.context_index(cond),
            model.tilt(cond),
            model.depth_index(cond),
            network=network,
        ).float()
        nll = F.cross_entropy(logits, block[cells, genes], reduction="none")
        totals[start : start + len(block)] = (
            torch.zeros(len(block)).index_add_(0, cells.cpu(), nll.cpu()).numpy()
        )
    return CellNLL(totals, counts)


def table_nll(
    log_probabilities: torch.Tensor,
    groups: np.ndarray,
    tokens: torch.Tensor,
    observed: torch.Tensor,
    t: float,
    draws: torch.Tensor,
    scored: torch.Tensor | None = None,
) -> CellNLL:
    """Masked NLL of each cell under a lookup table: ``log_probabilities`` (K, G, 281), one
    token distribution per group and gene; ``groups`` (N,) each cell's row of it."""
    observed = observed.expand_as(tokens) if observed.dim() == 1 else observed
    hidden_mask = masked_positions(observed, t, draws, scored)
    cells, genes = hidden_mask.nonzero(as_tuple=True)
    group_of = torch.as_tensor(np.asarray(groups), dtype=torch.long)
    nll = -log_probabilities[group_of[cells], genes, tokens[cells, genes]].double()
    totals = torch.zeros(len(tokens), dtype=torch.float64).index_add_(0, cells, nll)
    return CellNLL(totals.numpy(), hidden_mask.sum(1).numpy())


def pooled_distribution(counts: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """One token distribution (281,) pooled over the observed genes' counts (G, 281): what a
    gene's table is shrunk towards where it has too few cells to show a count."""
    pooled = counts[observed].double().sum(0) + 1.0  # one of every token: no exact zero
    return pooled / pooled.sum()


def shrunk_table(counts: torch.Tensor, base: torch.Tensor, strength: float) -> torch.Tensor:
    """Token distributions (..., G, 281) from token counts (..., G, 281) with ``strength``
    pseudo-cells drawn from ``base`` (broadcasting to the counts): (counts + k base) / (n + k)."""
    cells = counts.double().sum(-1, keepdim=True)
    return (counts.double() + strength * base) / (cells + strength).clamp_min(1e-12)


def choose_shrinkage(
    fitted_counts: torch.Tensor,
    validation_counts: torch.Tensor,
    base: torch.Tensor,
    grid: tuple[float, ...] = SHRINKAGE_GRID,
) -> float:
    """The strength of ``grid`` whose table fitted on ``fitted_counts`` (..., G, 281) and shrunk
    towards ``base`` gives the validation cells' token counts (same shape) the highest
    likelihood: chosen on cells the table was not fitted on, never on held-out ones."""
    scores = [
        -(validation_counts.double() * torch.log(shrunk_table(fitted_counts, base, k))).sum().item()
        for k in grid
    ]
    return grid[int(np.argmin(scores))]


def fit_shrunk_table(
    fitted_counts: torch.Tensor, validation_counts: torch.Tensor, base: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Token distributions (..., G, 281) of all the cells' counts (fitted + validation) shrunk
    towards ``base``, with the strength :func:`choose_shrinkage` picks on the validation cells
    (1 pseudo-cell when they hold no counts), and that strength."""
    strength = (
        choose_shrinkage(fitted_counts, validation_counts, base) if validation_counts.sum() > 0 else 1.0
    )
    return shrunk_table(fitted_counts + validation_counts, base, strength), strength
