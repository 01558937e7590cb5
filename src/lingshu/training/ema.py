"""Power-function EMA of the weights (Karras et al. 2024, EDM2), parameterised by sigma_rel."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """Exponent gamma of the power-function EMA with relative standard deviation ``sigma_rel``.

    Solves sigma_rel^2 = (g + 1) / ((g + 2)^2 (g + 3)) (EDM2, Algorithm 2).
    """
    t = sigma_rel**-2
    return float(np.roots([1, 7, 16 - t, 12 - t]).real.max())


class PowerEMA:
    """Keeps an averaged copy of a model; after update n the decay is (1 - 1/n)^(gamma + 1)."""

    def __init__(self, model: nn.Module, sigma_rel: float = 0.05):
        self.gamma = sigma_rel_to_gamma(sigma_rel)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.n_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.n_updates += 1
        beta = (1.0 - 1.0 / self.n_updates) ** (self.gamma + 1.0)
        for averaged, current in zip(self.model.parameters(), model.parameters()):
            averaged.lerp_(current.detach(), 1.0 - beta)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "n_updates": self.n_updates, "gamma": self.gamma}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.n_updates = int(state["n_updates"])
