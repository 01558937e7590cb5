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

from lingshu.benchmarks.guidance_choice import (
    MAX_PREDICTED_CELLS,
    sweep_settings,
    validation_pairs,
    validation_task,
)
from lingshu.config import TrainConfig, config_to_dict, get_preset
from lingshu.data.perturbation_splits import HeldOutPair, PerturbationSplit
from lingshu.data.writing import atomic_path
from lingshu.evaluation.perturbation_baselines import CellRequest
from lingshu.inference.predict import Request, predict
from lingshu.training.checkpoint import Checkpoint, load_checkpoint
from lingshu.training.init_from import architecture_of
from lingshu.training.run import data_fingerprint, train


@dataclass
class LingshuPredictor:
    """Train (or reuse a checkpoint trained on the same cells) and predict held-out requests.

    ``model_dir`` keeps the checkpoint, so that ablations of sampling settings (guidance, prior,
    steps) reuse one trained model. ``guidance`` None: the guidance (and, with ``use_prior``
    None for a genetic split, the prior injection) is chosen on a validation block of the
    training pairs (:mod:`lingshu.benchmarks.guidance_choice`; the sweep is kept in
    ``<model_dir>_guidance_sweep.csv``, that model in ``<model_dir>_validation``), or where
    the training data offer no such block, the defaults of the split's kind (genetic: w = 2
    with the prior; cytokine: w = 3 without).
    """

    model_dir: Path
    preset: str = "cpu"
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
    # A pretrained checkpoint to fine-tune from (``lingshu train --init-from``), or None.
    init_from: Path | None = None

    @property
    def kind(self) -> str:
        """How reports list this method: the model, or its priors alone."""
        return "model" if self.network else "priors"

    def checkpoint(
        self, train_cells: ad.AnnData, split: PerturbationSplit, seed: int, stop_step: int = 0
    ) -> Checkpoint:
        """The trained model for these cells: loaded when ``model_dir`` already holds it, trained
        on from it when it stops short of ``stop_step`` (0: the schedule's end, or whatever step
        an existing model has; else the weights at that step of the full schedule)."""
        directory = Path(self.model_dir)
        resume = False
        if (directory / "manifest.json").exists():
            existing = load_checkpoint(directory)
            if existing.data_fingerprint != data_fingerprint(train_cells):
                raise ValueError(
                    f"{directory} holds a model trained on other cells; remove it or pick another"
                )
            if not stop_step or existing.step == stop_step:
                return existing
            if existing.step > stop_step:
                raise ValueError(
                    f"{directory} holds a model trained {existing.step} steps, past the {stop_step} "
                    "chosen on validation; remove it or pick another"
                )
            resume = True
        return train(
            train_cells,
            directory,
            preset=self.preset,
            model_overrides=self.model_overrides,
            train_overrides={"seed": seed, **self.train_overrides, "stop_step": stop_step},
            device=self.device,
            progress=self.progress,
            condition_keys={"source": split.context_key, "perturbation": split.perturbation_key},
            control_label=split.control_label,
            perturbation_kind=split.perturbation_kind,
            depth_bins=self.depth_bins,
            init_from=None if resume else self.init_from,
            resume=resume,
        )

    def schedule(self) -> TrainConfig:
        """The training settings this method's models train with (preset and overrides)."""
        return replace(get_preset(self.preset).train, **self.train_overrides)

    def chosen_settings(
        self, train_cells: ad.AnnData, split: PerturbationSplit, seed: int
    ) -> tuple[float | None, bool | None, int, pd.DataFrame | None]:
        """(guidance, prior injection, training step (0: the schedule's end), the sweep they were
        chosen from or None): as given, else chosen on a validation block (read back from
        beside ``model_dir`` when already swept there)."""
        if self.guidance is not None:
            return self.guidance, self.use_prior, 0, None
        # Beside the checkpoint directory, which each save replaces whole.
        sweep_file = Path(self.model_dir).with_name(Path(self.model_dir).name + SWEEP_SUFFIX)
        if sweep_file.exists():
            table = pd.read_csv(sweep_file)
        elif not self.network:
            return None, self.use_prior, 0, None  # the priors alone never choose: the model does
        else:
            pairs = validation_pairs(train_cells, split, seed)
            if not pairs:
                return None, self.use_prior, 0, None
            table = self._sweep(train_cells, split, seed, pairs)
            with atomic_path(sweep_file) as tmp:
                table.to_csv(tmp, index=False)
        best = table.iloc[0]
        step = int(best["step"]) if "step" in table else 0  # sweeps written before steps were chosen
        return float(best["guidance"]), bool(best["prior"]), step, table

    def _sweep(
        self, train_cells: ad.AnnData, split: PerturbationSplit, seed: int, pairs: Sequence[HeldOutPair]
    ) -> pd.DataFrame:
        """Train without the validation ``pairs`` (in ``<model_dir>_validation``), and at every
        checkpoint of its schedule predict them under every sampling setting; return the sweep
        over (step, setting), best first (ties: the earlier step, the smaller w)."""
        fit_cells, block, val_split = validation_task(train_cells, split, pairs)
        validation = replace(
            self, model_dir=Path(self.model_dir).with_name(Path(self.model_dir).name + VALIDATION_SUFFIX)
        )
        sizes = block.obs.groupby([split.context_key, split.perturbation_key], observed=True).size()
        requests = [
            Request(str(c), str(p), min(int(n), MAX_PREDICTED_CELLS)) for (c, p), n in sizes.items() if n
        ]
        if self.use_prior is not None:
            priors = (self.use_prior,)
        else:
            priors = (True, False) if split.perturbation_kind == "genetic" else (False,)
        schedule = self.schedule()
        every = schedule.val_every or schedule.checkpoint_every
        steps = [*range(every, schedule.max_steps, every), schedule.max_steps]
        trained: dict[int, Checkpoint] = {}  # the validation model at the step being swept

        def predict_block(step: int, w: float, prior: bool) -> ad.AnnData:
            if step not in trained:  # steps come in order: train on to the next one
                trained.clear()
                trained[step] = validation.checkpoint(fit_cells, val_split, seed, stop_step=step)
            cells = predict(
                trained[step],
                requests,
                n_steps=self.n_steps,
                guidance=w,
                use_prior=prior,
                seed=seed,
                device=self.device or "cpu",
                progress=False,
                unseen=self.unseen,
            )
            return on_genes(cells, fit_cells.var_names)

        table = sweep_settings(predict_block, block, fit_cells, val_split, priors, steps=steps)
        table.insert(0, "validation_pairs", "; ".join(f"{p.context} {p.perturbation}" for p in pairs))
        return table

    def __call__(
        self, train_cells: ad.AnnData, split: PerturbationSplit, requests: Sequence[CellRequest], seed: int
    ) -> ad.AnnData:
        guidance, use_prior, step, sweep = self.chosen_settings(train_cells, split, seed)
        checkpoint = self.checkpoint(train_cells, split, seed, stop_step=step)
        predicted = predict(
            checkpoint,
            [Request(r.context, r.perturbation, r.n_cells) for r in requests],
            n_steps=self.n_steps,
            guidance=guidance,
            use_prior=use_prior,
            seed=seed,
            device=self.device or "cpu",
            progress=self.progress,
            unseen=self.unseen,
            network=self.network,
        )
        if sweep is not None:
            predicted.uns["lingshu"]["chosen_on"] = sweep_summary(sweep)
        return on_genes(predicted, train_cells.var_names)


