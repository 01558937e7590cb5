"""AnnData-aware training entry point: vocabulary, configuration, checkpoints, resume."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from lingshu.config import ModelConfig, TrainConfig, get_preset
from lingshu.data.conditions import ConditionMap, cap_controls
from lingshu.data.depth import DEPTH_KEY, DEPTH_SLOT, library_sizes, with_depth_column
from lingshu.data.loader import AlignedCounts
from lingshu.data.prior import find_prior
from lingshu.data.tokenizer import N_EXPRESSION_TOKENS
from lingshu.data.validation import iter_row_chunks
from lingshu.data.vocabulary import GeneAlignment, GeneVocabulary
from lingshu.model.likelihood import fit_shrunk_table, pooled_distribution
from lingshu.model.state_prior import MAX_FIT_CELLS, fit_state_prior
from lingshu.model.tilt import PSEUDO_COUNT, TOKEN_FLOOR, calibrate_tilts, log_expression, tilted_expectations
from lingshu.model.transformer import MaskPredictor
from lingshu.training import distributed
from lingshu.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from lingshu.training.depth_shift import (
    DEPTH_SHRINKAGE,
    calibrate_depth_tilts,
    depth_log_folds,
    depth_residuals,
    tilted_distributions,
)
from lingshu.training.init_from import architecture_of, fine_tuning_vocabulary, transfer_weights
from lingshu.training.perturbation_shift import (
    log_expression_shifts,
    log_fold_changes,
    pair_moments,
    raising_rule,
)
from lingshu.training.token_counts import token_counts
from lingshu.training.trainer import Trainer
from lingshu.training.validation import ValidationSet, validation_split


def data_fingerprint(adata: ad.AnnData) -> str:
    """SHA-256 over cell names, gene names and the count matrix (read in row chunks)."""
    digest = hashlib.sha256()
    digest.update("\n".join(map(str, adata.obs_names)).encode())
    digest.update("\n".join(map(str, adata.var_names)).encode())
    for chunk in iter_row_chunks(adata.X, 4096):
        block = sp.csr_matrix(chunk)
        for array in (block.indptr, block.indices, block.data.astype(np.int64)):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# The context prior is a dense (contexts, genes, 281) table; above this many entries (~26
# contexts of 18k genes, 256 MB in half precision) it is left out rather than eat the memory.
MAX_CONTEXT_PRIOR_ENTRIES = 2**27
# Per-context perturbation tilts (contexts x perturbations x genes, float32) up to ~256 MB.
MAX_TILT_ENTRIES = 2**26
# The context prior's shrinkage in pseudo-cells of the global table, chosen on a validation slice
# of 540 pbmc3k cells (cpu preset, cell type): 20 cells generate closer cells (unbiased MMD^2
# 0.0057 +- 0.0016 over 3 seeds) than the 100 that best predict a tenth of the training cells'
# tokens (0.0088 +- 0.0013), though the latter's NLL is lower (see the experiment log, session 8).
CONTEXT_SHRINKAGE = 20.0


def token_frequencies(data: AlignedCounts, chunk_size: int = 1024) -> torch.Tensor:
    """Per-gene token frequencies (G, 281) over all cells; unobserved genes get the pooled average."""
    counts = token_counts(data, np.zeros(data.n_cells, dtype=np.int64), 1, chunk_size=chunk_size)
    frequencies = counts[0].double()
    frequencies /= frequencies.sum(1, keepdim=True)
    frequencies[~torch.from_numpy(data.observed)] = frequencies[torch.from_numpy(data.observed)].mean(0)
    return frequencies.float()


def context_token_counts(
    adata: ad.AnnData,
    alignment: GeneAlignment,
    conditions: ConditionMap,
    cells: np.ndarray | None,
    obs: pd.DataFrame | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token counts per context (C, G, 281) and over those cells (G, 281) for the context prior.

    ``obs`` replaces ``adata.obs`` (all cells) where the conditions use derived columns (depth).
    """
    obs = adata.obs if obs is None else obs
    obs = obs if cells is None else obs.iloc[cells]
    column, first, n_contexts = conditions.location("source")
    contexts = conditions.encode_obs(obs)[:, column] - first
    per_context = token_counts(AlignedCounts(adata, alignment, cells=cells), contexts, n_contexts).float()
    return per_context, per_context.sum(0)


