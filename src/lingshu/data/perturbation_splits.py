"""Perturbation task splits: held-out (context, perturbation) pairs stored as JSON files.

A split names the dataset, the obs columns that hold the context (cell type or cell line) and the
perturbation, the control label, and the pairs whose perturbed cells are held out. Everything else,
including every context's control cells, stays in training, so a model is asked to predict a
known perturbation in a context where it was not seen (or an unseen perturbation) from that
context's controls. Shipped splits live in ``lingshu/splits/<task>.json``; a user's own file in the
same format can be passed instead (``--split FILE``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from lingshu.data.paths import DATASETS, data_dir, dataset_path
from lingshu.data.splits import SPLITS_DIR

SPLIT_KIND = "perturbation"
# A block whose name ends so holds pairs with (almost) no real DE: reported apart, never tuned on.
NULL_EFFECT_SUFFIX = "(null effect)"
DEFAULT_BLOCK = "held out"
REQUIRED_FIELDS = ("dataset", "context_key", "perturbation_key", "control_label", "held_out")


@dataclass(frozen=True)
class HeldOutPair:
    """One held-out (context, perturbation) pair and the report block it is scored in."""

    context: str
    perturbation: str
    block: str = DEFAULT_BLOCK


@dataclass(frozen=True)
class PerturbationSplit:
    """A perturbation task: which cells are held out, and how to read the labels.

    ``constant_context`` is for single-context data without a context column (Papalexi's THP-1):
    ``apply`` then writes that label into ``obs[context_key]``. ``drop_labels`` are perturbation
    labels removed before splitting (cells with no confident guide assignment).
    """

    dataset: str
    context_key: str
    perturbation_key: str
    control_label: str
    held_out: tuple[HeldOutPair, ...]
    file: str | None = None
    constant_context: str | None = None
    drop_labels: tuple[str, ...] = ()
    seed: int = 0
    rationale: str = ""
    name: str = ""
    # genetic (knock-down/out, activation) or cytokine: the model's default guidance and prior.
    perturbation_kind: str = "genetic"
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def contexts(self) -> list[str]:
        """Contexts with at least one held-out pair, in first-seen order."""
        return list(dict.fromkeys(p.context for p in self.held_out))

    @property
    def blocks(self) -> list[str]:
        """Report blocks, in first-seen order."""
        return list(dict.fromkeys(p.block for p in self.held_out))

    def to_dict(self) -> dict:
        """The JSON form (the format of the shipped files)."""
        record = {
            "dataset": self.dataset,
            "kind": SPLIT_KIND,
            "file": self.file,
            "context_key": self.context_key,
            "constant_context": self.constant_context,
            "perturbation_key": self.perturbation_key,
            "control_label": self.control_label,
            "drop_labels": list(self.drop_labels),
            "seed": self.seed,
            "rationale": self.rationale,
            "perturbation_kind": self.perturbation_kind,
            "held_out": [
                {"context": p.context, "perturbation": p.perturbation, "block": p.block}
                for p in self.held_out
            ],
        }
        return {k: v for k, v in record.items() if v is not None}


def split_from_dict(record: dict, name: str = "") -> PerturbationSplit:
    """Build and check the shape of a split from its JSON form (labels are checked in ``apply``)."""
    if not isinstance(record, dict):
        raise ValueError(f"split {name!r}: expected a JSON object, got {type(record).__name__}")
    if record.get("kind", SPLIT_KIND) != SPLIT_KIND:
        raise ValueError(f"split {name!r} is a {record.get('kind')!r} split, not a perturbation split")
    missing = [key for key in REQUIRED_FIELDS if key not in record]
    if missing:
        raise ValueError(f"split {name!r} lacks the field(s) {missing}; required: {list(REQUIRED_FIELDS)}")
    pairs = []
    for i, entry in enumerate(record["held_out"]):
        if not isinstance(entry, dict) or not {"context", "perturbation"} <= set(entry):
            raise ValueError(f"split {name!r}: held_out[{i}] must be {{'context': ..., 'perturbation': ...}}")
        pairs.append(
            HeldOutPair(
                str(entry["context"]), str(entry["perturbation"]), str(entry.get("block", DEFAULT_BLOCK))
            )
        )
    if not pairs:
        raise ValueError(f"split {name!r} holds out no (context, perturbation) pair")
    keys = [(p.context, p.perturbation) for p in pairs]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise ValueError(f"split {name!r} lists held-out pairs twice: {duplicated}")
    if any(p.perturbation == str(record["control_label"]) for p in pairs):
        raise ValueError(f"split {name!r}: the control label {record['control_label']!r} cannot be held out")
    kind = str(record.get("perturbation_kind", "genetic"))
    if kind not in ("genetic", "cytokine"):
        raise ValueError(f"split {name!r}: perturbation_kind must be genetic or cytokine, got {kind!r}")
    known = set(REQUIRED_FIELDS) | {
        "kind",
        "file",
        "constant_context",
        "drop_labels",
        "seed",
        "rationale",
        "perturbation_kind",
    }
    return PerturbationSplit(
        dataset=str(record["dataset"]),
        context_key=str(record["context_key"]),
        perturbation_key=str(record["perturbation_key"]),
        control_label=str(record["control_label"]),
        held_out=tuple(pairs),
        file=record.get("file"),
        constant_context=record.get("constant_context"),
        drop_labels=tuple(str(x) for x in record.get("drop_labels", ())),
        seed=int(record.get("seed", 0)),
        rationale=str(record.get("rationale", "")),
        name=name,
        perturbation_kind=kind,
        extra={k: v for k, v in record.items() if k not in known},
    )


def shipped_perturbation_splits() -> list[str]:
    """Names of the perturbation splits shipped with the package."""
    names = []
    for path in sorted(SPLITS_DIR.glob("*.json")):
        try:
            if json.loads(path.read_text()).get("kind") == SPLIT_KIND:
                names.append(path.stem)
        except (OSError, ValueError):
            continue
    return names


def load_perturbation_split(name_or_path: str | Path) -> PerturbationSplit:
    """Load a shipped split by task name (``kang2018``) or a user's JSON file of the same format."""
    path = Path(name_or_path)
    if not path.is_file():
        path = SPLITS_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no split file {str(name_or_path)!r}; "
            f"shipped perturbation splits: {shipped_perturbation_splits()}"
        )
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"split file {path} is not valid JSON: {error}") from None
    return split_from_dict(record, name=path.stem)


