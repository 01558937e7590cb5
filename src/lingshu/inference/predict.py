"""Perturbation prediction without ground truth: cells for (context, perturbation) requests.

Each request is sampled under the source (context) and perturbation tokens with classifier-free
guidance against the control label of the same context, in few steps (paper: 3), and for genetic
perturbations with the biological prior: genes the target strongly down-regulates in *other*
training contexts, plus the target itself (unless another context shows it raised: activation),
are pre-filled with a count of 1 and never re-masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from lingshu.data.conditions import ConditionMap, UnseenLabelError
from lingshu.data.prior import BiologicalPrior
from lingshu.data.tokenizer import encode_counts
from lingshu.inference.generate import DRAWN_SLOTS, draw_slots, encode_rows, provenance, sample_counts
from lingshu.model.transformer import MaskPredictor
from lingshu.training.checkpoint import Checkpoint, load_checkpoint

# Paper defaults: w = 2 for genetic, 3 for cytokine perturbations.
DEFAULT_GUIDANCE = {"genetic": 2.0, "cytokine": 3.0}
PRIOR_COUNT = 1


@dataclass(frozen=True)
class Request:
    """One (context, perturbation) pair to predict ``n_cells`` cells for."""

    context: str | None
    perturbation: str
    n_cells: int


def read_requests(table: str | Path, default_n_cells: int) -> list[Request]:
    """Requests from a CSV/TSV with columns ``context`` (optional), ``perturbation``, ``n_cells``
    (optional, else ``default_n_cells``)."""
    path = Path(table)
    frame = pd.read_csv(path, sep="\t" if path.suffix in {".tsv", ".tab"} else ",", dtype=str)
    if "perturbation" not in frame.columns:
        raise ValueError(f"{path} needs a 'perturbation' column (and optionally context, n_cells)")
    if frame.empty:
        raise ValueError(f"{path} lists no requests")
    requests = []
    for row in frame.itertuples(index=False):
        values = row._asdict()
        n_cells = values.get("n_cells")
        context = values.get("context")
        requests.append(
            Request(
                None if pd.isna(context) else str(context),
                str(values["perturbation"]),
                default_n_cells if n_cells is None or pd.isna(n_cells) else int(n_cells),
            )
        )
    return requests


# What a perturbation gene the model has no token for becomes (``predict(unseen=...)``): refused,
# or one of the ways to predict it anyway.
UNSEEN_FALLBACKS = ("control", "average")
UNSEEN_CHOICES = ("error", *UNSEEN_FALLBACKS)


def _labels(condition_map: ConditionMap, request: Request, unseen: str) -> list[str]:
    """One label per slot for a request, with clear errors for what the model cannot take.

    Unless ``unseen`` is "error", the genes of the perturbation that have no token are dropped
    from it (all of them: the control label), so that only the priors carry their knowledge.
    """
    perturbation = condition_map.slot("perturbation")
    if perturbation is None:
        raise ValueError(
            "this checkpoint was trained without a perturbation condition; use `lingshu generate`"
        )
    label = request.perturbation
    if unseen != "error":
        known = [part for part in perturbation.parts(label) if part in perturbation.labels]
        label = perturbation.separator.join(known) if known else perturbation.control_label
    requested = {"perturbation": label}
    if condition_map.slot("source") is not None:
        if request.context is None:
            raise ValueError(
                f"give a context (--context); known: {', '.join(condition_map.slot('source').labels)}"
            )
        requested["source"] = request.context
    elif request.context is not None:
        raise ValueError("this checkpoint has no context condition; drop --context")
    try:
        labels = condition_map.resolve(requested, optional=DRAWN_SLOTS)
        _given_tokens(condition_map, labels)  # unknown names fail here, before anything is generated
    except UnseenLabelError as error:
        raise UnseenLabelError(
            f"{error}. To predict it anyway: --unseen average (the context's average perturbation "
            "shift plus the prior injection) or --unseen control (the injection alone)"
        ) from None
    return labels


def _given_tokens(condition_map: ConditionMap, labels: list[str | None]) -> tuple[int, ...]:
    """The condition tokens of a row's given slots (the drawn ones, such as the depth bin, left
    out): a request counts as seen in training when a training combination has the same."""
    given = [slot.name not in DRAWN_SLOTS for slot in condition_map.slots]
    filled = [lab if lab is not None else s.labels[0] for lab, s in zip(labels, condition_map.slots)]
    keep = np.repeat(given, condition_map.widths)
    return tuple(np.asarray(condition_map.encode_labels(filled))[keep].tolist())


def predict(
    checkpoint: str | Path | Checkpoint,
    requests: list[Request],
    n_steps: int = 3,
    guidance: float | None = None,
    use_prior: bool | None = None,
    seed: int = 0,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
    progress: bool = True,
    unseen: str = "error",
    network: bool = True,
) -> ad.AnnData:
    """Predict cells for every request; returns one AnnData of integer counts.

    ``guidance`` and ``use_prior`` default to the paper's choices for the model's perturbation
    kind (genetic: w = 2 with the prior; cytokine: w = 3 without). ``obs`` holds the context and
    perturbation of each cell; ``uns['lingshu']['requests']`` records, per request, the prior
    genes pre-filled and whether the pair was seen in training. A perturbation gene the model
    has no token for is an error (``unseen="error"``); with "control" it is left out of the
    condition (the control label if nothing is left) and enters only through the prior
    injection; with "average" each such gene also adds the shift prior's average perturbation
    of the context (:meth:`~lingshu.model.transformer.MaskPredictor.average_tilt`: what every
    perturbation of the context shares, the perturbation-mean answer), recorded per request as
    ``unseen_genes``. ``network=False`` samples the checkpoint's priors alone (its network
    switched off; guidance then has nothing to amplify): the "priors alone" row of every report.
    """
    if unseen not in UNSEEN_CHOICES:
        raise ValueError(f"unseen must be one of {', '.join(UNSEEN_CHOICES)}, got {unseen!r}")
    if not requests:
        raise ValueError("no prediction requests")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    for request in requests:
        if request.n_cells < 1:
            raise ValueError(f"n_cells must be >= 1, got {request.n_cells} for {request}")
    source = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(Path(checkpoint))
    condition_map = ConditionMap.from_dict(source.conditions)
    all_labels = [
        _labels(condition_map, request, unseen) for request in requests
    ]  # validate every request first
    slot = condition_map.slot("perturbation")
    guidance = DEFAULT_GUIDANCE[slot.kind or "genetic"] if guidance is None else guidance
    use_prior = (slot.kind or "genetic") == "genetic" if use_prior is None else use_prior
    if unseen == "average" and not source.model_config.has_perturbation_prior:
        raise ValueError(
            "unseen='average' needs a model with the perturbation shift prior; this one was "
            "trained without it (use unseen='control')"
        )
    model = source.build_model(use_ema=use_ema).to(device)
    gene_index = {gene: i for i, gene in enumerate(source.vocabulary.genes)}
    prior = BiologicalPrior.from_dict(source.prior)
    prior_token = int(encode_counts(np.array([PRIOR_COUNT]))[0])
    seen = {_given_tokens(condition_map, c) for c in condition_map.combinations}
    matrices, frames, records = [], [], {}
    for number, (request, labels) in enumerate(zip(requests, all_labels)):
        conditioned_on = labels[condition_map.slots.index(slot)]
        cell_seed = int(np.random.SeedSequence([seed, number]).generate_state(1)[0])
        # Each cell's drawn slots (its depth bin); the condition tokens come from ``cell_labels``.
        cell_labels = draw_slots(
            condition_map, labels, request.n_cells, np.random.default_rng([cell_seed, 0xDE])
        )
        # obs shows what was asked for.
        frame = cell_labels.assign(**{slot.key: request.perturbation})
        frame.index = [f"predicted_{number}_{i}" for i in range(request.n_cells)]
        prefill, chosen = None, []
        if use_prior and request.perturbation != slot.control_label:
            chosen = [
                g
                for g in prior.genes_for(slot.parts(request.perturbation), request.context)
                if g in gene_index
            ]
            prefill = torch.full((request.n_cells, len(gene_index)), -1, dtype=torch.long)
            prefill[:, [gene_index[g] for g in chosen]] = prior_token
        conditions = encode_rows(condition_map, cell_labels)
        unseen_genes = [p for p in slot.parts(request.perturbation) if p not in slot.parts(conditioned_on)]
        extra_tilt = None
        if unseen == "average" and unseen_genes:
            extra_tilt = _average_shift(model, conditions, slot.labels.index(slot.control_label))
            extra_tilt = None if extra_tilt is None else len(unseen_genes) * extra_tilt
        matrices.append(
            sample_counts(
                model,
                request.n_cells,
                n_steps,
                cell_seed,
                batch_size,
                device,
                progress,
                conditions,
                encode_rows(condition_map, cell_labels, as_control=True),
                guidance,
                prefill,
                desc=f"predicting {request.perturbation}"
                + (f" in {request.context}" if request.context else ""),
                extra_tilt=extra_tilt,
                network=network,
            )
        )
        frames.append(frame)
        # A dict of dicts with arrays (not a list of dicts) so that .h5ad files can store it.
        records[str(number)] = {
            "context": request.context or "",
            "perturbation": request.perturbation,
            "n_cells": request.n_cells,
            "seen_in_training": slot.parts(conditioned_on) == slot.parts(request.perturbation)
            and _given_tokens(condition_map, labels) in seen,
            "conditioned_on": conditioned_on,
            "prior_genes": np.array(chosen, dtype=object),
            "unseen_genes": np.array(unseen_genes, dtype=object),
            "average_shift": extra_tilt is not None,
        }
    var = pd.DataFrame(index=pd.Index(source.vocabulary.genes))
    adata = ad.concat([ad.AnnData(X=m, obs=f, var=var) for m, f in zip(matrices, frames)], merge="same")
    adata.uns["lingshu"] = provenance(
        checkpoint,
        source,
        n_steps=n_steps,
        seed=seed,
        batch_size=batch_size,
        weights="ema" if use_ema else "raw",
        guidance=guidance,
        prior=use_prior,
        network="on" if network else "off (priors alone)",
        requests=records,
    )
    return adata


def _average_shift(model: MaskPredictor, conditions: torch.Tensor, control_row: int) -> torch.Tensor | None:
    """The average perturbation's tilt for each cell of one request (n_cells, G), all in the
    same context, or None where no perturbation has a tilt there."""
    average = model.average_tilt(int(model.tilt_context(conditions[:1])[0]), control_row)
    return None if average is None else average.expand(len(conditions), -1)
