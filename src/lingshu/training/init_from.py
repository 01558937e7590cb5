"""Start a model from a pretrained checkpoint on a new dataset (``lingshu train --init-from``).

The new model's vocabulary is the pretrained one's plus the genes the new file adds: a
pretrained gene the new file does not measure stays in the model as *unobserved* (never scored,
never read as zero), which keeps the cell encoder's read-in on the genes it learned from (on
Kang's controls, a pbmc3k model moved onto Kang's 6,257 genes alone starts above a fresh model,
0.222 against 0.206 nats per gene, as 62% of a PBMC's counts sit in genes Kang's file lacks). Its
condition labels are the new file's, and its data-derived tables (token, context and shift
priors: every buffer and the token prior) are measured on the new file as for a fresh model.
Every learned weight is then taken from the pretrained model where it means the same thing:

- per-gene rows (a gene's embedding, read-in, read-out and exponents) by gene symbol; genes the
  pretrained model never saw keep their fresh initialisation;
- condition-token rows by slot role and label; labels the pretrained model never had get fresh
  tokens;
- every other weight (the shared network) as it is, which needs the same architecture: the
  new model takes the pretrained one's (its preset only sets the training schedule).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import torch

from lingshu.data.conditions import ConditionMap
from lingshu.data.tokenizer import FIRST_CONDITION_TOKEN
from lingshu.data.vocabulary import GeneVocabulary
from lingshu.model.transformer import MaskPredictor
from lingshu.training.checkpoint import Checkpoint

# Learned weights with one row per vocabulary gene.
GENE_ROWS = ("gene_embedding", "gene_read_in", "gene_readout", "gene_exponents")
# Learned weights with one row per condition token, and the row of condition token 0.
CONDITION_ROWS = {"token_embedding.weight": FIRST_CONDITION_TOKEN, "condition_read_in.weight": 0}
# Learned but measured on the data a model trains on: the new file's, not the pretrained one's.
DATA_TABLES = ("token_prior",)
# Model settings that describe the data, not the architecture: the new file sets them.
DATA_FIELDS = (
    "n_genes",
    "n_condition_tokens",
    "n_condition_slots",
    "condition_widths",
    "context_column",
    "context_offset",
    "n_contexts",
    "perturbation_column",
    "perturbation_width",
    "perturbation_offset",
    "n_perturbation_labels",
    "tilt_contexts",
    "depth_bins",
    "depth_column",
    "depth_offset",
    "depth_contexts",
    "poisson_tail",
    "combine_folds",
    "combine_log_means",
)


def fine_tuning_vocabulary(pretrained: Checkpoint, adata: ad.AnnData, min_cells: int = 1) -> GeneVocabulary:
    """The pretrained vocabulary, then the genes of ``adata`` (detected in ``min_cells`` cells)
    it lacks, matched by symbol (then Ensembl id where both have one)."""
    known = pretrained.vocabulary
    here = GeneVocabulary.from_adata(adata, min_cells=min_cells)
    # The file's genes the vocabulary lacks, matched as training matches them (symbol, then id).
    unmatched = set(known.align(adata).extra_genes)
    extra = [i for i, gene in enumerate(here.genes) if gene in unmatched]
    ids = None
    if known.ensembl_ids is not None and here.ensembl_ids is not None:
        ids = list(known.ensembl_ids) + [here.ensembl_ids[i] for i in extra]
    return GeneVocabulary(list(known.genes) + [here.genes[i] for i in extra], ids)


@dataclass
class Transfer:
    """What :func:`transfer_weights` moved across, for the coverage report."""

    n_genes: int
    n_genes_matched: int
    matched_labels: dict[str, list[str]] = field(default_factory=dict)
    new_labels: dict[str, list[str]] = field(default_factory=dict)
    copied: list[str] = field(default_factory=list)
    kept_fresh: list[str] = field(default_factory=list)

    def report(self) -> str:
        """A short paragraph: genes and labels matched, new ones, weights moved across."""
        lines = [
            f"init-from: {self.n_genes_matched:,} of this model's {self.n_genes:,} genes carry the "
            f"pretrained model's weights ({self.n_genes - self.n_genes_matched:,} genes this file adds "
            "start fresh)"
        ]
        for slot in sorted(set(self.matched_labels) | set(self.new_labels)):
            matched, new = self.matched_labels.get(slot, []), self.new_labels.get(slot, [])
            lines.append(
                f"init-from: condition '{slot}': {len(matched)} labels matched, {len(new)} new tokens"
                + (f" ({', '.join(new[:8])}{', ...' if len(new) > 8 else ''})" if new else "")
            )
        lines.append(
            f"init-from: {len(self.copied)} weight tensors taken from the pretrained model"
            + (f"; fresh: {', '.join(self.kept_fresh)}" if self.kept_fresh else "")
        )
        return "\n".join(lines)


def _label_rows(
    conditions: ConditionMap, by_role: dict[str, dict[str, int]]
) -> tuple[np.ndarray, dict, dict]:
    """For each condition token of ``conditions``: the pretrained token of the same role and
    label, or -1; plus the matched and new labels per role."""
    rows = np.full(conditions.n_tokens, -1, dtype=np.int64)
    matched, new = {}, {}
    for slot, offset in zip(conditions.slots, conditions.offsets):
        known = by_role.get(slot.name, {})
        for i, label in enumerate(slot.labels):
            rows[offset + i] = known.get(label, -1)
        matched[slot.name] = [lab for lab in slot.labels if lab in known]
        new[slot.name] = [lab for lab in slot.labels if lab not in known]
    return rows, matched, new


def _tokens_by_role(conditions: ConditionMap) -> dict[str, dict[str, int]]:
    return {
        slot.name: {label: offset + i for i, label in enumerate(slot.labels)}
        for slot, offset in zip(conditions.slots, conditions.offsets)
    }


def _copy_rows(target: torch.Tensor, source: torch.Tensor, rows: np.ndarray, start: int = 0) -> None:
    """``target[start + i] = source[start + rows[i]]`` wherever ``rows[i] >= 0``."""
    have = np.flatnonzero(rows >= 0)
    if len(have):
        target[start + torch.from_numpy(have)] = source[start + torch.from_numpy(rows[have])]


def architecture_of(pretrained: Checkpoint) -> dict:
    """The pretrained model's settings that are not the data's: what a fine-tuned model keeps."""
    config = pretrained.model_config
    return {name: getattr(config, name) for name in config.__dataclass_fields__ if name not in DATA_FIELDS}


@torch.no_grad()
def transfer_weights(
    model: MaskPredictor,
    vocabulary: GeneVocabulary,
    conditions: ConditionMap,
    pretrained: Checkpoint,
) -> Transfer:
    """Copy ``pretrained``'s learned weights (those it samples with) into ``model`` (whose
    data-derived tables are already filled) where they mean the same; see the module docstring.
    Raises ``ValueError`` where the architectures differ."""
    source = pretrained.build_model(use_ema=True).state_dict()
    target = model.state_dict()
    learned = dict(model.named_parameters())
    gene_rows = pd.Index(pretrained.vocabulary.genes).get_indexer(pd.Index(vocabulary.genes))
    old_conditions = ConditionMap.from_dict(pretrained.conditions)
    token_rows, matched, new = _label_rows(conditions, _tokens_by_role(old_conditions))
    transfer = Transfer(
        n_genes=len(vocabulary),
        n_genes_matched=int((gene_rows >= 0).sum()),
        matched_labels=matched,
        new_labels=new,
    )
    for name, weights in target.items():
        if name not in learned or name in DATA_TABLES:
            continue  # buffers and the token prior are measured on the new file
        if name not in source:
            transfer.kept_fresh.append(name)
            continue
        old = source[name]
        if name in GENE_ROWS:
            if old.shape[1:] != weights.shape[1:]:
                raise ValueError(
                    f"--init-from: {name} is {tuple(old.shape)} there, {tuple(weights.shape)} here"
                )
            _copy_rows(weights, old, gene_rows)
        elif name in CONDITION_ROWS:
            start = CONDITION_ROWS[name]
            if old.shape[1:] != weights.shape[1:]:
                raise ValueError(
                    f"--init-from: {name} is {tuple(old.shape)} there, {tuple(weights.shape)} here"
                )
            weights[:start] = old[:start]  # the expression and mask tokens
            _copy_rows(weights, old, token_rows, start)
        elif old.shape == weights.shape:
            weights.copy_(old)
        else:
            raise ValueError(
                f"--init-from: the pretrained model's {name} is {tuple(old.shape)}, this model's "
                f"{tuple(weights.shape)}: the architectures differ"
            )
        transfer.copied.append(name)
    model.load_state_dict(target)
    return transfer