def split_data_path(split: PerturbationSplit) -> Path:
    """The counts file of a split: ``file`` as a path, or under the data directory, or the registry."""
    if split.file:
        for candidate in (Path(split.file).expanduser(), data_dir() / split.file):
            if candidate.is_file():
                return candidate
    if split.dataset in DATASETS:
        return dataset_path(split.dataset, download=False)
    raise FileNotFoundError(
        f"data of split {split.name or split.dataset!r} not found: file {split.file!r} is neither a path "
        f"nor under {data_dir()}, and {split.dataset!r} is not a registered dataset ({sorted(DATASETS)})"
    )


def prepare_labels(adata: ad.AnnData, split: PerturbationSplit) -> ad.AnnData:
    """Check the label columns, add a constant context if asked, drop ``drop_labels`` cells.

    Returns a new AnnData whose two label columns are plain strings.
    """
    obs = adata.obs
    if split.perturbation_key not in obs:
        raise ValueError(
            f"perturbation column {split.perturbation_key!r} not in obs; columns: {list(obs.columns)}"
        )
    if split.context_key not in obs and split.constant_context is None:
        raise ValueError(
            f"context column {split.context_key!r} not in obs (columns: {list(obs.columns)}); "
            "for single-context data set 'constant_context' in the split"
        )
    perturbation = obs[split.perturbation_key].astype(str)
    keep = ~perturbation.isin(split.drop_labels).to_numpy()
    adata = adata[keep].copy() if not keep.all() else adata.copy()
    if split.context_key not in adata.obs:
        adata.obs[split.context_key] = split.constant_context
    adata.obs[split.context_key] = pd.Categorical(adata.obs[split.context_key].astype(str))
    adata.obs[split.perturbation_key] = pd.Categorical(adata.obs[split.perturbation_key].astype(str))
    return adata


def held_out_mask(adata: ad.AnnData, split: PerturbationSplit) -> np.ndarray:
    """Boolean mask of the held-out cells, after checking every label and pair against the data."""
    contexts = adata.obs[split.context_key].astype(str).to_numpy()
    perturbations = adata.obs[split.perturbation_key].astype(str).to_numpy()
    known_contexts, known_perts = set(contexts), set(perturbations)
    if split.control_label not in known_perts:
        raise ValueError(
            f"control label {split.control_label!r} not found in obs[{split.perturbation_key!r}]; "
            f"labels include {sorted(known_perts)[:10]}"
        )
    mask = np.zeros(adata.n_obs, dtype=bool)
    for pair in split.held_out:
        if pair.context not in known_contexts:
            raise ValueError(f"unknown context {pair.context!r}; known: {sorted(known_contexts)}")
        if pair.perturbation not in known_perts:
            raise ValueError(f"unknown perturbation {pair.perturbation!r} in the held-out list")
        cells = (contexts == pair.context) & (perturbations == pair.perturbation)
        if not cells.any():
            raise ValueError(f"held-out pair ({pair.context!r}, {pair.perturbation!r}) has no cells")
        mask |= cells
    for context in split.contexts:
        # Scoring and every predictor need the context's own controls, so they must be in training.
        if not ((contexts == context) & (perturbations == split.control_label)).any():
            raise ValueError(f"context {context!r} has no {split.control_label!r} cells")
    return mask


def apply_perturbation_split(adata: ad.AnnData, split: PerturbationSplit) -> tuple[ad.AnnData, ad.AnnData]:
    """Return ``(train, held_out)``: held-out pairs' cells removed from training, kept in ``held_out``.

    Both keep all obs columns; ``obs[context_key]`` and ``obs[perturbation_key]`` are categorical
    strings, so a model can be conditioned on them. Cells labelled in ``drop_labels`` are in
    neither part.
    """
    adata = prepare_labels(adata, split)
    mask = held_out_mask(adata, split)
    return adata[~mask].copy(), adata[mask].copy()


def load_task(split: PerturbationSplit | str | Path) -> tuple[PerturbationSplit, ad.AnnData, ad.AnnData]:
    """Load a split (name, path or object) and its data; return ``(split, train, held_out)``."""
    from lingshu.data.io import read_counts

    if not isinstance(split, PerturbationSplit):
        split = load_perturbation_split(split)
    train, held_out = apply_perturbation_split(read_counts(split_data_path(split)), split)
    return split, train, held_out
