"""Masked discrete diffusion: the training loss and the iterative unmasking sampler (§6, §7).

Loss (per cell b with L_b observed genes, mask level t_b ~ U(t_min, 1)):
    loss_b = (1 / (t_b * L_b)) * sum_{masked observed genes i} -log p(x0_i | x_t, c)
and the batch loss is the mean over cells. Dividing by L_b (not by the number of masked genes)
follows LLaDA and makes the expectation over t equal to the mean per-gene cross-entropy, in nats,
so it is comparable across datasets with different numbers of measured genes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lingshu.data.tokenizer import MASK_TOKEN
from lingshu.model.transformer import MaskPredictor


@dataclass
class LossOutput:
    loss: torch.Tensor
    n_masked: int
    mean_t: float


def sample_mask_levels(batch_size: int, t_min: float, generator: torch.Generator, device) -> torch.Tensor:
    """Stratified (low-discrepancy) draws of t in [t_min, 1]: lower variance than i.i.d. U(0,1)."""
    offset = torch.rand(1, generator=generator).item()
    u = (offset + torch.arange(batch_size, dtype=torch.float32) / batch_size) % 1.0
    u = u[torch.randperm(batch_size, generator=generator)]
    return (t_min + (1 - t_min) * u).to(device)


def masked_diffusion_loss(
    model: MaskPredictor,
    tokens: torch.Tensor,
    observed: torch.Tensor,
    generator: torch.Generator,
    conditions: torch.Tensor | None = None,
    t_min: float = 1e-3,
    t: torch.Tensor | None = None,
    draws: torch.Tensor | None = None,
    scored_genes: int = 0,
) -> LossOutput:
    """The 1/t-weighted masked cross-entropy; only masked *observed* genes carry a target.

    ``observed`` is (G,) or (B, G) boolean. Unobserved genes are fed as [MASK] and never scored.
    ``t`` (B,) and ``draws`` (B, G) uniform numbers may be given to fix the masks (else drawn).
    ``scored_genes`` > 0 scores about that many of each cell's masked genes (an unbiased
    estimate of the same loss, see :func:`masked_loss_and_mask`); 0 scores every one.
    """
    b, g = tokens.shape
    if t is None:
        t = sample_mask_levels(b, t_min, generator, tokens.device)
    if draws is None:
        draws = torch.rand(b, g, generator=generator).to(tokens.device)
    loss, masked = masked_loss_and_mask(model, tokens, observed, conditions, t, draws, scored_genes)
    return LossOutput(loss=loss, n_masked=int(masked.sum()), mean_t=float(t.mean()))


def masked_loss_and_mask(
    model: MaskPredictor,
    tokens: torch.Tensor,
    observed: torch.Tensor,
    conditions: torch.Tensor | None,
    t: torch.Tensor,
    draws: torch.Tensor,
    scored_genes: int = 0,
    masked_mean: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of :func:`masked_diffusion_loss` for fixed masks, and the (B, G) mask itself.

    With ``scored_genes`` > 0, a masked gene is scored when its draw is below t * r with
    r = min(1, scored_genes / (t * L)): given that it is masked (draw < t) that happens with
    probability exactly r, so weighting scored genes by 1 / r keeps the loss unbiased while the
    output head runs on about ``scored_genes`` positions per cell instead of t * L.
    ``masked_mean`` divides each cell's sum by its scored (masked) count instead of t * L * r.
    """
    b, g = tokens.shape
    observed = observed.expand(b, g) if observed.dim() == 1 else observed
    masked = (draws < t[:, None]) & observed
    inputs = torch.where(masked | ~observed, torch.full_like(tokens, MASK_TOKEN), tokens)
    hidden = model.encode(inputs, conditions)
    n_observed = observed.sum(1).clamp_min(1)
    context, tilt = model.context_index(conditions), model.tilt(conditions)
    depth = model.depth_index(conditions)
    # The tilted head over the token (and context) tables has a cheap exact NLL: score pairs,
    # not (B, G, 281). With tilts it needs each position's 281 logits, but only the masked
    # positions': the head reads no other gene's logits (the categorical head's matmuls do).
    pairwise = model.tilted and tilt is None and depth is None
    if scored_genes > 0 or model.tilted:
        rate = (scored_genes / (t * n_observed)).clamp(max=1.0) if scored_genes > 0 else torch.ones_like(t)
        cells, genes = ((draws < (t * rate)[:, None]) & observed).nonzero(as_tuple=True)
        if pairwise:
            nll = model.tilted_nll(hidden, cells, genes, tokens[cells, genes], context).float()
        else:
            logits = model.logits_at(hidden, cells, genes, context, tilt, depth).float()
            nll = F.cross_entropy(logits, tokens[cells, genes], reduction="none")
        scored = torch.bincount(cells, minlength=b).clamp_min(1)
        weights = 1.0 / (scored if masked_mean else rate * t * n_observed)
        return (nll * weights[cells]).sum() / b, masked
    # Score in the model's permuted gene order: no un-permutation of the (B, G, 281) logits.
    permutation = model.permutation
    logits = model.permuted_logits(hidden, context, tilt, depth).float()
    nll = F.cross_entropy(logits.reshape(b * g, -1), tokens[:, permutation].reshape(-1), reduction="none")
    scale = masked.sum(1).clamp_min(1) if masked_mean else t * n_observed
    weights = masked[:, permutation] / scale[:, None]
    return (nll.view(b, g) * weights).sum() / b, masked


