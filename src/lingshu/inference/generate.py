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
from lingshu.data.tokenizer import decode_tokens
from lingshu.model.diffusion import sample_tokens
from lingshu.runtime import keep_freed_memory
from lingshu.training.checkpoint import Checkpoint, load_checkpoint

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
) -> ad.AnnData:
    """Generate ``n_cells`` new cells by iterative unmasking (``n_steps`` forward passes per batch).

    Returns AnnData with integer counts (CSR int32) over the model's gene vocabulary and
    provenance in ``uns['lingshu']``. The same seed, checkpoint and batch size give the same cells.
    For a conditional model, ``conditions`` fixes one label per condition (``{"cell_type": "B"}``);
    without it, conditions are drawn in their training proportions. Labels go to ``obs``.
    """
    if n_cells < 1:
        raise ValueError(f"n_cells must be >= 1, got {n_cells}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    source = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(Path(checkpoint))
    model = source.build_model(use_ema=use_ema).to(device)
    condition_map = ConditionMap.from_dict(source.conditions)
    labels = condition_labels(condition_map, n_cells, conditions, seed)
    token_ids = (
        torch.from_numpy(np.stack([condition_map.encode_labels(list(row)) for row in labels.to_numpy()]))
        if condition_map.n_slots
        else None
    )
    generator = torch.Generator().manual_seed(seed)
    keep_freed_memory()  # every sampling step allocates the same big tensors: reuse their pages
    blocks = []
    with tqdm(total=n_cells, disable=not progress, desc="generating", unit="cell") as bar:
        for start in range(0, n_cells, batch_size):
            size = min(batch_size, n_cells - start)
            batch_conditions = None if token_ids is None else token_ids[start : start + size].to(device)
            tokens = sample_tokens(
                model, size, n_steps, generator, conditions=batch_conditions, device=device
            )
            blocks.append(sp.csr_matrix(decode_tokens(tokens.cpu().numpy()).astype(np.int32)))
            bar.update(size)
    counts = sp.vstack(blocks, format="csr")
    adata = ad.AnnData(
        X=counts,
        obs=labels.set_axis([f"generated_{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=pd.Index(source.vocabulary.genes)),
    )
    adata.uns["lingshu"] = {
        "package_version": lingshu.__version__,
        "checkpoint": str(checkpoint) if not isinstance(checkpoint, Checkpoint) else "",
        "checkpoint_step": source.step,
        "data_fingerprint": source.data_fingerprint,
        "n_steps": n_steps,
        "seed": seed,
        "batch_size": batch_size,
        "weights": "ema" if use_ema else "raw",
        "decoding": DECODING_RULE,
        "conditions": dict(conditions or {}) or ("training proportions" if condition_map.n_slots else "none"),
    }
    return adata


def condition_labels(
    condition_map: ConditionMap, n_cells: int, requested: dict[str, str] | None, seed: int
) -> pd.DataFrame:
    """One row of labels (a column per condition key) for each cell to generate."""
    if not condition_map.n_slots:
        if requested:
            raise ValueError("this model was trained without conditions; drop --condition")
        return pd.DataFrame(index=range(n_cells))
    keys = [slot.key for slot in condition_map.slots]
    if requested:
        row = condition_map.resolve(requested)
        condition_map.encode_labels(row)  # unknown labels fail here, before any generation
        return pd.DataFrame([row] * n_cells, columns=keys)
    weights = np.asarray(condition_map.combination_counts, dtype=float)
    rng = np.random.default_rng([seed, 0xC0DE])
    picks = rng.choice(len(weights), size=n_cells, p=weights / weights.sum())
    return pd.DataFrame([condition_map.combinations[i] for i in picks], columns=keys)
