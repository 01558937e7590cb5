"""A validation slice of the training file: held-out masked NLL logged during training.

The slice is drawn once from the seed and never trained on (nor used to fit the priors), so
its NLL curve says whether the network learns cells or memorises them; the best-scoring
weights are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lingshu.data.loader import AlignedCounts
from lingshu.data.tokenizer import encode_counts
from lingshu.model.likelihood import mask_draws, model_nll
from lingshu.model.transformer import MaskPredictor

# The mask level the curve is logged at: half the genes hidden, as in the likelihood benchmark.
VALIDATION_MASK_LEVEL = 0.5
# At most this many validation cells are scored at each evaluation (bounded cost per point).
MAX_VALIDATION_CELLS = 256
# The slice users get unless they ask otherwise (`lingshu train`, the benchmarks, `make demo`).
DEFAULT_VAL_FRACTION = 0.1


def validation_split(n_cells: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) row indices: ``fraction`` of ``n_cells`` drawn from ``seed``,
    both sorted. A fraction that leaves either side empty is an error."""
    if not 0 <= fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {fraction}")
    n_validation = int(round(fraction * n_cells))
    if fraction > 0 and (n_validation < 1 or n_validation >= n_cells):
        raise ValueError(
            f"--val-fraction {fraction} of {n_cells} cells leaves no training or validation cells"
        )
    rng = np.random.default_rng([seed, 0x7A1])
    validation = np.sort(rng.choice(n_cells, n_validation, replace=False))
    return np.setdiff1d(np.arange(n_cells), validation), validation


@dataclass
class ValidationSet:
    """Tokens, conditions and fixed mask draws of the validation cells."""

    tokens: torch.Tensor
    observed: torch.Tensor
    conditions: torch.Tensor | None
    draws: torch.Tensor

    @classmethod
    def from_counts(cls, data: AlignedCounts, conditions: np.ndarray | None, seed: int) -> ValidationSet:
        """The first :data:`MAX_VALIDATION_CELLS` cells of ``data`` with draws fixed by ``seed``."""
        rows = np.arange(min(data.n_cells, MAX_VALIDATION_CELLS))
        tokens = torch.from_numpy(encode_counts(data.rows(rows)))
        return cls(
            tokens=tokens,
            observed=torch.from_numpy(np.ascontiguousarray(data.observed_of(rows))),
            conditions=None if conditions is None else torch.from_numpy(conditions[rows]).long(),
            draws=mask_draws(len(rows), tokens.shape[1], seed),
        )

    @property
    def n_observed(self) -> int:
        return int(self.observed.sum())

    def nll(self, model: MaskPredictor) -> float:
        """Masked NLL per observed gene (nats) at :data:`VALIDATION_MASK_LEVEL`."""
        was_training = model.training
        result = model_nll(
            model, self.tokens, self.observed, VALIDATION_MASK_LEVEL, self.draws, self.conditions
        )
        model.train(was_training)
        return result.per_gene