def context_bases(model: MaskPredictor, base: torch.Tensor, n_contexts: int) -> list[np.ndarray]:
    """Each context's starting token distribution (G, 281): the base, times its context prior."""
    if n_contexts == 1 or not model.uses_context_prior:
        return [base.double().numpy()] * n_contexts
    log_base = torch.log(base.double().clamp_min(TOKEN_FLOOR))
    return [torch.softmax(log_base + model.context_prior[c].double(), -1).numpy() for c in range(n_contexts)]


def init_priors(
    model: MaskPredictor,
    adata: ad.AnnData,
    alignment: GeneAlignment,
    conditions: ConditionMap,
    data: AlignedCounts,
    obs: pd.DataFrame | None = None,
    prior_cells: np.ndarray | None = None,
) -> None:
    """Fill a new model's data-derived tables: token prior, context prior, perturbation and
    depth tilts. ``obs`` (all cells of ``adata``) carries derived condition columns (depth).
    ``prior_cells`` (rows of ``adata``; None: all) are the cells the tables may see: every cell
    but the validation slice, whose NLL would otherwise be scored by tables fitted on it.

    A perturbation model measures the token and context priors on its *control* cells (all of
    them, before the cap): they are then each context's baseline, and every perturbation is a
    shift from it, the same in every context (the tilts are calibrated against it), so a
    context's perturbation mix (e.g. a cell type whose stimulated cells are held out) does not
    leak into its baseline.
    """
    perturbation = conditions.slot("perturbation")
    controls = None
    if perturbation is not None:
        allowed = np.arange(adata.n_obs) if prior_cells is None else np.asarray(prior_cells)
        labels = adata.obs[perturbation.key].astype(str).to_numpy()
        controls = allowed[labels[allowed] == perturbation.control_label]
    base = token_frequencies(data if controls is None else AlignedCounts(adata, alignment, cells=controls))
    if model.tilted:
        init_shrunk_token_prior(
            model, data if controls is None else AlignedCounts(adata, alignment, cells=controls)
        )
    elif model.config.token_prior:
        model.init_token_prior(base)
    if model.uses_context_prior:
        context_cells = controls if controls is not None else prior_cells
        counts = context_token_counts(adata, alignment, conditions, context_cells, obs)
        model.init_context_prior(*counts, shrinkage=CONTEXT_SHRINKAGE)
    if model.config.has_tilts:
        # What raising tilts (shift and depth prior alike) multiply and add past the highest count.
        table, tail = raising_rule(base.numpy(), model.config.has_poisson_tail)
        if tail is not None:
            model.init_tilt_tail(torch.from_numpy(tail))
    if model.uses_perturbation_prior:
        source = conditions.slot("source")
        every_cell = AlignedCounts(adata, alignment, cells=prior_cells)
        cells_obs = adata.obs if prior_cells is None else adata.obs.iloc[prior_cells]
        per_context = model.config.tilt_contexts > 1
        # One pass over the cells serves the fold changes and the log-expression shifts.
        moments = pair_moments(every_cell, cells_obs, perturbation.key, source.key if source else None)
        folds = log_fold_changes(
            every_cell,
            cells_obs,
            perturbation,
            source.key if source else None,
            source.labels if per_context else None,
            moments,
        )
        # Each context's tilts are calibrated against the base the model starts from there.
        bases = context_bases(model, base, len(folds))
        tilts = np.stack(
            [calibrate_tilts(b, f, table, pseudo_count=PSEUDO_COUNT, tail=tail) for b, f in zip(bases, folds)]
        )
        log_shifts = None
        if model.config.has_log_mean_combination:
            # Measured where a context saw the label (per-context tilts only), else what its tilt gives.
            measured = np.full(tilts.shape, np.nan)
            if per_context:
                measured = log_expression_shifts(moments, perturbation, source.labels, every_cell.observed)
            log_shifts = torch.from_numpy(implied_log_shifts(measured, bases, tilts, table, tail))
        model.init_perturbation_tilt(
            *(torch.from_numpy(t) for t in (tilts, table, folds)), log_shifts=log_shifts
        )
    if model.config.has_depth_prior:
        # Measured on the controls too: each context's bins then hold its baseline at each depth.
        at_depth = data if controls is None else AlignedCounts(adata, alignment, cells=controls)
        depth_obs = obs if obs is not None else adata.obs
        init_depth_prior(model, conditions, at_depth, base, depth_obs, (table, tail))


