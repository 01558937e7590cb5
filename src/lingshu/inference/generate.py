"""Unconditional cell generation from a checkpoint, returned as AnnData of integer counts."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

import lingshu
from lingshu.data.conditions import ConditionMap
from lingshu.data.depth import DEPTH_SLOT
from lingshu.data.tokenizer import decode_tokens
from lingshu.model.diffusion import sample_tokens
from lingshu.model.state_prior import StatePrior
from lingshu.model.transformer import MaskPredictor
from lingshu.runtime import keep_freed_memory
from lingshu.training.checkpoint import Checkpoint, load_checkpoint

# Condition slots that generation draws in training proportions when they are not asked for.
DRAWN_SLOTS = (DEPTH_SLOT,)
DECODING_RULE = "exact below 100; bin midpoint (lower edge + width // 2) above; overflow -> 10000"


def generate(
    checkpoint: str | Path | Checkpoint,
    n_cells: int,
    n_steps: int = 256,
    seed: int = 0,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
    progress: bool = True,
    conditions: dict[str, str] | None = None,
    guidance: float = 0.0,
    network: bool = True,
    state_prior: bool = True,
) -> ad.AnnData:
    """Generate ``n_cells`` new cells by iterative unmasking (``n_steps`` forward passes per batch).

    Returns AnnData with integer counts (CSR int32) over the model's gene vocabulary and
    provenance in ``uns['lingshu']``. The same seed, checkpoint and batch size give the same cells.
    For a conditional model, ``conditions`` fixes one label per condition (``{"cell_type": "B"}``);
    without it, conditions are drawn in their training proportions. Labels go to ``obs``.
    ``guidance`` w > 0 applies classifier-free guidance against the control label of a
    perturbation model (``l(ctrl) + (w+1)(l(c) - l(ctrl))``); unconditional generation uses none.
    ``network=False`` samples the checkpoint's priors alone (its network switched off).
    ``state_prior=False`` skips the checkpoint's cell-state draw (plain unmasking from nothing);
    a checkpoint without one, the raw weights and the priors alone always unmask plainly.
    """
    if n_cells < 1:
        raise ValueError(f"n_cells must be >= 1, got {n_cells}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    source = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(Path(checkpoint))
    model = source.build_model(use_ema=use_ema).to(device)
    condition_map = ConditionMap.from_dict(source.conditions)
    labels = condition_labels(condition_map, n_cells, conditions, seed)
    token_ids = encode_rows(condition_map, labels)
    control_ids = None
    if guidance:
        if condition_map.slot("perturbation") is None:
            raise ValueError("guidance needs a model trained with a perturbation condition (and its control)")
        control_ids = encode_rows(condition_map, labels, as_control=True)
    # The state prior was fitted to the sampling (EMA) weights' states, not the raw weights'.
    states = source.state_prior if state_prior and network and use_ema else None
    counts = sample_counts(
        model,
        n_cells,
        n_steps,
        seed,
        batch_size,
        device,
        progress,
        token_ids,
        control_ids,
        guidance,
        network=network,
        state_prior=states,
    )
    adata = ad.AnnData(
        X=counts,
        obs=labels.set_axis([f"generated_{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=pd.Index(source.vocabulary.genes)),
    )
    adata.uns["lingshu"] = provenance(
        checkpoint,
        source,
        n_steps=n_steps,
        seed=seed,
        batch_size=batch_size,
        weights="ema" if use_ema else "raw",
        guidance=guidance,
        conditions=dict(conditions or {}) or ("training proportions" if condition_map.n_slots else "none"),
        network="on" if network else "off (priors alone)",
        state_prior=(
            f"drawn first ({states.n_components} components, {states.first_fraction:g} of genes)"
            if states is not None
            else "none (plain unmasking)"
        ),
    )
    return adata


def provenance(checkpoint: str | Path | Checkpoint, source: Checkpoint, **settings) -> dict:
    """What made a set of cells: package, checkpoint, its data and the sampling settings."""
    return {
        "package_version": lingshu.__version__,
        "checkpoint": str(checkpoint) if not isinstance(checkpoint, Checkpoint) else "",
        "checkpoint_step": source.step,
        "data_fingerprint": source.data_fingerprint,
        "model_priors": source.model_config.priors(),
        "decoding": DECODING_RULE,
        **settings,
    }


def encode_rows(
    condition_map: ConditionMap, labels: pd.DataFrame, as_control: bool = False
) -> torch.Tensor | None:
    """Condition tokens (n, n_positions) for rows of labels (optionally their control version)."""
    if not condition_map.n_slots:
        return None
    rows = [list(row) for row in labels.to_numpy()]
    if as_control:
        rows = [condition_map.with_control(row) for row in rows]
    return torch.from_numpy(np.stack([condition_map.encode_labels(row) for row in rows]))


def sample_counts(
    model: MaskPredictor,
    n_cells: int,
    n_steps: int,
    seed: int,
    batch_size: int,
    device: str | torch.device,
    progress: bool,
    condition_ids: torch.Tensor | None = None,
    control_ids: torch.Tensor | None = None,
    guidance: float = 0.0,
    prefill: torch.Tensor | None = None,
    desc: str = "generating",
    extra_tilt: torch.Tensor | None = None,
    network: bool = True,
    state_prior: StatePrior | None = None,
) -> sp.csr_matrix:
    """Sample ``n_cells`` in batches and decode them to a CSR int32 count matrix.

    ``condition_ids`` / ``control_ids`` are (n_cells, n_positions) condition tokens (the latter
    the CFG reference), ``prefill`` (n_cells, G) holds fixed token ids (>= 0) or -1,
    ``extra_tilt`` (n_cells, G) adds to the shift prior's tilt (:func:`sample_tokens`).
    With a ``state_prior``, each cell's state is drawn from it first (:func:`sample_tokens`'s
    ``first_states``).
    """
    generator = torch.Generator().manual_seed(seed)
    keep_freed_memory()  # every sampling step allocates the same big tensors: reuse their pages
    blocks = []
    with tqdm(total=n_cells, disable=not progress, desc=desc, unit="cell") as bar:
        for start in range(0, n_cells, batch_size):
            part = slice(start, min(start + batch_size, n_cells))
            size = part.stop - start

            def rows(values: torch.Tensor | None, part: slice = part) -> torch.Tensor | None:
                return None if values is None else values[part].to(device)

            states = state_prior.sample(size, generator) if state_prior is not None and network else None
            tokens = sample_tokens(
                model,
                size,
                n_steps,
                generator,
                conditions=rows(condition_ids),
                control_conditions=rows(control_ids),
                guidance=guidance,
                prefill=rows(prefill),
                device=device,
                extra_tilt=rows(extra_tilt),
                network=network,
                first_states=states,
                first_fraction=state_prior.first_fraction if state_prior is not None else 0.0,
            )
            blocks.append(sp.csr_matrix(decode_tokens(tokens.cpu().numpy()).astype(np.int32)))
            bar.update(size)
    return sp.vstack(blocks, format="csr")


def draw_slots(
    condition_map: ConditionMap, row: list[str | None], n_cells: int, rng: np.random.Generator
) -> pd.DataFrame:
    """``n_cells`` rows of ``row`` (one label per slot) with its None slots (the depth bin)
    drawn per cell, in the training proportions of the combinations that share the given labels.

    A combination never seen in training (a held-out perturbation in its context) draws them
    as the cells of the same source context did, and without one as all training cells did.
    """
    keys = [slot.key for slot in condition_map.slots]
    labels = pd.DataFrame([row] * n_cells, columns=keys)
    drawn = [key for key, label in zip(keys, row) if label is None]
    if not drawn or not n_cells:
        return labels
    combinations = pd.DataFrame(condition_map.combinations, columns=keys)
    weights = np.asarray(condition_map.combination_counts, dtype=float)
    source = condition_map.slot("source")
    fixed = [key for key in keys if key not in drawn]
    for shared in (fixed, [source.key] if source else [], []):
        matches = (combinations[shared] == labels.loc[0, shared]).all(axis=1).to_numpy()
        if matches.any():
            break
    picks = rng.choice(np.flatnonzero(matches), size=n_cells, p=weights[matches] / weights[matches].sum())
    labels[drawn] = combinations.loc[picks, drawn].to_numpy()
    return labels


def condition_labels(
    condition_map: ConditionMap, n_cells: int, requested: dict[str, str] | None, seed: int
) -> pd.DataFrame:
    """One row of labels (a column per condition key) for each cell to generate."""
    if not condition_map.n_slots:
        if requested:
            raise ValueError("this model was trained without conditions; drop --condition")
        return pd.DataFrame(index=range(n_cells))
    keys = [slot.key for slot in condition_map.slots]
    combinations = pd.DataFrame(condition_map.combinations, columns=keys)
    weights = np.asarray(condition_map.combination_counts, dtype=float)
    rng = np.random.default_rng([seed, 0xC0DE])
    if not requested:
        picks = rng.choice(len(weights), size=n_cells, p=weights / weights.sum())
        return combinations.iloc[picks].reset_index(drop=True)
    # Slots such as the depth bin are drawn, with the requested labels, in training proportions.
    labels = draw_slots(condition_map, condition_map.resolve(requested, optional=DRAWN_SLOTS), n_cells, rng)
    condition_map.encode_labels(labels.iloc[0].tolist())  # unknown labels fail here, before any generation
    return labels