def sweep_summary(sweep: pd.DataFrame) -> str:
    """One line: the validation pairs and the best settings' Pearson-delta there, best first."""
    settings = ", ".join(
        (f"step {row.step} " if "step" in sweep else "")
        + f"w={row.guidance:g} prior {'on' if row.prior else 'off'} {row.pearson_delta:.3f}"
        for row in sweep.head(SUMMARY_ROWS).itertuples()
    )
    return f"validation pairs {sweep['validation_pairs'].iloc[0]}: Pearson-delta {settings}"


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


# Beside a model's directory: the sweep its settings were chosen from, and the model trained
# without the validation block.
SWEEP_SUFFIX, VALIDATION_SUFFIX = "_guidance_sweep.csv", "_validation"
MODEL_METHOD = "lingshu"
# Settings a report's one-line summary of a sweep lists (the whole sweep is in its CSV file).
SUMMARY_ROWS = 8
PRETRAINED_METHOD = "lingshu pretrained"
# Training settings of a pretrained checkpoint that are about its own data, not its schedule.
NOT_SCHEDULE = ("seed", "max_control_fraction", "state_prior_components", "state_prior_first_fraction")
PRIORS_SUFFIX = " priors alone (network off)"


def with_pretraining(
    base: LingshuPredictor, pretrained: Path, model_root: Path, own_schedule: bool = False
) -> dict[str, LingshuPredictor]:
    """The model with and without pretraining, alike in all else: the one fine-tuned from
    ``pretrained`` (:data:`PRETRAINED_METHOD`) and one trained from scratch with the same
    architecture (:data:`MODEL_METHOD`; the pretrained one's, whatever ``base.preset`` says).
    ``own_schedule``: both train with the pretrained model's schedule (learning rates, batch,
    steps, validation slice) instead of ``base.preset``'s; ``base.train_overrides`` win either way."""
    checkpoint = load_checkpoint(Path(pretrained))
    schedule = {}
    if own_schedule:
        schedule = {k: v for k, v in config_to_dict(checkpoint.train_config).items() if k not in NOT_SCHEDULE}
    overrides = {**schedule, **base.train_overrides}
    architecture = {**architecture_of(checkpoint), **base.model_overrides}
    return {
        MODEL_METHOD: replace(base, model_overrides=architecture, train_overrides=overrides),
        PRETRAINED_METHOD: replace(
            base,
            model_dir=Path(model_root) / "model_pretrained",
            init_from=Path(pretrained),
            train_overrides=overrides,
        ),
    }


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
    combinations: bool = True,
) -> dict[str, LingshuPredictor]:
    """One-factor-at-a-time ablation around ``base`` (w = 2, prior on): every guidance w, every
    compression S (one model trained per S; transformer models only, a cell MLP has no groups),
    the prior injection off, and each of the shift prior's parts removed in a model of its own:
    the shift prior itself and, where ``combinations`` are held out, the log-mean rule (the
    parts' tilts summed instead). The removed parts choose their guidance as ``base`` does."""
    model = replace(get_preset(base.preset).model, **base.model_overrides)
    reference_s = model.patch_size
    grouped = model.encoder != "cell_mlp"
    label = f"lingshu S={reference_s}" if grouped else "lingshu"

    def variant(patch: int, guidance: float, prior: bool) -> LingshuPredictor:
        return replace(
            base,
            # The reference S reuses the base model; each other S trains its own.
            model_dir=base.model_dir if patch == reference_s else Path(model_root) / f"model_S{patch}",
            model_overrides={**base.model_overrides, "patch_size": patch},
            guidance=float(guidance),
            use_prior=prior,
        )

    def without(directory: str, **overrides) -> LingshuPredictor:
        return replace(
            base,
            model_dir=Path(model_root) / directory,
            model_overrides={**base.model_overrides, **overrides},
        )

    methods = {f"{label} w={w:g}": variant(reference_s, w, True) for w in guidance_values}
    for patch in patch_sizes if grouped else ():
        methods.setdefault(f"lingshu S={patch} w=2", variant(patch, 2, True))
    methods[f"{label} w=2 no prior"] = variant(reference_s, 2, False)
    # Without the shift prior there is no average perturbation for an unseen target to take.
    methods[f"{label} no shift prior"] = replace(
        without("model_no_shift_prior", perturbation_prior=False), unseen="control"
    )
    if combinations:
        methods[f"{label} tilts summed"] = without("model_tilts_summed", combine_log_means=False)
    return methods