def init_shrunk_token_prior(model: MaskPredictor, data: AlignedCounts, seed: int = 0) -> None:
    """The tilted head's table: each gene's token frequencies shrunk towards all genes' pooled
    distribution, so a count a gene never showed in training keeps a sane probability; the
    strength is the one that best predicts a tenth of these cells from the other nine tenths."""
    observed = torch.from_numpy(data.observed)
    rng = np.random.default_rng([seed, 0x5A1])
    part = (rng.random(data.n_cells) < 0.1).astype(np.int64)
    fitted, held = token_counts(data, part, 2).double()
    counts = fitted + held
    table, _ = fit_shrunk_table(fitted, held, pooled_distribution(counts, observed))
    highest = N_EXPRESSION_TOKENS - 1 - (counts > 0).flip(-1).double().argmax(-1)
    model.init_token_prior(table.float(), floor=1e-30, highest=highest)


def implied_log_shifts(
    measured: np.ndarray,
    bases: list[np.ndarray],
    tilts: np.ndarray,
    table: np.ndarray,
    tail: np.ndarray | None,
) -> np.ndarray:
    """Each label's shift in mean log1p(count) per context (C, n_labels, G): as ``measured``
    where the context saw the label, else what the label's tilt gives against the base it was
    calibrated on (a transferred fold's log-expression shift)."""
    statistic = log_expression()
    result = measured.copy()
    for context, (base, context_tilts) in enumerate(zip(bases, tilts)):
        rows = np.flatnonzero(np.isnan(measured[context]).any(-1))
        if len(rows):
            implied = (
                tilted_expectations(base, context_tilts[rows], table, statistic, tail) - base @ statistic
            )
            result[context, rows] = np.where(
                np.isnan(measured[context, rows]), implied, measured[context, rows]
            )
    return result


def init_depth_prior(
    model: MaskPredictor,
    conditions: ConditionMap,
    data: AlignedCounts,
    base: torch.Tensor,
    obs: pd.DataFrame,
    rule: tuple[np.ndarray, np.ndarray | None],
) -> None:
    """Calibrate the depth tilts (each context's base tilted to each depth bin's mean library
    size) and, with depth tables, each bin's residual from its tilted distribution; ``rule``
    is the (table, tail) of :func:`~lingshu.training.perturbation_shift.raising_rule`."""
    config = model.config
    encoded = conditions.encode_obs(obs if data.cells is None else obs.iloc[data.cells])
    column, first, n_bins = conditions.location(DEPTH_SLOT)
    bins = encoded[:, column] - first
    contexts = np.zeros(len(encoded), dtype=np.int64)
    if config.depth_contexts > 1:
        contexts = encoded[:, config.context_column] - config.context_offset
    folds = depth_log_folds(library_sizes(data), bins, contexts, config.depth_contexts, n_bins)
    table, tail = rule
    bases = context_bases(model, base, config.depth_contexts)
    tilts = calibrate_depth_tilts(bases, folds, table, tail)
    model.init_depth_tilt(torch.from_numpy(tilts), torch.from_numpy(table))
    if config.has_depth_tables:
        width = config.depth_table_width
        groups = contexts * n_bins + bins
        counts = token_counts(data, groups, config.depth_contexts * n_bins, width=width).numpy()
        tilted = np.stack([tilted_distributions(b, t, table, width, tail) for b, t in zip(bases, tilts)])
        residuals = depth_residuals(tilted, counts.reshape(tilted.shape), DEPTH_SHRINKAGE)
        model.init_depth_residual(torch.from_numpy(residuals))


def observations(
    adata: ad.AnnData, alignment: GeneAlignment, depth_bins: int, context_key: str | None
) -> pd.DataFrame:
    """``adata.obs``, plus each cell's depth-bin label (a copy) when the model has depth bins."""
    if not depth_bins:
        return adata.obs
    return with_depth_column(adata.obs, AlignedCounts(adata, alignment), depth_bins, context_key)


