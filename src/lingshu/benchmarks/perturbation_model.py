"""The Lingshu model as a method of the perturbation benchmark (the ``lingshu`` entry).

It trains on the split's training cells, conditioned on the split's context (source) and
perturbation columns with the control label, then predicts every held-out request with
``lingshu.inference.predict``: few-step sampling, classifier-free guidance against the context's
control and, for genetic perturbations, the prior. Targets the training data never perturbed (the
Papalexi task) have no token: they are sampled under the control token and enter only through the
prior (the target itself pre-filled with a count of 1), and the report says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from lingshu.config import get_preset
from lingshu.data.perturbation_splits import PerturbationSplit
from lingshu.evaluation.perturbation_baselines import CellRequest
from lingshu.inference.predict import Request, predict
from lingshu.training.checkpoint import Checkpoint, load_checkpoint
from lingshu.training.run import data_fingerprint, train


@dataclass
class LingshuPredictor:
    """Train (or reuse a checkpoint trained on the same cells) and predict held-out requests.

    ``model_dir`` keeps the checkpoint, so that ablations of sampling settings (guidance, prior,
    steps) reuse one trained model. ``guidance`` / ``use_prior`` None take the defaults of the
    split's perturbation kind (genetic: w = 2 with the prior; cytokine: w = 3 without).
    """

    model_dir: Path
    preset: str = "small"
    train_overrides: dict = field(default_factory=dict)
    model_overrides: dict = field(default_factory=dict)
    depth_bins: int = 0
    n_steps: int = 3
    guidance: float | None = None
    use_prior: bool | None = None
    device: str | None = None
    progress: bool = True
    # A held-out target the model has no token for: the context's average perturbation shift
    # plus its prior injection ("average"), or the injection alone ("control").
    unseen: str = "average"
    # False: the same checkpoint with its network switched off (the "priors alone" row).
    network: bool = True

    @property
    def kind(self) -> str:
        """How reports list this method: the model, or its priors alone."""
        return "model" if self.network else "priors"

    def checkpoint(self, train_cells: ad.AnnData, split: PerturbationSplit, seed: int) -> Checkpoint:
        """The trained model for these cells: loaded when ``model_dir`` already holds it."""
        directory = Path(self.model_dir)
        if (directory / "manifest.json").exists():
            existing = load_checkpoint(directory)
            if existing.data_fingerprint == data_fingerprint(train_cells):
                return existing
            raise ValueError(f"{directory} holds a model trained on other cells; remove it or pick another")
        return train(
            train_cells,
            directory,
            preset=self.preset,
            model_overrides=self.model_overrides,
            train_overrides={"seed": seed, **self.train_overrides},
            device=self.device,
            progress=self.progress,
            condition_keys={"source": split.context_key, "perturbation": split.perturbation_key},
            control_label=split.control_label,
            perturbation_kind=split.perturbation_kind,
            depth_bins=self.depth_bins,
        )

    def __call__(
        self, train_cells: ad.AnnData, split: PerturbationSplit, requests: Sequence[CellRequest], seed: int
    ) -> ad.AnnData:
        checkpoint = self.checkpoint(train_cells, split, seed)
        predicted = predict(
            checkpoint,
            [Request(r.context, r.perturbation, r.n_cells) for r in requests],
            n_steps=self.n_steps,
            guidance=self.guidance,
            use_prior=self.use_prior,
            seed=seed,
            device=self.device or "cpu",
            progress=self.progress,
            unseen=self.unseen,
            network=self.network,
        )
        return on_genes(predicted, train_cells.var_names)


def on_genes(predicted: ad.AnnData, genes: pd.Index) -> ad.AnnData:
    """``predicted`` over ``genes`` in that order; genes outside the model's vocabulary (never
    detected in training) are predicted as zero."""
    position = pd.Index(predicted.var_names).get_indexer(genes)
    present = position >= 0
    counts = sp.csr_matrix(predicted.X)
    # A 0/1 selection matrix moves each model gene to its column in ``genes``.
    selector = sp.csr_matrix(
        (np.ones(int(present.sum()), dtype=counts.dtype), (position[present], np.flatnonzero(present))),
        shape=(counts.shape[1], len(genes)),
    )
    out = ad.AnnData(X=(counts @ selector).tocsr(), obs=predicted.obs.copy(), var=pd.DataFrame(index=genes))
    out.uns = dict(predicted.uns)
    return out


MODEL_METHOD = "lingshu"
PRIORS_SUFFIX = " priors alone (network off)"


def with_priors_alone(methods: dict[str, object]) -> dict[str, object]:
    """``methods`` with, after each model method M, "M priors alone (network off)": the same
    checkpoint sampled with its network switched off, so that every report shows what the
    network adds to its priors."""
    out: dict[str, object] = {}
    for name, method in methods.items():
        out[name] = method
        if isinstance(method, LingshuPredictor) and method.network:
            out.setdefault(name + PRIORS_SUFFIX, replace(method, network=False))
    return out


def ablation_methods(
    model_root: Path,
    base: LingshuPredictor,
    guidance_values: Sequence[float] = (0, 1, 2, 3),
    patch_sizes: Sequence[int] = (1, 8, 32),
) -> dict[str, LingshuPredictor]:
    """One-factor-at-a-time ablation around ``base`` (S = 32, w = 2, prior on):
    every guidance w, every compression S (one model trained per S), the prior off, and a model
    trained without the perturbation shift prior (README, deviation 4)."""
    reference_s = base.model_overrides.get("patch_size") or get_preset(base.preset).model.patch_size

    def variant(patch: int, guidance: float, prior: bool) -> LingshuPredictor:
        return replace(
            base,
            # The reference S reuses the base model; each other S trains its own.
            model_dir=base.model_dir if patch == reference_s else Path(model_root) / f"model_S{patch}",
            model_overrides={**base.model_overrides, "patch_size": patch},
            guidance=float(guidance),
            use_prior=prior,
        )

    methods = {f"lingshu S={reference_s} w={w:g}": variant(reference_s, w, True) for w in guidance_values}
    for patch in patch_sizes:
        methods.setdefault(f"lingshu S={patch} w=2", variant(patch, 2, True))
    methods[f"lingshu S={reference_s} w=2 no prior"] = variant(reference_s, 2, False)
    methods[f"lingshu S={reference_s} w=2 no shift prior"] = replace(
        variant(reference_s, 2, True),
        model_dir=Path(model_root) / "model_no_shift_prior",
        model_overrides={**base.model_overrides, "patch_size": reference_s, "perturbation_prior": False},
        unseen="control",  # without the shift prior there is no average perturbation to add
    )
    return methods
