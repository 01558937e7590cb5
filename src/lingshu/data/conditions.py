"""Condition labels (e.g. cell type) <-> condition-token indices, stored with a model.

Each *slot* is one condition token prepended to a cell (the paper's *source* and *perturbation*).
Slot k's labels take token indices ``offset_k .. offset_k + n_labels_k - 1`` among the model's
condition tokens. The observed label combinations and their counts are kept, so that an
unconditional request can draw conditions in training proportions.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class ConditionSlot:
    """One condition token: its role, the ``obs`` column it comes from, and its labels."""

    name: str
    key: str
    labels: list[str]


@dataclass
class ConditionMap:
    """All condition slots of a model plus the label combinations seen in training."""

    slots: list[ConditionSlot] = field(default_factory=list)
    combinations: list[list[str]] = field(default_factory=list)
    combination_counts: list[int] = field(default_factory=list)

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    @property
    def n_tokens(self) -> int:
        return sum(len(slot.labels) for slot in self.slots)

    @property
    def offsets(self) -> list[int]:
        return list(np.cumsum([0] + [len(slot.labels) for slot in self.slots[:-1]])) if self.slots else []

    @classmethod
    def from_obs(cls, obs: pd.DataFrame, keys: dict[str, str]) -> ConditionMap:
        """Build from ``obs`` columns, e.g. ``{"source": "cell_type"}``; every cell needs a label."""
        slots = []
        for name, key in keys.items():
            if key not in obs.columns:
                raise ValueError(
                    f"obs has no column {key!r} for the {name} condition; "
                    f"available columns: {list(obs.columns)}"
                )
            values = obs[key]
            if values.isna().any():
                raise ValueError(
                    f"obs[{key!r}] has {int(values.isna().sum())} cells without a label; "
                    "label or drop them before training"
                )
            slots.append(ConditionSlot(name, key, sorted(map(str, values.unique()))))
        result = cls(slots)
        if slots:
            combos = obs[[s.key for s in slots]].astype(str).value_counts(sort=False).sort_index()
            result.combinations = [
                list(index if isinstance(index, tuple) else (index,)) for index in combos.index
            ]
            result.combination_counts = [int(c) for c in combos.to_numpy()]
        return result

    def _index(self, slot: ConditionSlot, offset: int, label: str) -> int:
        try:
            return offset + slot.labels.index(str(label))
        except ValueError:
            near = difflib.get_close_matches(str(label), slot.labels, n=3, cutoff=0.3)
            raise ValueError(
                f"unknown {slot.name} label {label!r} for obs[{slot.key!r}]; "
                + (f"nearest known: {', '.join(near)}; " if near else "")
                + f"{len(slot.labels)} known labels: {', '.join(slot.labels[:12])}"
                + (", ..." if len(slot.labels) > 12 else "")
            ) from None

    def encode_obs(self, obs: pd.DataFrame) -> np.ndarray:
        """Condition-token indices (n_cells, n_slots) of the cells in ``obs``."""
        columns = []
        for slot, offset in zip(self.slots, self.offsets):
            lookup = {label: offset + i for i, label in enumerate(slot.labels)}
            values = obs[slot.key].astype(str)
            unknown = sorted(set(values) - set(lookup))
            if unknown:
                self._index(slot, offset, unknown[0])  # raises with the nearest names
            columns.append(values.map(lookup).to_numpy(dtype=np.int64))
        return np.stack(columns, axis=1) if columns else np.zeros((len(obs), 0), dtype=np.int64)

    def encode_labels(self, labels: list[str]) -> np.ndarray:
        """Token indices for one label per slot, in slot order."""
        if len(labels) != self.n_slots:
            raise ValueError(f"expected {self.n_slots} labels ({[s.key for s in self.slots]}), got {labels}")
        return np.array([self._index(s, o, lab) for s, o, lab in zip(self.slots, self.offsets, labels)])

    def resolve(self, requested: dict[str, str]) -> list[str]:
        """Turn ``{obs key or slot name: label}`` into one label per slot (all slots required)."""
        by_key = {**{s.key: s for s in self.slots}, **{s.name: s for s in self.slots}}
        unknown = sorted(set(requested) - set(by_key))
        if unknown:
            raise ValueError(
                f"unknown condition {unknown[0]!r}; this model is conditioned on "
                f"{[s.key for s in self.slots] or 'nothing'}"
            )
        chosen = {by_key[k].key: v for k, v in requested.items()}
        missing = [s.key for s in self.slots if s.key not in chosen]
        if missing:
            raise ValueError(f"give a label for every condition: missing {missing}")
        return [chosen[s.key] for s in self.slots]

    def to_dict(self) -> dict:
        return {
            "slots": [{"name": s.name, "key": s.key, "labels": s.labels} for s in self.slots],
            "combinations": self.combinations,
            "combination_counts": self.combination_counts,
        }

    @classmethod
    def from_dict(cls, values: dict) -> ConditionMap:
        return cls(
            [ConditionSlot(s["name"], s["key"], list(s["labels"])) for s in values.get("slots", [])],
            [list(c) for c in values.get("combinations", [])],
            [int(c) for c in values.get("combination_counts", [])],
        )