def depth_settings(conditions: ConditionMap) -> dict[str, int]:
    """The ModelConfig fields locating the depth slot (none without one)."""
    location = conditions.location(DEPTH_SLOT)
    if location is None:
        return {}
    column, first, n_bins = location
    n_contexts = (conditions.location("source") or (0, 0, 1))[2]
    return {"depth_bins": n_bins, "depth_column": column, "depth_offset": first, "depth_contexts": n_contexts}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train(
    adata: ad.AnnData | Callable[[], ad.AnnData],
    out_dir: str | Path,
    preset: str = "cpu",
    model_overrides: dict | None = None,
    train_overrides: dict | None = None,
    vocabulary: GeneVocabulary | None = None,
    min_cells: int = 1,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    condition_keys: dict[str, str] | None = None,
    control_label: str | None = None,
    perturbation_kind: str = "genetic",
    devices: int = 1,
    depth_bins: int = 0,
    init_from: str | Path | None = None,
) -> Checkpoint:
    """Train a Lingshu-Cell model on the raw counts in ``adata`` and write a checkpoint directory.

    ``adata`` may also be a picklable function that loads the cells: with ``devices > 1`` every
    process then reads them itself (disk-backed files included) instead of receiving a copy.

    With ``resume=True`` training continues from the checkpoint in ``out_dir`` (same data
    required) up to the configured ``max_steps``; on CPU the result equals an uninterrupted run.
    ``condition_keys`` maps condition roles to ``obs`` columns, e.g. ``{"source": "cell_type"}``:
    each becomes a condition token prepended to every cell (never masked). A ``perturbation``
    key needs ``control_label``: controls are trained under it, capped at
    ``max_control_fraction`` of the cells, and for genetic perturbations the genes each target
    strongly down-regulates per context are stored with the model for prior injection.
    ``devices > 1`` trains data-parallel in that many new local processes (one GPU each on
    CUDA); under torchrun (``WORLD_SIZE`` set) this process is one rank of the group. Either
    way the result equals a single-process run on the same global batches (up to rounding).
    ``depth_bins`` > 0 adds a depth condition (each cell's library-size quantile bin within its
    source context) with its depth prior; generation then draws bins in training proportions.
    ``init_from`` (a checkpoint directory) starts from a pretrained model: its architecture and
    learned weights, moved onto this file's genes by symbol and onto its condition labels
    (:mod:`lingshu.training.init_from`); the tables are measured here, the schedule is ``preset``'s.
    """
    options = dict(
        preset=preset,
        model_overrides=model_overrides,
        train_overrides=train_overrides,
        vocabulary=vocabulary,
        min_cells=min_cells,
        resume=resume,
        device=device,
        progress=progress,
        condition_keys=condition_keys,
        control_label=control_label,
        perturbation_kind=perturbation_kind,
        depth_bins=depth_bins,
        init_from=None if init_from is None else str(init_from),
    )
    if resume and init_from is not None:
        raise ValueError("--resume continues a run; --init-from starts a new one: give one of them")
    if devices < 1:
        raise ValueError(f"--devices must be >= 1, got {devices}")
    if devices > 1 and distributed.env_world_size() == 1:
        # Refuse an uneven split of the global batch before starting any process (a resumed
        # run's batch size is in its checkpoint: the processes check that one themselves).
        batch_size = (train_overrides or {}).get("batch_size")
        if batch_size is None and not resume:
            batch_size = get_preset(preset).train.batch_size
        if batch_size is not None:
            distributed.check_batch_size(batch_size, devices)
        return train_in_processes(devices, adata, out_dir, **options)
    if callable(adata):
        adata = adata()
    if devices > 1 and devices != distributed.env_world_size():
        raise ValueError(
            f"--devices {devices} but torchrun started {distributed.env_world_size()} processes; "
            "under torchrun leave --devices out"
        )
    device = torch.device(device) if device is not None else default_device()
    with distributed.process_group(device) as rank_device:
        return _train(adata, Path(out_dir), **{**options, "device": rank_device})


def train_in_processes(
    n_processes: int, data: ad.AnnData | Callable[[], ad.AnnData], out_dir: str | Path, **options
) -> Checkpoint:
    """Run :func:`train` with ``options`` in ``n_processes`` new local processes (one rank each).

    ``data`` is the AnnData itself (copied into every process) or a picklable function that
    loads it, which each process calls (disk-backed files are opened by every process).
    Returns the checkpoint rank 0 wrote.
    """
    if isinstance(data, ad.AnnData) and data.isbacked:  # an open HDF5 file cannot be sent to a process
        raise ValueError(
            "a disk-backed AnnData cannot be copied to other processes: pass a function that opens it"
        )
    device = options.get("device")
    distributed.check_device_count(n_processes, torch.device(device) if device else default_device())
    distributed.launch(_train_worker, n_processes, data, out_dir, options)
    return load_checkpoint(Path(out_dir), with_optimizer=True)


def _train_worker(data, out_dir: str | Path, options: dict) -> None:
    train(data, out_dir, **options)


