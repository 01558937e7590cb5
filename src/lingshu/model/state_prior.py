"""A density over the network's cell states, drawn from first when generating.

Masked diffusion settles a new cell's identity in its first, nearly-all-masked steps, where the
network infers the cell's state from a handful of revealed genes: parallel draws from such a
vague state average over cell types, so plain unmasking makes blends of cell types (measured:
completing real cells from 10% of their genes reaches the real ceiling, generating from nothing
does not). A ``cell_mlp`` model sets every masked gene's distribution from one cell state h, so
generation can commit a state first: h is drawn from a Gaussian mixture fitted to the states the
network infers from its own (fully shown) training cells, a fraction of the genes is drawn from
h's read-out, and the network unmasks the rest as usual. Fitting a density to a trained network's
latent codes after training is "ex-post density estimation" (Ghosh et al., 2020, "From
variational to deterministic autoencoders").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from lingshu.data.tokenizer import MASK_TOKEN, encode_counts
from lingshu.model.transformer import MaskPredictor

# A floor on each component's covariance diagonal: keeps a component of a few cells well-posed.
COVARIANCE_FLOOR = 1e-3


@dataclass
class StatePrior:
    """A Gaussian mixture over cell states (K components of width D) and the fraction of genes
    drawn from a drawn state before the network unmasks the rest."""

    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, D)
    scale_tril: torch.Tensor  # (K, D, D) Cholesky factors of the covariances
    first_fraction: float

    def __post_init__(self) -> None:
        if not 0 < self.first_fraction <= 1:
            raise ValueError(f"first_fraction must be in (0, 1], got {self.first_fraction}")
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.scale_tril.shape != (k, d, d):
            raise ValueError(
                f"state prior shapes disagree: weights {tuple(self.weights.shape)}, means {(k, d)}, "
                f"scale_tril {tuple(self.scale_tril.shape)}"
            )

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    @classmethod
    def fit(cls, states: np.ndarray, n_components: int, first_fraction: float, seed: int) -> StatePrior:
        """Fit ``n_components`` full-covariance Gaussians to ``states`` (N, D) by EM."""
        states = np.asarray(states, dtype=np.float64)
        if states.ndim != 2 or len(states) < n_components:
            raise ValueError(
                f"need at least {n_components} cell states (N, D) to fit the state prior, got {states.shape}"
            )
        if not np.isfinite(states).all():
            raise ValueError("cell states contain NaN or infinite values")
        mixture = GaussianMixture(
            n_components, covariance_type="full", reg_covar=COVARIANCE_FLOOR, random_state=seed
        ).fit(states)
        return cls(
            weights=torch.from_numpy(mixture.weights_).float(),
            means=torch.from_numpy(mixture.means_).float(),
            scale_tril=torch.linalg.cholesky(torch.from_numpy(mixture.covariances_)).float(),
            first_fraction=first_fraction,
        )

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` cell states (n, D): a component by its weight, then a draw from its Gaussian."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], 1, generator=generator)
        return self.means[component] + (self.scale_tril[component] @ noise)[..., 0]

    def to_dict(self) -> dict:
        """Tensors and settings, for ``torch.save`` in a checkpoint."""
        return {
            "weights": self.weights,
            "means": self.means,
            "scale_tril": self.scale_tril,
            "first_fraction": self.first_fraction,
        }

    @classmethod
    def from_dict(cls, values: dict) -> StatePrior:
        return cls(
            weights=values["weights"],
            means=values["means"],
            scale_tril=values["scale_tril"],
            first_fraction=float(values["first_fraction"]),
        )


@torch.no_grad()
def cell_states(model: MaskPredictor, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The states (N, D) a ``cell_mlp`` network infers from whole cells (every gene shown)."""
    if not model.cell_mlp:
        raise ValueError("a state prior needs the cell_mlp encoder (one state per cell)")
    was_training = model.training
    model.eval()
    states = torch.cat(
        [model.encode(tokens[i : i + batch_size])[:, 0] for i in range(0, len(tokens), batch_size)]
    )
    model.train(was_training)
    return states


# Cells whose states the mixture is fitted to, at most (a random subset of larger datasets).
MAX_FIT_CELLS = 20_000
# Cells per component, at least: each full covariance holds D (D + 1) / 2 numbers (8,256 for
# D = 128, held in check by COVARIANCE_FLOOR), so a small dataset gets fewer components rather
# than ill-fitted ones.
MIN_CELLS_PER_COMPONENT = 100


def components_for(requested: int, n_cells: int) -> int:
    """How many components to fit to ``n_cells`` states: ``requested``, fewer for few cells."""
    return max(1, min(requested, n_cells // MIN_CELLS_PER_COMPONENT))


def fit_state_prior(
    model: MaskPredictor,
    counts: Callable[[np.ndarray], np.ndarray],
    n_cells: int,
    observed: np.ndarray | Callable[[np.ndarray], np.ndarray],
    n_components: int,
    first_fraction: float,
    seed: int,
) -> StatePrior:
    """Fit a :class:`StatePrior` to the states ``model`` infers from training cells.

    ``counts(rows)`` returns raw counts (len(rows), G) in vocabulary order; genes not
    ``observed`` ((G,), or a function of the rows giving (len(rows), G) or (G,)) are shown to the
    network as [MASK], as in training. ``n_components`` is capped
    by :func:`components_for`.
    """
    n_components = components_for(n_components, min(n_cells, MAX_FIT_CELLS))
    rows = np.arange(n_cells)
    if n_cells > MAX_FIT_CELLS:
        rows = np.sort(np.random.default_rng([seed, 0x57A7E]).choice(n_cells, MAX_FIT_CELLS, replace=False))
    tokens = torch.from_numpy(encode_counts(counts(rows)))
    observed = observed(rows) if callable(observed) else observed
    hidden = ~torch.from_numpy(np.ascontiguousarray(observed, dtype=bool))
    tokens[hidden.expand_as(tokens)] = MASK_TOKEN
    return StatePrior.fit(cell_states(model, tokens).numpy(), n_components, first_fraction, seed)
