"""Fixed, seeded cell splits stored as JSON files (held-out cell names + rationale)."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np

SPLITS_DIR = Path(__file__).resolve().parents[1] / "splits"


def make_cell_split(obs_names, held_out_fraction: float = 0.2, seed: int = 0, dataset: str = "") -> dict:
    """Draw a random held-out set of cells; returns the split as a JSON-ready dict."""
    names = np.asarray([str(n) for n in obs_names])
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must lie in (0, 1), got {held_out_fraction}")
    rng = np.random.default_rng(seed)
    n_held = int(round(held_out_fraction * len(names)))
    held = np.sort(rng.choice(len(names), size=n_held, replace=False))
    return {
        "dataset": dataset,
        "kind": "cells",
        "seed": seed,
        "held_out_fraction": held_out_fraction,
        "rationale": f"uniformly random {held_out_fraction:.0%} of cells, numpy default_rng({seed})",
        "held_out_cells": names[held].tolist(),
    }


def save_split(split: dict, path: Path) -> None:
    path.write_text(json.dumps(split, indent=1) + "\n")


def load_split(name_or_path: str | Path) -> dict:
    """Load a split by file path, or by the name of a split shipped with the package."""
    path = Path(name_or_path)
    if not path.is_file():
        path = SPLITS_DIR / f"{name_or_path}.json"
    if not path.is_file():
        shipped = sorted(p.stem for p in SPLITS_DIR.glob("*.json"))
        raise FileNotFoundError(f"no split file {name_or_path!r}; shipped splits: {shipped}")
    return json.loads(path.read_text())


def apply_cell_split(adata: ad.AnnData, split: dict) -> tuple[ad.AnnData, ad.AnnData]:
    """Return ``(train, held_out)`` copies of ``adata`` according to a cell split."""
    held_names = set(split["held_out_cells"])
    is_held = np.array([str(n) in held_names for n in adata.obs_names])
    missing = len(held_names) - int(is_held.sum())
    if missing:
        raise ValueError(f"{missing} held-out cells of the split are not in the data; wrong dataset?")
    return adata[~is_held].copy(), adata[is_held].copy()