def _train(
    adata: ad.AnnData,
    out_dir: Path,
    preset: str,
    model_overrides: dict | None,
    train_overrides: dict | None,
    vocabulary: GeneVocabulary | None,
    min_cells: int,
    resume: bool,
    device: torch.device,
    progress: bool,
    condition_keys: dict[str, str] | None,
    control_label: str | None,
    perturbation_kind: str,
    depth_bins: int,
    init_from: str | None,
) -> Checkpoint:
    """One process's share of :func:`train` (the whole of it without a process group)."""
    fingerprint = data_fingerprint(adata)
    if resume:
        previous = load_checkpoint(out_dir, with_optimizer=True)
        if previous.data_fingerprint != fingerprint:
            raise ValueError(f"--resume: the data differ from those {out_dir} was trained on")
        vocabulary = previous.vocabulary
        conditions = ConditionMap.from_dict(previous.conditions)
        source = conditions.slot("source")
        alignment = vocabulary.align(adata)
        obs = observations(adata, alignment, previous.model_config.depth_bins, source.key if source else None)
        prior = previous.prior
        model_config = previous.model_config
        # A stop short of the schedule's end is not inherited: resuming goes on from it.
        train_config = replace(previous.train_config, **{"stop_step": 0, **(train_overrides or {})})
    else:
        if (out_dir / "manifest.json").exists():
            raise FileExistsError(f"{out_dir} already holds a checkpoint; pass --resume or another --out")
        chosen = get_preset(preset)
        pretrained = None
        if init_from is not None:
            pretrained = load_checkpoint(Path(init_from))
            # The network's shape is the pretrained one's; the preset gives the schedule.
            chosen = replace(chosen, model=replace(chosen.model, **architecture_of(pretrained)))
        if vocabulary is None and pretrained is not None:
            vocabulary = fine_tuning_vocabulary(pretrained, adata, min_cells)
        vocabulary = vocabulary or GeneVocabulary.from_adata(adata, min_cells=min_cells)
        keys = dict(condition_keys or {})
        alignment = vocabulary.align(adata)
        obs = observations(adata, alignment, depth_bins, keys.get("source"))
        if depth_bins:
            keys[DEPTH_SLOT] = DEPTH_KEY
        conditions = ConditionMap.from_obs(
            obs, keys, control_label=control_label, perturbation_kind=perturbation_kind
        )
        column, first, n_contexts = conditions.location("source") or (-1, 0, 0)
        overrides = dict(model_overrides or {})
        if n_contexts * len(vocabulary) * N_EXPRESSION_TOKENS > MAX_CONTEXT_PRIOR_ENTRIES:
            print(
                f"{n_contexts:,} contexts x {len(vocabulary):,} genes: too many for a context prior; left out"
            )
            overrides["context_prior"] = False
        perturbed_at, first_perturbation, n_perturbations = conditions.location("perturbation") or (-1, 0, 0)
        # One tilt per context and perturbation where that table stays small, else pooled ones.
        per_context_tilts = (
            n_contexts > 1 and n_contexts * n_perturbations * len(vocabulary) <= MAX_TILT_ENTRIES
        )
        # A cytokine raises a gene in every cell, often far past what its controls show; a
        # genetic raise (CRISPRa) reaches some cells and not others, which a Poisson bump is not.
        overrides.setdefault("poisson_tail", n_perturbations > 0 and perturbation_kind == "cytokine")
        overrides.setdefault("combine_log_means", n_perturbations > 0)
        model_config: ModelConfig = replace(
            chosen.model,
            n_genes=len(vocabulary),
            n_condition_tokens=conditions.n_tokens,
            n_condition_slots=conditions.n_slots,
            condition_widths=conditions.widths,
            context_column=column,
            context_offset=first,
            n_contexts=n_contexts,
            perturbation_column=perturbed_at,
            perturbation_width=conditions.slot("perturbation").width if n_perturbations else 0,
            perturbation_offset=first_perturbation,
            n_perturbation_labels=n_perturbations,
            tilt_contexts=n_contexts if per_context_tilts else 1,
            **depth_settings(conditions),
            **overrides,
        )
        train_config: TrainConfig = replace(chosen.train, **(train_overrides or {}))
    distributed.check_batch_size(train_config.batch_size, distributed.world_size())
    perturbation = conditions.slot("perturbation")
    source = conditions.slot("source")
    if not resume:
        # Only rank 0 writes checkpoints, so only it pays for the differential-expression tests.
        prior = (
            find_prior(adata, perturbation, source.key if source else None, train_config.seed).to_dict()
            if perturbation is not None and perturbation.kind == "genetic" and distributed.is_main()
            else {}
        )
    cells = None
    if perturbation is not None:
        cells = cap_controls(
            adata.obs,
            perturbation.key,
            perturbation.control_label,
            train_config.max_control_fraction,
            train_config.seed,
            context_key=source.key if source else None,
        )
        if distributed.is_main():
            print(
                f"training on {len(cells):,} of {adata.n_obs:,} cells (controls capped at "
                f"{train_config.max_control_fraction:.0%})"
            )
    validation_cells = None
    if train_config.val_fraction > 0:
        pool = np.arange(adata.n_obs) if cells is None else cells
        kept, held = validation_split(len(pool), train_config.val_fraction, train_config.seed)
        cells, validation_cells = pool[kept], pool[held]
        if distributed.is_main():
            print(f"holding back {len(held):,} of {len(pool):,} cells as the validation slice")
    if distributed.is_main():
        print(alignment.report())
    torch.manual_seed(train_config.seed)
    data = AlignedCounts(adata, alignment, cells=cells)
    model = MaskPredictor(model_config)

    def encode(rows: np.ndarray | None) -> np.ndarray | None:
        return conditions.encode_obs(obs if rows is None else obs.iloc[rows]) if conditions.n_slots else None

    encoded = encode(cells)
    validation = None
    if validation_cells is not None:
        held_out = AlignedCounts(adata, alignment, cells=validation_cells)
        validation = ValidationSet.from_counts(held_out, encode(validation_cells), train_config.seed).nll
    if not resume:
        prior_cells = None
        if validation_cells is not None:
            prior_cells = np.setdiff1d(np.arange(adata.n_obs), validation_cells)
        init_priors(model, adata, alignment, conditions, data, obs, prior_cells)
        if pretrained is not None:
            transfer = transfer_weights(model, vocabulary, conditions, pretrained)
            if distributed.is_main():
                print(transfer.report())
    trainer = Trainer(model, train_config, device)
    if resume:
        trainer.model.load_state_dict(previous.model_state)
        trainer.ema.load_state_dict(previous.ema_state)
        if previous.optimizer_state is not None:
            trainer.optimizer.load_state_dict(previous.optimizer_state)
        trainer.step, trainer.log = previous.step, list(previous.log)
        trainer.validation_log, trainer.best_state = list(previous.validation_log), previous.best_state
        trainer.train_seconds = (
            previous.validation_log[-1]["train_seconds"] if previous.validation_log else 0.0
        )

    def snapshot(current: Trainer) -> Checkpoint:
        return Checkpoint(
            model_config=model_config,
            train_config=train_config,
            vocabulary=vocabulary,
            model_state={k: v.detach().cpu() for k, v in current.model.state_dict().items()},
            ema_state=current.ema.state_dict(),
            optimizer_state=current.optimizer.state_dict(),
            step=current.step,
            data_fingerprint=fingerprint,
            log=current.log,
            conditions=conditions.to_dict(),
            prior=prior,
            validation_log=current.validation_log,
            best_state=current.best_state,
        )

    trainer.run(
        data,
        conditions=encoded,
        on_checkpoint=lambda current: save_checkpoint(snapshot(current), out_dir),
        progress=progress,
        validation=validation,
    )
    final = snapshot(trainer)
    fits_state_prior = (
        train_config.state_prior_components > 0
        and model_config.encoder == "cell_mlp"
        and not conditions.n_slots
    )
    if fits_state_prior and distributed.is_main():
        final.state_prior = fit_state_prior(
            final.build_model(),
            data.rows,
            data.n_cells,
            data.observed_of,
            train_config.state_prior_components,
            train_config.state_prior_first_fraction,
            train_config.seed,
        )
        print(
            f"state prior: {final.state_prior.n_components} Gaussians fitted to the cell states of "
            f"{min(data.n_cells, MAX_FIT_CELLS):,} training cells (generation draws a state from it first)"
        )
    if distributed.is_main() and (
        fits_state_prior
        or not (out_dir / "manifest.json").exists()
        or load_checkpoint(out_dir).step != trainer.step
    ):
        save_checkpoint(final, out_dir)
    distributed.barrier()  # no rank leaves before rank 0 has written the checkpoint
    return final
