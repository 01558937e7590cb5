"""Bidirectional LLaMA-style mask predictor with sequence compression (Lingshu-Cell §1, §3).

Gene tokens -> shared token embedding (+ gene identity) -> fixed random permutation -> groups of S
genes flattened and projected S*D -> D -> [condition tokens ; compressed genes] -> pre-norm blocks
(RMSNorm, RoPE multi-head attention via SDPA, SwiGLU; no biases, no causal mask) -> final RMSNorm
-> D -> S*D up-projection -> inverse permutation -> per-gene head over the 281 expression tokens.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lingshu.config import ModelConfig
from lingshu.data.tokenizer import FIRST_CONDITION_TOKEN, MASK_TOKEN, N_EXPRESSION_TOKENS
from lingshu.model.tilt import (
    PSEUDO_COUNT,
    TOKEN_FLOOR,
    calibrate_tilts,
    log_expression,
    match_tilts,
    tilt_offsets,
    token_values,
)

# The tilted head's exponents per gene: slope and curvature on log(1 + count), offset on count 0.
N_EXPONENTS = 3
# Token widths the tilted head's training NLL is computed over, by each gene's highest count.
SUPPORT_BUCKETS = (4, 16, 64, N_EXPRESSION_TOKENS)
# The cell_mlp encoder scales visible counts by 1 / (visible fraction) up to this fraction only:
# scaled by 1,000 when a sampler has revealed 10 genes, one count would read as a deep cell.
MIN_VISIBLE_FRACTION = 0.1


def centre_statistic(statistic: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """Each gene's statistic (G, 281) minus its mean over the gene's nonzero tokens under
    ``probabilities`` (G, 281). A shift per gene, so the tilts span the same family, but a peak
    at a high count then needs a curvature centred near 0 and a small slope (about 2 c times
    the distance from the mean) instead of a slope of hundreds that cancels a large c m term."""
    nonzero = probabilities[:, 1:] / probabilities[:, 1:].sum(-1, keepdim=True).clamp_min(1e-12)
    return statistic - (nonzero * statistic[:, 1:]).sum(-1, keepdim=True)


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned gain (computed in float32 for stability)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight).type_as(x)


def rotary_tables(length: int, head_dim: int, base: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (length, head_dim/2) for rotary position embeddings."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (even, odd) of the last dimension of x (B, H, T, hd)."""
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return rotated.type_as(x)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # SDPA picks the flash / memory-efficient kernel when the device supports it.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.up = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class MaskPredictor(nn.Module):
    """Predicts a categorical over expression tokens for every gene of a partly masked cell."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.n_genes < 1:
            raise ValueError("ModelConfig.n_genes must be set from the gene vocabulary")
        self.config = config
        d, s, g = config.d_model, config.patch_size, config.n_genes
        self.n_groups = math.ceil(g / s)
        self.token_embedding = nn.Embedding(FIRST_CONDITION_TOKEN + config.n_condition_tokens, d)
        self.gene_embedding = nn.Parameter(torch.zeros(g, d)) if config.gene_embedding else None
        # The permutation is drawn once from its own seed and saved with the weights (a buffer).
        generator = torch.Generator().manual_seed(config.permutation_seed)
        permutation = torch.randperm(g, generator=generator)
        self.register_buffer("permutation", permutation, persistent=True)
        self.register_buffer("inverse_permutation", torch.argsort(permutation), persistent=True)
        self.cell_mlp = config.encoder == "cell_mlp"
        self.compress = nn.Linear(s * d, d, bias=False) if s > 1 and not self.cell_mlp else nn.Identity()
        # Per gene, read-in vectors of its log(1 + count) and of its being visible: a count means
        # something different for every gene, which a token embedding shared by all genes and
        # summed over a group cannot say (the first layer of an MLP on counts, per group, or
        # over the whole cell for the cell_mlp encoder).
        read_in_width = config.encoder_width if self.cell_mlp else d
        reads_in = config.value_embedding or self.cell_mlp
        self.gene_read_in = nn.Parameter(torch.zeros(g, 2, read_in_width)) if reads_in else None
        if self.cell_mlp:
            self.read_in_bias = nn.Parameter(torch.zeros(read_in_width))
            self.cell_encoder = nn.Sequential(nn.GELU(), nn.Linear(read_in_width, d), nn.GELU())
            self.condition_read_in = (
                nn.Embedding(config.n_condition_tokens, read_in_width) if config.n_condition_tokens else None
            )
        self.blocks = nn.ModuleList(Block(config) for _ in range(0 if self.cell_mlp else config.n_layers))
        self.final_norm = RMSNorm(d, config.norm_eps)
        self.tilted = config.head == "tilted"
        if self.tilted:
            # Three exponents per gene (slope and curvature on log(1 + count), offset on count 0)
            # read from its group's state and the cell's mean state by the gene's own read-out
            # vectors, plus constants: the groups can carry a shared cell state and each gene
            # reads what moves it. The curvature lets a tilt peak at a count, not only lean.
            if not config.token_prior:
                raise ValueError("the tilted head tilts the token prior: token_prior must be on")
            state_width = d if self.cell_mlp else 2 * d
            self.gene_readout = nn.Parameter(torch.zeros(g, N_EXPONENTS, state_width))
            # What every gene reads alike (depth moves them all): learned from every gene at
            # once, so it is low-noise, where a gene's own read-out learns from that gene only.
            self.shared_readout = nn.Parameter(torch.zeros(N_EXPONENTS, state_width))
            self.gene_exponents = nn.Parameter(torch.zeros(g, N_EXPONENTS))
        else:
            self.decompress = nn.Linear(d, s * d, bias=False) if s > 1 else nn.Identity()
            self.head = nn.Linear(d, N_EXPRESSION_TOKENS, bias=False)
        self.token_prior = nn.Parameter(torch.zeros(g, N_EXPRESSION_TOKENS)) if config.token_prior else None
        # The tilted head's per-gene statistic: log(1 + count), capped at the gene's highest
        # training count so that a raising slope cannot lift the floored tokens past it (minus
        # its mean over the gene's nonzero counts with centred_statistic; see centre_statistic).
        self.register_buffer("log_count_capped", torch.zeros(g, N_EXPRESSION_TOKENS) if self.tilted else None)
        if self.token_prior is not None and (config.has_perturbation_prior or self.tilted):
            # The tilted head's table is a fixed base that the network tilts (low-variance).
            # With a shift prior, it is the control baseline the tilts are calibrated against;
            # trained, it would drift towards the (mostly perturbed) training cells' average and
            # count that average shift twice for every perturbation.
            self.token_prior.requires_grad_(False)
        # Fixed per-context log-frequency offsets (a buffer: no gradient, no optimizer state);
        # half precision halves the checkpoint, and offsets are small numbers.
        self.register_buffer(
            "context_prior",
            torch.zeros(config.n_contexts, g, N_EXPRESSION_TOKENS, dtype=torch.float16)
            if self.uses_context_prior
            else None,
        )
        # Per perturbation label and gene, the tilt theta of the shift prior (see ModelConfig),
        # and per gene what it multiplies: each token's count where the training data show it.
        self.register_buffer(
            "perturbation_tilt",
            torch.zeros(config.tilt_contexts, config.n_perturbation_labels, g)
            if self.uses_perturbation_prior
            else None,
        )
        # Per perturbation label and gene, the measured log fold change its tilt was calibrated
        # to: a combination's tilt is calibrated from its parts' sum (see combination_tilt).
        self.register_buffer(
            "perturbation_fold",
            torch.zeros(config.tilt_contexts, config.n_perturbation_labels, g)
            if config.has_fold_combination
            else None,
        )
        # Per perturbation label and gene, its shift in mean log1p(count) against control: a
        # combination's tilt matches its parts' sum (see combination_tilt).
        self.register_buffer(
            "perturbation_log_shift",
            torch.zeros(config.tilt_contexts, config.n_perturbation_labels, g)
            if config.has_log_mean_combination
            else None,
        )
        # What is derived from the fixed tables, computed on first use and forgotten whenever a
        # table is set or loaded (:meth:`_forget_derived`): calibrated combination tilts,
        # (tilt context, label rows, averaged?) -> (G,) on the CPU, and the tilted head's support
        # (:meth:`_tilted_support`), (with context?, device, dtype) -> (highest token, tail log-mass).
        self._combination_tilts: dict[tuple[int, tuple[int, ...], bool], torch.Tensor] = {}
        self._tilted_supports: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.register_load_state_dict_post_hook(lambda module, _keys: module._forget_derived())
        # Per context, depth bin and gene, the depth prior's tilt theta (see ModelConfig).
        self.register_buffer(
            "depth_tilt",
            torch.zeros(config.depth_contexts, config.depth_bins, g) if config.has_depth_prior else None,
        )
        width = config.depth_table_width
        # Per context x depth bin and gene, log-ratio offsets of the low tokens and the tail
        # (depth_table_width + 1 columns) to the tilted distribution; half precision as above.
        self.register_buffer(
            "depth_residual",
            torch.zeros(config.depth_contexts * config.depth_bins, g, width + 1, dtype=torch.float16)
            if config.has_depth_tables
            else None,
        )
        self.register_buffer("tilt_table", torch.zeros(g, N_EXPRESSION_TOKENS) if config.has_tilts else None)
        # What a raising tilt adds past each gene's highest count (see lingshu.model.tilt.poisson_tail).
        self.register_buffer(
            "tilt_tail",
            torch.zeros(g, N_EXPRESSION_TOKENS) if config.has_poisson_tail else None,
        )
        self.register_buffer("token_values", torch.from_numpy(token_values()).float(), persistent=False)
        self.gradient_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        if self.gene_embedding is not None:
            nn.init.normal_(self.gene_embedding, std=0.02)
        if self.cell_mlp:
            # PyTorch's default for a Linear over all 2G read-in features: the sum over ~10k
            # genes stays O(1) at initialisation.
            bound = 1.0 / math.sqrt(2 * self.config.n_genes)
            nn.init.uniform_(self.gene_read_in, -bound, bound)
            nn.init.uniform_(self.read_in_bias, -bound, bound)
            self.cell_encoder[1].reset_parameters()
        elif self.gene_read_in is not None:
            nn.init.normal_(self.gene_read_in, std=0.02)
        # GPT-2 style: shrink residual-branch outputs with depth.
        for block in self.blocks:
            for linear in (block.attn.out, block.mlp.down):
                nn.init.normal_(linear.weight, std=0.02 / math.sqrt(2 * self.config.n_layers))

    def _forget_derived(self) -> None:
        """Drop what was computed from the fixed tables: one of them was just set or loaded."""
        self._combination_tilts.clear()
        self._tilted_supports.clear()

    @torch.no_grad()
    def init_token_prior(
        self, frequencies: torch.Tensor, floor: float = TOKEN_FLOOR, highest: torch.Tensor | None = None
    ) -> None:
        """Set the per-gene logit table to log token frequencies (G, 281), floored at ``floor``.

        The floor is tiny on purpose: a rare token such as 'count 5,000' that the data never show
        must not get the probability mass that add-one smoothing would give it. ``highest`` (G,)
        is each gene's highest token seen in training (the tilted head's cap; default: the
        highest above the floor).
        """
        if self.token_prior is None:
            raise ValueError("this model was built with token_prior=False")
        probabilities = frequencies / frequencies.sum(-1, keepdim=True).clamp_min(1e-12)
        self.token_prior.copy_(torch.log(probabilities.clamp_min(floor)).to(self.token_prior))
        if self.tilted:
            if highest is None:
                seen = probabilities > floor
                highest = N_EXPRESSION_TOKENS - 1 - seen.flip(-1).float().argmax(-1)
            cap = torch.log1p(self.token_values[highest])[:, None]
            statistic = torch.minimum(torch.log1p(self.token_values)[None], cap)
            if self.config.centred_statistic:
                statistic = centre_statistic(statistic, probabilities.to(statistic))
            self.log_count_capped.copy_(statistic)
        self._forget_derived()

    @property
    def uses_context_prior(self) -> bool:
        return self.config.has_context_prior

    @torch.no_grad()
    def init_context_prior(
        self, context_counts: torch.Tensor, global_counts: torch.Tensor, shrinkage: float = 20.0
    ) -> None:
        """Set each context's offsets to log p_context - log p_all over the token counts.

        ``context_counts`` (C, G, 281) and ``global_counts`` (G, 281) count tokens per gene.
        p_context = (counts + k * p_all) / (cells + k) with k = ``shrinkage`` cells, so a context
        of a few cells stays near the global table instead of zeroing every unseen count.
        """
        if not self.uses_context_prior:
            raise ValueError("this model has no context prior (no source condition)")
        floor = TOKEN_FLOOR
        overall = global_counts / global_counts.sum(-1, keepdim=True).clamp_min(1e-12)
        cells = context_counts.sum(-1, keepdim=True)
        local = (context_counts + shrinkage * overall) / (cells + shrinkage)
        offsets = torch.log(local.clamp_min(floor)) - torch.log(overall.clamp_min(floor))
        self.context_prior.copy_(offsets.to(self.context_prior.dtype))
        self._forget_derived()

    @property
    def uses_perturbation_prior(self) -> bool:
        return self.config.has_perturbation_prior

    def tilt(self, conditions: torch.Tensor | None) -> torch.Tensor | None:
        """Each cell's summed tilt (B, G): the parts of its perturbation plus its depth bin, or None."""
        c = self.config
        if not c.has_tilts or conditions is None:
            return None
        total = torch.zeros(len(conditions), c.n_genes, device=conditions.device)
        if c.has_perturbation_prior:
            columns = conditions[:, c.perturbation_column : c.perturbation_column + c.perturbation_width]
            valid = columns >= 0  # padding (-1) adds nothing
            rows = (columns - c.perturbation_offset).clamp_min(0)
            context = self.tilt_context(conditions)[:, None].expand_as(rows)
            shift = (self.perturbation_tilt[context, rows] * valid[..., None]).sum(1)
            combines = c.combination_rule != "tilts"
            multi = torch.nonzero(valid.sum(1) > 1).flatten() if combines else []
            if len(multi):
                # One calibrated tilt per distinct (context, sorted parts), not one lookup per cell.
                parts = torch.where(valid[multi], rows[multi], -1).sort(1).values  # padding first
                keys, which = torch.unique(
                    torch.cat([context[multi, :1], parts], 1), dim=0, return_inverse=True
                )
                combined = [
                    self.combination_tilt(key[0], tuple(r for r in key[1:] if r >= 0))
                    for key in keys.tolist()
                ]
                shift[multi] = torch.stack(combined).to(shift)[which]
            total = total + shift
        if c.has_depth_prior:
            context, bins = self._depth_cell(conditions)
            total = total + self.depth_tilt[context, bins]
        return total

    def _depth_cell(self, conditions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each cell's (depth context, depth bin): its source label's index (0 when the depth
        prior is pooled over contexts) and its bin's index."""
        bins = conditions[:, self.config.depth_column] - self.config.depth_offset
        if self.config.depth_contexts == 1:
            return torch.zeros_like(bins), bins
        return self._source_index(conditions), bins

    @torch.no_grad()
    def tilt_base(self, context: int) -> np.ndarray:
        """The token distribution (G, 281) the shift prior's tilts of tilt context ``context``
        are calibrated against (as training's ``context_bases`` forms it): the token prior's
        frequencies (its floor counted as nothing), times the context's prior where tilts are
        per context."""
        log_prior = self.token_prior.double()
        if self.config.tilt_contexts > 1 and self.uses_context_prior:
            return torch.softmax(log_prior + self.context_prior[context].double(), -1).cpu().numpy()
        return torch.where(log_prior > math.log(TOKEN_FLOOR) + 1e-4, log_prior.exp(), 0.0).cpu().numpy()

    @torch.no_grad()
    def combination_tilt(self, context: int, parts: tuple[int, ...], average: bool = False) -> torch.Tensor:
        """The shift prior's tilt (G,) of a combination of perturbation label rows ``parts`` in
        tilt context ``context``, against the base the single labels were calibrated on
        (:meth:`tilt_base`). With log means, each gene's mean log1p(count) moves by the parts'
        summed shifts; with folds, its mean count moves by the parts' summed log fold changes,
        applied as they were measured (:func:`~lingshu.model.tilt.calibrate_tilts` with the
        fold's pseudo-count); with tilts, the parts' tilts add. With ``average`` the parts'
        shifts are averaged instead of summed: the average perturbation of ``parts``. Cached."""
        key = (context, parts, average)
        if key not in self._combination_tilts:
            rows, weight = list(parts), 1.0 / len(parts) if average else 1.0

            def combined(table: torch.Tensor) -> np.ndarray:
                return table[context, rows].double().sum(0).cpu().numpy() * weight

            rule = self.config.combination_rule
            if rule == "tilts":
                theta = combined(self.perturbation_tilt)
            else:
                base = self.tilt_base(context)
                tail = self.tilt_tail.double().cpu().numpy() if self.config.has_poisson_tail else None
                table = self.tilt_table.double().cpu().numpy()
                if rule == "log means":
                    shift, statistic = combined(self.perturbation_log_shift), log_expression()
                    target = (base @ statistic + shift)[None]
                    wanted = (np.abs(shift) > 1e-6) & (base @ token_values() > 0)
                    theta = match_tilts(base, target, wanted[None], table, statistic, tail=tail)[0]
                else:  # folds
                    folds = combined(self.perturbation_fold)[None]
                    theta = calibrate_tilts(base, folds, table, pseudo_count=PSEUDO_COUNT, tail=tail)[0]
            self._combination_tilts[key] = torch.from_numpy(theta).float()
        return self._combination_tilts[key]

    @torch.no_grad()
    def average_tilt(self, context: int, control_row: int) -> torch.Tensor | None:
        """The tilt (G,) of the average perturbation in tilt context ``context``: the parts'
        average (:meth:`combination_tilt`) over every label row with a tilt there except the
        control's ``control_row``; None when no label has one. What a perturbation the model has
        no token for can be given: the shift every perturbation shares in that context."""
        if not self.uses_perturbation_prior:
            return None
        has_tilt = self.perturbation_tilt[context].abs().sum(-1) > 0
        rows = tuple(r for r in torch.nonzero(has_tilt).flatten().tolist() if r != control_row)
        return self.combination_tilt(context, rows, average=True) if rows else None

    def tilt_context(self, conditions: torch.Tensor) -> torch.Tensor:
        """Each cell's row of the shift prior's per-context tables (0 where they are pooled)."""
        if self.config.tilt_contexts > 1:
            return self._source_index(conditions)
        return torch.zeros(len(conditions), dtype=torch.long, device=conditions.device)

    @torch.no_grad()
    def init_perturbation_tilt(
        self,
        tilts: torch.Tensor,
        table: torch.Tensor,
        folds: torch.Tensor | None = None,
        log_shifts: torch.Tensor | None = None,
    ) -> None:
        """Set the shift prior's tilts (tilt_contexts, n_perturbation_labels, G), what they
        multiply (G, 281) and what a combination is formed from (same shape as the tilts): for
        a model that combines folds, the log fold changes the tilts were calibrated to; for one
        that combines log means, each label's shift in mean log1p(count)."""
        if not self.uses_perturbation_prior:
            raise ValueError("this model has no perturbation prior (no perturbation condition)")
        if self.config.has_fold_combination and folds is None:
            raise ValueError("this model combines fold changes: give the folds its tilts were calibrated to")
        if self.config.has_log_mean_combination and log_shifts is None:
            raise ValueError("this model combines log means: give each label's log-expression shift")
        self.perturbation_tilt.copy_(tilts.to(self.perturbation_tilt))
        self.tilt_table.copy_(table.to(self.tilt_table))
        if self.perturbation_fold is not None:
            self.perturbation_fold.copy_(folds.to(self.perturbation_fold))
        if self.perturbation_log_shift is not None:
            self.perturbation_log_shift.copy_(log_shifts.to(self.perturbation_log_shift))
        self._forget_derived()

    def depth_index(self, conditions: torch.Tensor | None) -> torch.Tensor | None:
        """Each cell's (context, depth bin) row of the depth residual table, or None without one."""
        if not self.config.has_depth_tables or conditions is None:
            return None
        context, bins = self._depth_cell(conditions)
        return context * self.config.depth_bins + bins

    def add_depth_residual(
        self, logits: torch.Tensor, rows: torch.Tensor, genes: torch.Tensor
    ) -> torch.Tensor:
        """Add, in place, the depth residuals of table ``rows`` and ``genes`` (broadcasting to
        ``logits``'s leading shape) to ``logits`` (..., 281): per token below the table's width,
        and the tail's one offset to every token above it."""
        width = self.config.depth_table_width
        residual = self.depth_residual[rows, genes].to(logits.dtype)
        logits[..., :width].add_(residual[..., :width])
        logits[..., width:].add_(residual[..., width:])
        return logits

    @torch.no_grad()
    def init_depth_residual(self, residuals: torch.Tensor) -> None:
        """Set the depth residual table (depth_contexts, depth_bins, G, depth_table_width + 1)."""
        if not self.config.has_depth_tables:
            raise ValueError("this model has no depth tables (no depth bins, or depth_table_width=0)")
        self.depth_residual.copy_(residuals.reshape(self.depth_residual.shape).to(self.depth_residual.dtype))

    @torch.no_grad()
    def init_depth_tilt(self, tilts: torch.Tensor, table: torch.Tensor) -> None:
        """Set the depth prior's tilts (depth_contexts, depth_bins, G) and what a raising tilt
        multiplies (G, 281; shared with the shift prior when the model has both)."""
        if not self.config.has_depth_prior:
            raise ValueError("this model has no depth prior (trained without depth bins)")
        self.depth_tilt.copy_(tilts.to(self.depth_tilt))
        self.tilt_table.copy_(table.to(self.tilt_table))

    def tilt_offsets(self, tilts: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
        """Logit offsets (..., 281) of tilts (...) of the given genes (same trailing shape)."""
        tail = None if self.tilt_tail is None else self.tilt_tail[genes]
        return tilt_offsets(tilts[..., None], self.tilt_table[genes], self.token_values, tail)

    @torch.no_grad()
    def init_tilt_tail(self, tail: torch.Tensor) -> None:
        """Set what a raising tilt adds past each gene's highest count (G, 281)."""
        if not self.config.has_poisson_tail:
            raise ValueError("this model has no Poisson tail (poisson_tail=False or no tilts)")
        self.tilt_tail.copy_(tail.to(self.tilt_tail.dtype))
        self._forget_derived()

    def context_index(self, conditions: torch.Tensor | None) -> torch.Tensor | None:
        """Each cell's context (source label) row of the context prior, or None without one."""
        if not self.uses_context_prior or conditions is None:
            return None
        return self._source_index(conditions)

    def _source_index(self, conditions: torch.Tensor) -> torch.Tensor:
        """Each cell's source (context) label index, 0..n_contexts-1."""
        return conditions[:, self.config.context_column] - self.config.context_offset

    def _slot_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings pushed through each slot's block of the compression matrix.

        Compression is linear, so W_down @ concat_s(E[tok_s] + gene_s) equals
        sum_s (W_down_s E)[tok_s] + sum_s W_down_s gene_s. Precomputing the small (S, V, D) table
        and the per-group constant avoids materialising a (batch, genes, D) tensor.
        Returns the flattened table (S * (V + 1), D), whose last row per slot is zero (padding),
        and the per-group constant (n_groups, D).
        """
        d, s = self.config.d_model, self.config.patch_size
        embedding = self.token_embedding.weight[:FIRST_CONDITION_TOKEN]
        genes = (
            self.gene_embedding
            if self.gene_embedding is not None
            else embedding.new_zeros(self.config.n_genes, d)
        )
        genes = F.pad(genes[self.permutation], (0, 0, 0, self.n_groups * s - self.config.n_genes))
        genes = genes.view(self.n_groups, s, d)
        if s == 1:
            table, constant = embedding[None], genes[:, 0]
        else:
            blocks = self.compress.weight.view(d, s, d)  # (out, slot, in)
            table = torch.einsum("vi,osi->svo", embedding, blocks)
            constant = torch.einsum("jsi,osi->jo", genes, blocks)
        table = F.pad(table, (0, 0, 0, 1))  # one zero row per slot for padded positions
        return table.reshape(-1, d), constant

    def encode(self, tokens: torch.Tensor, conditions: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states of the compressed gene groups, (B, n_groups, D), after the final norm.

        ``tokens``: (B, G) ids in 0..281 (expression tokens or [MASK]).
        ``conditions``: (B, C) condition indices 0..n_condition_tokens-1 (-1 = padding), or None.
        """
        if self.cell_mlp:
            return self.encode_cell(tokens, conditions)
        b, g = tokens.shape
        d, s = self.config.d_model, self.config.patch_size
        table, constant = self._slot_tables()
        rows = FIRST_CONDITION_TOKEN + 1
        permuted = F.pad(tokens[:, self.permutation], (0, self.n_groups * s - g), value=rows - 1)
        index = permuted.view(b * self.n_groups, s) + torch.arange(s, device=tokens.device) * rows
        x = F.embedding_bag(index, table, mode="sum").view(b, self.n_groups, d) + constant
        if self.gene_read_in is not None:
            x = x + self.read_in(tokens)
        n_cond = 0
        if conditions is not None and conditions.shape[1] > 0:
            condition_states = self.condition_embedding(conditions)
            n_cond = condition_states.shape[1]
            x = torch.cat([condition_states, x], dim=1)
        cos, sin = rotary_tables(x.shape[1], d // self.config.n_heads, self.config.rope_base, x.device)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin)
        return self.final_norm(x[:, n_cond:])

    def encode_cell(self, tokens: torch.Tensor, conditions: torch.Tensor | None = None) -> torch.Tensor:
        """The cell_mlp encoder's cell state, (B, 1, D), from every visible gene at once.

        Each gene's log(1 + count) is divided by the cell's visible fraction (at least
        ``MIN_VISIBLE_FRACTION``), so the read-in sum estimates the whole cell's: the network
        sees inputs of one scale whether 10% or 99% of the genes are shown.
        """
        b, g = tokens.shape
        values, visible = self.visible_log_counts(tokens)
        fraction = visible.float().mean(1, keepdim=True).clamp_min(MIN_VISIBLE_FRACTION)
        features = torch.stack([values / fraction, visible.to(values.dtype)], -1).view(b, 2 * g)
        x = torch.addmm(self.read_in_bias, features, self.gene_read_in.view(2 * g, -1))
        if conditions is not None and conditions.shape[1] > 0:
            valid = conditions >= 0
            x = x + (self.condition_read_in(conditions.clamp_min(0)) * valid[..., None]).sum(1)
        return self.cell_encoder(x)[:, None, :]

    def visible_log_counts(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each gene's log(1 + count) where it is visible, else 0, and the visibility (B, G):
        what both encoders read in ([MASK] and unobserved genes are not visible)."""
        visible = tokens != MASK_TOKEN
        # log1p on the 281 token values, then one gather: not a log per (cell, gene).
        log_values = torch.log1p(self.token_values)
        return log_values[tokens.clamp(max=N_EXPRESSION_TOKENS - 1)] * visible, visible

    def read_in(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, n_groups, D): each group's sum of its genes' read-in vectors weighted by their
        log(1 + count) and visibility ([MASK] and unobserved genes: 0, 0)."""
        b, g = tokens.shape
        s, pad = self.config.patch_size, self.n_groups * self.config.patch_size - g
        values, visible = self.visible_log_counts(tokens)
        features = torch.stack([values, visible.to(values.dtype)], -1)[:, self.permutation]
        features = F.pad(features, (0, 0, 0, pad)).view(b, self.n_groups, s, 2)
        weights = F.pad(self.gene_read_in.index_select(0, self.permutation), (0, 0, 0, 0, 0, pad))
        return torch.einsum("bjsk,jskd->bjd", features, weights.view(self.n_groups, s, 2, -1))

    def condition_embedding(self, conditions: torch.Tensor) -> torch.Tensor:
        """(B, n_slots, D) condition states: each slot's token embeddings summed (padding -1 adds
        nothing), so a double perturbation A+B is one position whatever the order of A and B."""
        valid = conditions >= 0
        embedded = self.token_embedding(conditions.clamp_min(0) + FIRST_CONDITION_TOKEN) * valid[..., None]
        widths = list(self.config.condition_widths) or [1] * conditions.shape[1]
        if len(widths) == conditions.shape[1]:
            return embedded
        return torch.stack([part.sum(1) for part in embedded.split(widths, dim=1)], dim=1)

    def logits_at(
        self,
        hidden: torch.Tensor,
        cells: torch.Tensor,
        genes: torch.Tensor,
        context: torch.Tensor | None = None,
        tilt: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
        network: bool = True,
    ) -> torch.Tensor:
        """Expression-token logits (M, 281) for the (cell, gene) pairs given as index vectors.

        ``context`` (B,) holds each hidden row's context-prior row (:meth:`context_index`),
        ``tilt`` (B, G) its summed tilts (:meth:`tilt`) and ``depth`` (B,) its depth-table row
        (:meth:`depth_index`). ``network=False`` gives the priors alone (the network's
        contribution removed), for the likelihood yardstick's "network off" row.

        Decompression, the gene embedding and the head are linear, so the logits of gene g in
        slot s of group j are (head @ W_up_s) h_j + head @ gene_g: one small matmul per slot on
        the requested positions only, instead of decompressing every gene.
        """
        d, s = self.config.d_model, self.config.patch_size
        position = self.inverse_permutation[genes]
        group, slot = position // s, position % s
        # The priors' offsets (token prior, context prior, tilts, depth tables) per position.
        offsets = hidden.new_zeros(len(genes), N_EXPRESSION_TOKENS)
        if self.token_prior is not None:
            offsets = offsets + self.token_prior[genes]
        if context is not None:
            offsets = offsets + self.context_prior[context[cells], genes].to(offsets.dtype)
        if tilt is not None:
            offsets = offsets + self.tilt_offsets(tilt[cells, genes], genes)
        if depth is not None:
            offsets = self.add_depth_residual(offsets, depth[cells], genes)
        if not network:
            return offsets
        if self.tilted:
            return self.add_exponents(offsets, self.tilt_exponents(hidden, cells, genes), genes)
        states = hidden[cells, group]
        head = self.head.weight
        # Per-gene offsets head @ gene_g, gathered once, enter each matmul through addmm.
        if self.gene_embedding is not None:
            offsets = offsets + (self.gene_embedding @ head.T)[genes]
        if s == 1:
            return torch.addmm(offsets, states, head.T)
        per_slot = torch.einsum("vo,soi->svi", head, self.decompress.weight.view(s, d, d))
        order = torch.argsort(slot)
        sizes = torch.bincount(slot, minlength=s).tolist()
        pieces = zip(torch.split(states[order], sizes), torch.split(offsets[order], sizes))
        sorted_logits = torch.cat(
            [torch.addmm(off, part, per_slot[k].T) for k, (part, off) in enumerate(pieces)]
        )
        logits = torch.empty_like(sorted_logits).index_copy(0, order, sorted_logits)
        return logits

    def tilt_exponents(self, hidden: torch.Tensor, cells: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
        """The tilted head's 3 exponents (M, 3) for the (cell, gene) pairs: each gene's read-out
        of its cell state (cell MLP) or of its group's and the cell's mean state (transformer)."""
        # Read-outs start at zero: training begins exactly at the table (the network-off model).
        # index_select, not advanced indexing: its backward (index_add) sums in a fixed
        # order on CPU, so training is bit-for-bit reproducible.
        if self.cell_mlp and len(genes) * 8 > hidden.shape[0] * self.config.n_genes:
            # Many pairs per cell (training scores most masked genes): every gene's exponents
            # for every cell in one matmul, then a gather, beats gathering a read-out per pair.
            weights = (self.gene_readout + self.shared_readout).view(-1, hidden.shape[-1])
            every = (hidden[:, 0] @ weights.T).view(hidden.shape[0], -1, N_EXPONENTS)
            every = every + self.gene_exponents
            return every.view(-1, N_EXPONENTS).index_select(0, cells * self.config.n_genes + genes)
        if self.cell_mlp:
            states = hidden[:, 0].index_select(0, cells)
        else:
            d, n_groups = self.config.d_model, hidden.shape[1]
            group = self.inverse_permutation[genes] // self.config.patch_size
            local = hidden.reshape(-1, d).index_select(0, cells * n_groups + group)
            states = torch.cat([local, hidden.mean(1).index_select(0, cells)], -1)
        readout = self.gene_readout.index_select(0, genes)
        exponents = torch.einsum("md,mkd->mk", states, readout + self.shared_readout)
        return exponents + self.gene_exponents.index_select(0, genes)

    def tilted_nll(
        self,
        hidden: torch.Tensor,
        cells: torch.Tensor,
        genes: torch.Tensor,
        targets: torch.Tensor,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """-log p(target) (M,) under the tilted head, with the context prior's rows ``context``
        (B,) (:meth:`context_index`) or no prior: the same numbers as the cross-entropy of
        :meth:`logits_at`, at a fraction of its cost.

        Above a gene's highest training count the capped statistic is constant, so every tilt
        moves those tokens' table mass alike: their log-sum is a per-gene constant plus one
        tilt, computed once. Only the tokens up to each gene's highest count (3 for the median
        pbmc3k gene, not 281) are then scored one by one, in buckets of widths 4, 16, 64, 281.
        """
        if not self.tilted:
            raise ValueError("tilted_nll needs the tilted head")
        exponents = self.tilt_exponents(hidden, cells, genes)
        slope, curvature, zero = exponents.unbind(-1)
        statistic, table = self.log_count_capped, self.token_prior
        tokens = torch.arange(N_EXPRESSION_TOKENS, device=table.device)
        # The fixed tables' rows per pair: the token prior, plus the pair's context offsets.
        rows = None if context is None else context[cells]
        highest, tails = self._tilted_support(rows is not None)
        tail = tails[genes] if rows is None else tails[rows, genes]
        cap = statistic[genes, -1]
        tail_logit = tail + slope * cap + curvature * cap.square()
        target_statistic = statistic[genes, targets]
        target_table = table[genes, targets]
        if rows is not None:
            target_table = target_table + self.context_prior[rows, genes, targets].to(target_table.dtype)
        target_logit = (
            target_table
            + slope * target_statistic
            + curvature * target_statistic.square()
            + zero * (targets == 0)
        )
        needed = highest[genes] + 1
        normaliser = torch.zeros_like(target_logit)
        lower = 0
        for width in SUPPORT_BUCKETS:
            chosen = ((needed > lower) & (needed <= width)).nonzero().squeeze(1)
            lower = width
            if len(chosen) == 0:
                continue
            g = genes[chosen]
            s = statistic[g, :width]
            fixed = table[g, :width]
            if rows is not None:
                fixed = fixed + self.context_prior[rows.index_select(0, chosen), g, :width].to(fixed.dtype)
            logits = (
                fixed
                + slope.index_select(0, chosen)[:, None] * s
                + curvature.index_select(0, chosen)[:, None] * s.square()
            )
            logits = torch.cat([logits[:, :1] + zero.index_select(0, chosen)[:, None], logits[:, 1:]], 1)
            logits = logits.masked_fill(tokens[None, :width] > highest[g, None], -math.inf)
            both = torch.cat([logits, tail_logit.index_select(0, chosen)[:, None]], 1)
            normaliser = normaliser.index_copy(0, chosen, both.logsumexp(-1))
        return normaliser - target_logit

    def _tilted_support(self, with_context: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Each gene's highest training token (G,) and the log-mass of its fixed table above it:
        (G,) for the token prior, (C, G) with each context's offsets added.

        The tilted head's tables are frozen, so this is computed once per device (not on every
        training step: with 10 contexts it took three quarters of a step) and forgotten when a
        table is set or loaded.
        """
        table = self.token_prior
        key = (with_context, table.device, table.dtype)
        if key not in self._tilted_supports:
            with torch.no_grad():
                statistic = self.log_count_capped
                # The statistic rises to its cap at the highest count and stays there.
                highest = (statistic >= statistic[:, -1:]).to(torch.uint8).argmax(-1)
                tokens = torch.arange(N_EXPRESSION_TOKENS, device=table.device)
                full = table + self.context_prior.to(table.dtype) if with_context else table
                tails = full.masked_fill(tokens <= highest[:, None], -math.inf).logsumexp(-1)
            self._tilted_supports[key] = highest, tails
        return self._tilted_supports[key]

    def add_exponents(
        self, offsets: torch.Tensor, exponents: torch.Tensor, genes: torch.Tensor
    ) -> torch.Tensor:
        """The tilted head: ``offsets`` (..., 281) plus a slope and a curvature on each gene's
        capped log(1 + count) and an offset on count 0, ``exponents`` (..., 3) for ``genes``."""
        slope, curvature, zero = exponents[..., :1], exponents[..., 1:2], exponents[..., 2:]
        statistic = self.log_count_capped[genes].to(offsets.dtype)
        logits = offsets + slope * statistic + curvature * statistic.square()
        return torch.cat([logits[..., :1] + zero, logits[..., 1:]], dim=-1)

    def permuted_logits(
        self,
        hidden: torch.Tensor,
        context: torch.Tensor | None = None,
        tilt: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of every gene, (B, G, 281), in *permuted* gene order (gene ``permutation[i]``
        at position i), as a few large matmuls: the training path, where most positions count.
        """
        b = hidden.shape[0]
        d, s = self.config.d_model, self.config.patch_size
        if self.tilted:
            genes = self.permutation[None, :].expand(b, -1)
            cells = torch.arange(b, device=hidden.device)[:, None].expand_as(genes)
            flat = self.logits_at(hidden, cells.reshape(-1), genes.reshape(-1), context, tilt, depth)
            return flat.view(b, self.config.n_genes, -1)
        head = self.head.weight
        weights = (
            head[None] if s == 1 else torch.einsum("vo,soi->svi", head, self.decompress.weight.view(s, d, d))
        )
        logits = torch.einsum("bjd,svd->bjsv", hidden, weights).reshape(b, self.n_groups * s, -1)
        logits = logits[:, : self.config.n_genes]
        # Per-gene terms are summed on the small (G, 281) table and added once, in place: the
        # einsum's backward does not need its output, and every extra (B, G, 281) temporary costs
        # as much memory traffic as the matmul itself on CPU.
        offsets = []
        if self.gene_embedding is not None:
            offsets.append(self.gene_embedding[self.permutation] @ head.T)
        if self.token_prior is not None:
            offsets.append(self.token_prior[self.permutation])
        if offsets:
            logits = logits.add_(sum(offsets[1:], offsets[0]))
        if context is not None:
            logits = logits.add_(
                self.context_prior[context[:, None], self.permutation[None, :]].to(logits.dtype)
            )
        if tilt is not None:
            offsets = self.tilt_offsets(tilt[:, self.permutation], self.permutation)
            logits = logits.add_(offsets.to(logits.dtype))
        if depth is not None:
            logits = self.add_depth_residual(logits, depth[:, None], self.permutation[None, :])
        return logits

    def forward(self, tokens: torch.Tensor, conditions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, G, 281) for every gene (for tests and small models; training and sampling
        ask ``logits_at`` for the positions they need)."""
        b, g = tokens.shape
        hidden = self.encode(tokens, conditions)
        cells = torch.arange(b, device=tokens.device).repeat_interleave(g)
        genes = torch.arange(g, device=tokens.device).repeat(b)
        context, tilt = self.context_index(conditions), self.tilt(conditions)
        depth = self.depth_index(conditions)
        return self.logits_at(hidden, cells, genes, context, tilt, depth).view(b, g, -1)

    def block_parameter_count(self) -> int:
        """Parameters of the transformer blocks and final norm (the paper's ~85M for `paper`)."""
        return sum(p.numel() for p in self.blocks.parameters()) + self.config.d_model

    def flops_per_cell(self, training: bool = True, sampling_steps: int = 1) -> float:
        """Matmul FLOPs the implementation performs for one cell.

        Compression is a table lookup and decompression is folded into the head, so the cost is
        the blocks plus the head (D x 281 per gene). Training (forward + backward, x3) computes
        the head for every gene; sampling runs the blocks at every step and the head once per
        gene, at the step that reveals it.
        """
        c = self.config
        if self.cell_mlp:
            encoder = 2 * (2 * c.n_genes * c.encoder_width + c.encoder_width * c.d_model)
            head = 2 * c.n_genes * N_EXPONENTS * c.d_model
            return float(3 * (encoder + head)) if training else float(sampling_steps * encoder + head)
        t = self.n_groups + c.n_condition_slots
        per_block = 2 * t * (4 * c.d_model**2 + 3 * c.d_model * c.d_ff) + 4 * t * t * c.d_model
        blocks = c.n_layers * per_block
        head = (
            2 * c.n_genes * (N_EXPONENTS * 2 * c.d_model if self.tilted else c.d_model * N_EXPRESSION_TOKENS)
        )
        if training:
            return float(3 * (blocks + head))
        return float(sampling_steps * blocks + head)