def cosine_reveal_counts(n_positions: int, n_steps: int) -> list[int]:
    """How many masked positions to reveal at each of ``n_steps`` steps (sums to n_positions).

    After step n the masked fraction is cos(pi/2 * n / N) (MaskGIT's cosine schedule), so early
    steps reveal few tokens and later steps many.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    remaining = [round(n_positions * math.cos(math.pi / 2 * n / n_steps)) for n in range(n_steps + 1)]
    remaining[-1] = 0
    return [remaining[n] - remaining[n + 1] for n in range(n_steps)]


def guided_logits(conditional: torch.Tensor, control: torch.Tensor | None, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: l(c_ctrl) + (w + 1) * (l(c) - l(c_ctrl)); w = 0 returns l(c)."""
    if guidance == 0 or control is None:
        return conditional
    return control + (guidance + 1.0) * (conditional - control)


def _reveal_step_of_each_position(
    free: torch.Tensor, n_steps: int, generator: torch.Generator
) -> torch.Tensor:
    """For each cell, assign every free position the step that reveals it (-1 for fixed ones).

    Positions are taken in a uniformly random order; step n reveals the next
    ``cosine_reveal_counts(n_free, N)[n]`` of them, which is the same as choosing that many masked
    positions uniformly at random at each step.
    """
    b, g = free.shape
    scores = torch.rand(b, g, generator=generator).to(free.device)
    scores = torch.where(free, scores, torch.full_like(scores, 2.0))  # fixed positions sort last
    rank = torch.argsort(torch.argsort(scores, dim=1), dim=1)
    step_of = torch.full((b, g), -1, dtype=torch.long, device=free.device)
    for n_free in free.sum(1).unique().tolist():
        cells = free.sum(1) == n_free
        bounds = torch.tensor(
            [0, *torch.tensor(cosine_reveal_counts(n_free, n_steps)).cumsum(0).tolist()],
            device=free.device,
        )
        steps = torch.bucketize(rank[cells], bounds[1:], right=True)
        step_of[cells] = torch.where(free[cells], steps, torch.full_like(steps, -1))
    return step_of


