"""Condition labels (cell type, cell line, perturbation) <-> condition-token indices.

Each *slot* is one condition role prepended to a cell (the paper's *source* and *perturbation*).
Slot k's labels take token indices ``offset_k .. offset_k + n_labels_k - 1`` among the model's
condition tokens. A *combinable* slot (perturbations) splits a label such as ``A+B`` into one
token per perturbed gene over ``width`` columns padded with :data:`PADDING` (-1); the model sums
the embeddings of a slot's tokens into one position, so the order of the genes does not matter
and an unseen combination of seen genes can be asked for. The observed label combinations and their
counts are kept, so that an unconditional request can draw conditions in training proportions.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# Fills the unused columns of a combinable slot (a single perturbation in a 2-wide slot).
PADDING = -1
# A combinable slot takes at least this many genes, so a model trained on single perturbations
# can still be asked for a double.
MIN_COMBINATION_WIDTH = 2
PERTURBATION_KINDS = ("genetic", "cytokine")


class UnseenLabelError(ValueError):
    """A label a condition slot never saw in training (the message lists the nearest known)."""


@dataclass
class ConditionSlot:
    """One condition role: the ``obs`` column it comes from and its token labels.

    ``separator`` (e.g. ``"+"``) makes the slot combinable: ``labels`` are then the single parts
    (genes) plus the control label, and a cell takes ``width`` positions.
    """

    name: str
    key: str
    labels: list[str]
    width: int = 1
    separator: str | None = None
    control_label: str | None = None
    kind: str | None = None  # "genetic" or "cytokine" for a perturbation slot

    def parts(self, label: str) -> list[str]:
        """The tokens of one label: its sorted parts for a combinable slot, else the label."""
        label = str(label)
        if self.separator is None or label == self.control_label:
            return [label]
        return sorted(part.strip() for part in label.split(self.separator))


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
    def n_positions(self) -> int:
        """Columns of encoded conditions per cell (a combinable slot takes ``width``)."""
        return sum(self.widths)

    @property
    def widths(self) -> tuple[int, ...]:
        """Columns of each slot: the model sums each slot's token embeddings into one position."""
        return tuple(slot.width for slot in self.slots)

    @property
    def n_tokens(self) -> int:
        return sum(len(slot.labels) for slot in self.slots)

    @property
    def offsets(self) -> list[int]:
        return list(np.cumsum([0] + [len(slot.labels) for slot in self.slots[:-1]])) if self.slots else []

    def slot(self, name: str) -> ConditionSlot | None:
        """The slot with this role name (``source`` / ``perturbation``), or None."""
        return next((s for s in self.slots if s.name == name), None)

    def location(self, name: str) -> tuple[int, int, int] | None:
        """Where slot ``name`` sits: (first encoded column, first token, n labels), or None."""
        for index, (slot, offset) in enumerate(zip(self.slots, self.offsets)):
            if slot.name == name:
                return sum(self.widths[:index]), int(offset), len(slot.labels)
        return None

    @classmethod
    def from_obs(
        cls,
        obs: pd.DataFrame,
        keys: dict[str, str],
        control_label: str | None = None,
        separator: str = "+",
        perturbation_kind: str = "genetic",
    ) -> ConditionMap:
        """Build from ``obs`` columns, e.g. ``{"source": "cell_type", "perturbation": "gene"}``.

        Every cell needs a label. The ``perturbation`` slot is combinable (``separator``) and
        must contain ``control_label``, under which control cells are trained;
        ``perturbation_kind`` (genetic or cytokine) sets the default guidance and prior.
        """
        if perturbation_kind not in PERTURBATION_KINDS:
            raise ValueError(
                f"perturbation kind must be one of {PERTURBATION_KINDS}, got {perturbation_kind!r}"
            )
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
            unique = sorted(map(str, values.unique()))
            if name != "perturbation":
                slots.append(ConditionSlot(name, key, unique))
                continue
            if control_label is None:
                raise ValueError("a perturbation condition needs its control label (--control-label)")
            if control_label not in unique:
                near = difflib.get_close_matches(control_label, unique, n=3, cutoff=0.3)
                raise ValueError(
                    f"control label {control_label!r} does not occur in obs[{key!r}]"
                    + (f"; nearest: {', '.join(near)}" if near else "")
                )
            slot = ConditionSlot(
                name, key, [], separator=separator, control_label=control_label, kind=perturbation_kind
            )
            parts = [slot.parts(label) for label in unique]
            slot.width = max(MIN_COMBINATION_WIDTH, *(len(p) for p in parts))
            slot.labels = sorted({part for p in parts for part in p})
            slots.append(slot)
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
            known = slot.labels
            near = difflib.get_close_matches(str(label), known, n=3, cutoff=0.3)
            seen = "was never seen in training" if slot.name == "perturbation" else "is unknown"
            error = UnseenLabelError if slot.name == "perturbation" else ValueError
            raise error(
                f"{slot.name} {label!r} (obs[{slot.key!r}]) {seen}; "
                + (f"nearest known: {', '.join(near)}; " if near else "")
                + f"{len(known)} known: {', '.join(known[:12])}"
                + (", ..." if len(known) > 12 else "")
            ) from None

    def _slot_tokens(self, slot: ConditionSlot, offset: int, label: str) -> list[int]:
        """Token indices of one label in one slot, padded to the slot's width."""
        parts = slot.parts(label)
        if len(parts) > slot.width:
            raise ValueError(
                f"{slot.name} {label!r} combines {len(parts)} parts; this model was trained on at "
                f"most {slot.width} per cell"
            )
        if len(set(parts)) < len(parts):
            raise ValueError(f"{slot.name} {label!r} names the same part twice")
        return [self._index(slot, offset, part) for part in parts] + [PADDING] * (slot.width - len(parts))

    def encode_obs(self, obs: pd.DataFrame) -> np.ndarray:
        """Condition-token indices (n_cells, n_positions) of the cells in ``obs``."""
        columns = []
        for slot, offset in zip(self.slots, self.offsets):
            values = obs[slot.key].astype(str)
            lookup = {label: self._slot_tokens(slot, offset, label) for label in values.unique()}
            columns.append(np.array([lookup[v] for v in values], dtype=np.int64).reshape(len(obs), -1))
        return np.concatenate(columns, axis=1) if columns else np.zeros((len(obs), 0), dtype=np.int64)

    def encode_labels(self, labels: list[str]) -> np.ndarray:
        """Token indices (n_positions,) for one label per slot, in slot order."""
        if len(labels) != self.n_slots:
            raise ValueError(f"expected {self.n_slots} labels ({[s.key for s in self.slots]}), got {labels}")
        return np.array(
            [i for s, o, lab in zip(self.slots, self.offsets, labels) for i in self._slot_tokens(s, o, lab)]
        )

    def with_control(self, labels: list[str]) -> list[str]:
        """The same labels with the perturbation replaced by the control label (the CFG reference)."""
        return [s.control_label if s.name == "perturbation" else lab for s, lab in zip(self.slots, labels)]

    def resolve(self, requested: dict[str, str], optional: tuple[str, ...] = ()) -> list[str | None]:
        """Turn ``{obs key or slot name: label}`` into one label per slot.

        Every slot is required except those named (by role) in ``optional``, which are None
        when not requested (the caller fills them, e.g. by drawing them).
        """
        by_key = {**{s.key: s for s in self.slots}, **{s.name: s for s in self.slots}}
        unknown = sorted(set(requested) - set(by_key))
        if unknown:
            raise ValueError(
                f"unknown condition {unknown[0]!r}; this model is conditioned on "
                f"{[s.key for s in self.slots] or 'nothing'}"
            )
        chosen = {by_key[k].key: v for k, v in requested.items()}
        missing = [s.key for s in self.slots if s.key not in chosen and s.name not in optional]
        if missing:
            raise ValueError(f"give a label for every condition: missing {missing}")
        return [chosen.get(s.key) for s in self.slots]

    def to_dict(self) -> dict:
        return {
            "slots": [
                {
                    "name": s.name,
                    "key": s.key,
                    "labels": s.labels,
                    "width": s.width,
                    "separator": s.separator,
                    "control_label": s.control_label,
                    "kind": s.kind,
                }
                for s in self.slots
            ],
            "combinations": self.combinations,
            "combination_counts": self.combination_counts,
        }

    @classmethod
    def from_dict(cls, values: dict) -> ConditionMap:
        return cls(
            [
                ConditionSlot(
                    s["name"],
                    s["key"],
                    list(s["labels"]),
                    int(s.get("width", 1)),
                    s.get("separator"),
                    s.get("control_label"),
                    s.get("kind"),
                )
                for s in values.get("slots", [])
            ],
            [list(c) for c in values.get("combinations", [])],
            [int(c) for c in values.get("combination_counts", [])],
        )


def cap_controls(
    obs: pd.DataFrame,
    perturbation_key: str,
    control_label: str,
    max_fraction: float,
    seed: int,
    context_key: str | None = None,
) -> np.ndarray:
    """Row indices of the cells to train on, with control cells at most ``max_fraction`` of them.

    The paper caps controls at 10% so that they do not dominate the perturbation signal. Kept
    controls are spread over contexts in proportion to each context's controls (at least one
    each), so every context keeps a reference for guidance. ``max_fraction >= 1`` keeps all cells.
    """
    if not 0 < max_fraction <= 1:
        raise ValueError(f"the control fraction must lie in (0, 1], got {max_fraction}")
    is_control = (obs[perturbation_key].astype(str) == control_label).to_numpy()
    n_control, n_other = int(is_control.sum()), int((~is_control).sum())
    budget = n_control if max_fraction >= 1 else int(max_fraction / (1 - max_fraction) * n_other)
    if budget >= n_control:
        return np.arange(len(obs))
    rng = np.random.default_rng([seed, 0xC7A1])
    controls = np.flatnonzero(is_control)
    groups = (
        obs[context_key].astype(str).to_numpy()[controls]
        if context_key
        else np.zeros(len(controls), dtype=int)
    )
    kept = []
    for group in np.unique(groups):
        members = controls[groups == group]
        share = max(1, int(round(budget * len(members) / n_control)))
        kept.append(rng.choice(members, size=min(share, len(members)), replace=False))
    return np.sort(np.concatenate([np.flatnonzero(~is_control), *kept]))