def sample_categorical(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One exact draw per row from softmax(logits) by inverting the CDF with a single uniform.

    Cheaper than Gumbel-max (one random number per row instead of one per class) and
    reproducible under ``generator``.
    """
    cdf = torch.softmax(logits.float(), dim=-1).cumsum_(-1)
    u = torch.rand(logits.shape[0], 1, generator=generator).to(logits.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=logits.shape[-1] - 1)


def _draw_from_states(
    model: MaskPredictor,
    tokens: torch.Tensor,
    states: torch.Tensor,
    fraction: float,
    generator: torch.Generator,
    context: torch.Tensor | None,
    tilt: torch.Tensor | None,
    depth: torch.Tensor | None,
) -> None:
    """Fill a random ``fraction`` of each cell's masked positions in place, drawn from the
    read-out of the given cell states (n_cells, D) instead of a state inferred from the cell."""
    if not model.cell_mlp:
        raise ValueError("first_states needs the cell_mlp encoder (one state per cell)")
    if states.shape != (tokens.shape[0], model.config.d_model):
        raise ValueError(
            f"first_states must be ({tokens.shape[0]}, {model.config.d_model}), got {tuple(states.shape)}"
        )
    if not 0 < fraction <= 1:
        raise ValueError(f"first_fraction must be in (0, 1], got {fraction}")
    chosen = (torch.rand(tokens.shape, generator=generator).to(tokens.device) < fraction) & (
        tokens == MASK_TOKEN
    )
    cells, genes = chosen.nonzero(as_tuple=True)
    hidden = states.to(tokens.device, torch.float32)[:, None, :]
    logits = model.logits_at(hidden, cells, genes, context, tilt, depth).float()
    tokens[cells, genes] = sample_categorical(logits, generator)


@torch.no_grad()
def sample_tokens(
    model: MaskPredictor,
    n_cells: int,
    n_steps: int,
    generator: torch.Generator,
    conditions: torch.Tensor | None = None,
    control_conditions: torch.Tensor | None = None,
    guidance: float = 0.0,
    prefill: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    extra_tilt: torch.Tensor | None = None,
    network: bool = True,
    first_states: torch.Tensor | None = None,
    first_fraction: float = 0.0,
) -> torch.Tensor:
    """Generate (n_cells, G) expression tokens by iterative unmasking.

    ``network=False`` samples from the priors alone (the network's contribution removed): the
    "priors alone (network off)" row every report shows beside the model.

    Start fully masked (except ``prefill`` positions holding a token id >= 0, which are fixed and
    never re-masked); at each step reveal the scheduled number of random masked positions by
    sampling from the predicted categorical (no temperature, no top-k). With ``guidance > 0`` the
    model is run under ``conditions`` and ``control_conditions`` in one doubled batch.
    ``extra_tilt`` (n_cells, G) is added to the shift prior's tilt of ``conditions`` (a model
    with tilts only): what a perturbation the condition tokens cannot name contributes.
    ``first_states`` (n_cells, D), cell states of a ``cell_mlp`` model (e.g. drawn from its
    :class:`~lingshu.model.state_prior.StatePrior`), commit each cell's state before unmasking:
    a random ``first_fraction`` of its masked genes is drawn from that state's read-out, then
    the network unmasks the rest in ``n_steps`` steps.
    """
    g = model.config.n_genes
    tokens = torch.full((n_cells, g), MASK_TOKEN, dtype=torch.long, device=device)
    if prefill is not None:
        tokens = torch.where(prefill >= 0, prefill.to(device), tokens)
    use_guidance = guidance != 0 and control_conditions is not None
    # Conditions, context rows and tilts are the same at every step: computed once.
    tilt, depth = model.tilt(conditions), model.depth_index(conditions)
    if extra_tilt is not None:
        if not model.config.has_tilts:
            raise ValueError("extra_tilt needs a model with a shift or depth prior (tilts)")
        extra_tilt = extra_tilt.to(device)
        tilt = extra_tilt if tilt is None else tilt + extra_tilt
    run_under = torch.cat([conditions, control_conditions]) if use_guidance else conditions
    context = model.context_index(run_under)
    if first_states is not None and network:
        _draw_from_states(
            model,
            tokens,
            first_states,
            first_fraction,
            generator,
            model.context_index(conditions),
            tilt,
            depth,
        )
    step_of = _reveal_step_of_each_position(tokens == MASK_TOKEN, n_steps, generator)
    for step in range(n_steps):
        reveal = step_of == step
        if not reveal.any():
            continue
        cells, genes = reveal.nonzero(as_tuple=True)
        if not network:  # the priors do not read the cell: no forward pass
            hidden = torch.zeros(n_cells, 1, 1, device=tokens.device)
            logits = model.logits_at(hidden, cells, genes, context, tilt, depth, network=False).float()
        elif use_guidance:
            hidden = model.encode(torch.cat([tokens, tokens]), run_under)
            # Guidance amplifies what the network adds for the condition; the fixed shift prior
            # enters once, after it, instead of (w + 1) times.
            logits = guided_logits(
                model.logits_at(hidden, cells, genes, context).float(),
                model.logits_at(hidden, cells + n_cells, genes, context).float(),
                guidance,
            )
            if tilt is not None:
                logits = logits + model.tilt_offsets(tilt[cells, genes], genes)
            if depth is not None:
                logits = model.add_depth_residual(logits, depth[cells], genes)
        else:
            hidden = model.encode(tokens, run_under)
            logits = model.logits_at(hidden, cells, genes, context, tilt, depth).float()
        tokens[cells, genes] = sample_categorical(logits, generator)
    return tokens
