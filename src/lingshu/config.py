"""Typed configuration: model architecture and training presets.

Presets are plain dataclass instances looked up by name (no string magic beyond that lookup):
``tiny`` for CPU unit tests, ``small`` for the CPU demo, ``paper`` for the published model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

HEADS = ("categorical", "tilted")
ENCODERS = ("transformer", "cell_mlp")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the mask predictor.

    ``n_genes`` and ``n_condition_tokens`` are filled from the data (vocabulary and label maps).
    ``patch_size`` is the sequence-compression group size S (1 = no compression).
    ``gene_embedding`` adds a learned per-gene identity vector to each gene token before
    compression and again before the output head. The paper does not describe one explicitly
    (gene identity comes from the permutation slot and RoPE); without it a bidirectional model
    with relative positions cannot tell genes apart when S=1, so it is on by default.
    ``token_prior`` adds a learnable per-gene logit table initialised from the training data's
    token frequencies, so training starts from the per-gene marginal and learns the dependence
    between genes on top of it. Also a deviation from the paper (which has no output biases): it
    keeps the long tail of rare high-count tokens from inflating library sizes in short runs.
    ``context_prior`` does the same per *source* label (cell type, cell line): a fixed table of
    log token frequencies of each context relative to all cells, shrunk towards the global table
    for small contexts, added to the logits of cells of that context. The likelihood gain of
    cell-type structure is a fraction of a percent of the loss (pbmc3k: ~8 of 2,930 nats per
    held-out cell), too small a signal for short runs to find; this gives the network the
    per-context marginals from the first step and leaves it the structure within a context.
    ``context_column``/``context_offset``/``n_contexts`` locate the source slot among the
    encoded conditions and its labels among the condition tokens (set from the data).
    ``perturbation_prior`` tilts each gene's token distribution by its perturbation's mean fold
    change against control in the training data (``logit += theta * count``; the parts of
    a combination add their tilts, or with ``combine_folds`` their folds), so a model starts at
    the additive-shift answer and the network learns the rest; ``perturbation_column``/
    ``perturbation_width``/``perturbation_offset``/``n_perturbation_labels`` locate the
    perturbation slot (set from the data).
    ``tilt_contexts`` > 1 keeps one tilt per context and perturbation (the context's own fold
    change where the pair was seen in training, the pooled one of the other contexts where not).
    ``depth_bins`` > 0 adds a *depth* condition: each training cell's library-size quantile bin
    within its context, a condition token the network sees, plus a depth tilt per context, bin
    and gene calibrated like the shift prior so that the context's token distribution gets the
    bin's mean depth. Within a cell type, depth is the dominant structure (a deep cell detects
    more of every gene); generation draws the bin with the context in training proportions.
    ``depth_table_width`` > 0 adds to the tilt a residual table per context, bin and gene over
    the tokens below that width and the tail above it, so each bin starts from its own marginal
    (see ``lingshu.training.depth_shift``); 0 keeps the tilt alone.
    ``depth_column``/``depth_offset``/``depth_contexts`` locate the depth slot (set from the data).
    ``poisson_tail`` lets raising tilts reach past each gene's highest count through a Poisson
    continuation (see ``lingshu.model.tilt.poisson_tail``): a raise becomes a bump that every
    cell shares, as a cytokine's response is; training turns it on for cytokine perturbations
    (off by default so that older checkpoints load as they were).
    ``combine_folds`` keeps each label's measured log fold changes beside its tilts and gives a
    combination A+B the tilt calibrated to the parts' summed log fold, applied as measured
    ((mean + c) * fold_A * fold_B - c), instead of the sum of the parts' tilts, which for a gene
    both parts raise from almost nothing multiplies two raises of almost nothing; training turns
    it on for perturbation models (off by default so that older checkpoints load as they were).
    ``combine_log_means`` keeps each label's shift in mean log1p(count) against control beside
    its tilts (measured where the label was seen in the context, else what its tilt gives) and
    gives a combination A+B the tilt under which each gene's mean log1p(count) moves by the
    parts' summed shifts: additive in log expression, the scale the perturbation metrics score
    on, where summed count folds overshoot genes that a part sends to zero in some cells and up
    in others. Training turns it on for perturbation models in place of ``combine_folds``.
    ``head`` picks the output parameterisation. ``categorical``: a 281-way linear head on each
    gene's decompressed state (plus the token prior). ``tilted``: each gene's frozen training
    token table tilted by three context-dependent exponents read from its group's state and the
    cell's mean state, a slope and a curvature on log(1 + count) (capped at the gene's highest
    training count) and an offset on count 0: 3 numbers per gene instead of 281, so it learns
    in CPU minutes; with the network off it is the per-gene table.
    ``centred_statistic`` centres the tilted head's log(1 + count) per gene on its mean over the
    gene's nonzero training counts: the same family of tilts, but a highly expressed gene's sharp
    peak needs a slope of a few units instead of hundreds, which the read-outs reach in minutes
    (off by default so that older checkpoints load as they were).
    ``value_embedding`` adds to each group's input its genes' own read-in vectors weighted by
    log(1 + count) and by visibility: the token embedding is shared by all genes, so without it
    a group knows "slot 3 holds a 5" but not what a 5 of that gene says about the cell.
    ``encoder`` picks the network that reads the visible genes. ``transformer``: the compressed
    gene groups through ``n_layers`` blocks. ``cell_mlp`` (tilted head only): one cell state of
    ``d_model`` numbers from a two-layer MLP (``encoder_width`` hidden units) over every gene's
    log(1 + count), scaled by the inverse of the visible fraction so that the read-in sums
    estimate the whole cell's at every mask level, and its visibility; every gene reads its
    exponents from that state. It learns in CPU minutes what the transformer does not.
    """

    n_genes: int = 0
    n_condition_tokens: int = 0
    n_condition_slots: int = 0  # condition positions prepended to a cell (one per slot)
    # Encoded columns per slot; a slot's token embeddings are summed into its one position
    # (a perturbation A+B). Empty: one column per slot.
    condition_widths: tuple[int, ...] = ()
    d_model: int = 640
    n_layers: int = 13
    n_heads: int = 10
    d_ff: int = 2560
    patch_size: int = 8
    gene_embedding: bool = True
    token_prior: bool = True
    context_prior: bool = True
    context_column: int = -1
    context_offset: int = 0
    n_contexts: int = 0
    perturbation_prior: bool = True
    perturbation_column: int = -1
    perturbation_width: int = 0
    perturbation_offset: int = 0
    n_perturbation_labels: int = 0
    tilt_contexts: int = 1
    depth_bins: int = 0
    depth_column: int = -1
    depth_offset: int = 0
    depth_contexts: int = 1
    depth_table_width: int = 32
    poisson_tail: bool = False
    combine_folds: bool = False
    combine_log_means: bool = False
    head: str = "categorical"
    value_embedding: bool = False
    centred_statistic: bool = False
    encoder: str = "transformer"
    encoder_width: int = 256
    rope_base: float = 10_000.0
    norm_eps: float = 1e-6
    permutation_seed: int = 0

    @property
    def has_context_prior(self) -> bool:
        return self.context_prior and self.n_contexts > 0 and self.context_column >= 0

    @property
    def has_perturbation_prior(self) -> bool:
        return self.perturbation_prior and self.n_perturbation_labels > 0 and self.perturbation_column >= 0

    @property
    def has_depth_prior(self) -> bool:
        return self.depth_bins > 0 and self.depth_column >= 0

    @property
    def has_depth_tables(self) -> bool:
        return self.has_depth_prior and self.depth_table_width > 0

    @property
    def has_poisson_tail(self) -> bool:
        """Whether raising tilts continue each gene's distribution past its highest count."""
        return self.poisson_tail and self.has_tilts

    @property
    def has_log_mean_combination(self) -> bool:
        """Whether combinations get tilts matching their parts' summed log-expression shifts."""
        return self.combine_log_means and self.has_perturbation_prior and self.token_prior

    @property
    def has_fold_combination(self) -> bool:
        """Whether combinations get tilts calibrated from their parts' summed fold changes
        (the log-expression rule wins where both are set)."""
        return (
            self.combine_folds
            and not self.combine_log_means
            and self.has_perturbation_prior
            and self.token_prior
        )

    @property
    def combination_rule(self) -> str:
        """How a combination's shift prior is formed: 'log means', 'folds' or 'tilts' (added)."""
        if self.has_log_mean_combination:
            return "log means"
        return "folds" if self.has_fold_combination else "tilts"

    @property
    def has_tilts(self) -> bool:
        """Whether logits get exponential tilts (shift prior, depth prior or both)."""
        return self.has_perturbation_prior or self.has_depth_prior

    def priors(self) -> str:
        """The data-derived tables this model adds to its logits, in words (for provenance)."""
        parts = ["token prior"] if self.token_prior else []
        if self.has_context_prior:
            parts.append("context prior")
        if self.has_perturbation_prior:
            tail = ", Poisson tail" if self.has_poisson_tail else ""
            combined = {"log means": ", combined log means", "folds": ", combined folds"}.get(
                self.combination_rule, ""
            )
            scope = "per context" if self.tilt_contexts > 1 else "pooled"
            parts.append(f"shift prior ({scope}{tail}{combined})")
        if self.has_depth_prior:
            tables = f", tables below count {self.depth_table_width}" if self.has_depth_tables else ""
            parts.append(f"depth prior ({self.depth_bins} bins{tables})")
        return ", ".join(parts) or "none"

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head dimension must be even for rotary embeddings")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.encoder == "cell_mlp" and self.head != "tilted":
            raise ValueError("the cell_mlp encoder feeds the tilted head: set head='tilted'")
        if self.encoder_width < 1:
            raise ValueError(f"encoder_width must be >= 1, got {self.encoder_width}")
        if not 0 <= self.depth_table_width <= 100:  # tokens below 100 are exact counts
            raise ValueError(f"depth_table_width must be in 0..100, got {self.depth_table_width}")


PRECISIONS = ("auto", "bf16", "fp32")
LOSS_WEIGHTINGS = ("inverse_t", "masked_mean")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (paper defaults: AdamW 0.9/0.95, wd 0.1, clip 1.0, batch 256)."""

    batch_size: int = 256
    micro_batch_size: int | None = None
    max_steps: int = 10_000
    peak_lr: float = 2e-4
    min_lr: float = 2e-5
    warmup_steps: int = 1_000
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    ema_sigma_rel: float = 0.05
    t_min: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    # Controls (the perturbation slot's control label) are capped at this fraction of the
    # training cells, as in the paper; 1.0 keeps every control cell.
    max_control_fraction: float = 0.1
    # Fraction of the training cells held back as a validation slice (never trained on, nor used
    # by the priors) whose masked NLL is logged every val_every steps (0: checkpoint_every);
    # the best-scoring EMA weights are kept and used for sampling.
    val_fraction: float = 0.0
    val_every: int = 0
    # Score about this many masked genes per cell (an unbiased subsample, see
    # lingshu.model.diffusion.masked_loss_and_mask); 0 scores every masked gene.
    scored_genes: int = 0
    # Learning rate of the per-gene parameters (read-in, read-out, embeddings) relative to the
    # network's: each gene's gradient comes from that gene alone and is far noisier, and Adam
    # moves every parameter by about the learning rate whatever its gradient's signal.
    gene_lr_scale: float = 1.0
    # The same for the tilted head's per-gene read-outs and constants (None: gene_lr_scale). A
    # read-out sees one gene's target, not a sum over ~10,000 inputs as the read-in does, and
    # at the read-in's small rate it under-fits each gene's conditional (generation misses cell
    # types even from a real cell's own state).
    readout_lr_scale: float | None = None
    # How a cell's masked cross-entropy is normalised: "inverse_t" divides its sum by t x (observed
    # genes), the paper's 1/t-weighted bound on the NLL; "masked_mean" takes the mean over its
    # masked genes, the same in expectation up to the ratio's bias, without the 1/t weight's variance
    # at small t (a cell with 10 masked genes no longer weighs as much as one with 5,000).
    loss_weighting: str = "inverse_t"
    # Recompute each block's activations in the backward pass: less memory, ~30% more compute.
    activation_checkpointing: bool = False
    # torch.compile the loss computation (model forward and cross-entropy); same results up to
    # floating-point rounding, faster steps after a one-off compilation.
    compile: bool = False
    # Matmul precision of the forward/backward pass: "auto" = bf16 autocast on CUDA, fp32 on
    # CPU; "bf16" or "fp32" force one (the weights and optimizer state stay fp32 either way).
    precision: str = "auto"
    # After training, fit a Gaussian mixture of this many components to the cell states the kept
    # weights infer from the training cells; generation draws each new cell's state from it
    # first and reveals state_prior_first_fraction of the genes from that state's read-out
    # (lingshu.model.state_prior). 0: none. Only for cell_mlp models without conditions.
    state_prior_components: int = 0
    state_prior_first_fraction: float = 0.1
    # Stop at this step (0: at max_steps) with the learning-rate schedule still that of max_steps:
    # the weights a full run has at that step (a training length chosen on validation).
    stop_step: int = 0

    @property
    def last_step(self) -> int:
        """The step training ends at: ``stop_step`` where set, else ``max_steps``."""
        return self.stop_step or self.max_steps

    def __post_init__(self) -> None:
        if not 0 <= self.stop_step <= self.max_steps:
            raise ValueError(f"stop_step must be in [0, max_steps={self.max_steps}], got {self.stop_step}")
        if self.state_prior_components < 0:
            raise ValueError(f"state_prior_components must be >= 0, got {self.state_prior_components}")
        if not 0 < self.state_prior_first_fraction <= 1:
            raise ValueError(
                f"state_prior_first_fraction must be in (0, 1], got {self.state_prior_first_fraction}"
            )
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}")
        if self.readout_lr_scale is not None and self.readout_lr_scale <= 0:
            raise ValueError(f"readout_lr_scale must be > 0, got {self.readout_lr_scale}")
        if self.scored_genes < 0:
            raise ValueError(f"scored_genes must be >= 0, got {self.scored_genes}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


@dataclass(frozen=True)
class Preset:
    """A named pair of model and training settings."""

    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=128, patch_size=8),
        TrainConfig(
            batch_size=32,
            max_steps=300,
            peak_lr=2e-3,
            min_lr=2e-4,
            warmup_steps=20,
            checkpoint_every=100,
        ),
    ),
    # Sized for the 15-minute CPU demo on 2 cores (pbmc3k, ~10.7k genes): ~5.5 minutes of
    # training at ~12 cells/s. Small batches buy more optimisation steps for the same time.
    "small": Preset(
        ModelConfig(d_model=96, n_layers=4, n_heads=4, d_ff=288, patch_size=32),
        TrainConfig(
            batch_size=16,
            max_steps=240,
            peak_lr=2e-3,
            min_lr=1e-4,
            warmup_steps=24,
            checkpoint_every=80,
        ),
    ),
    # The label-free CPU model: one cell state from an MLP over every visible gene (cell_mlp
    # encoder) tilting each gene's training table by 3 exponents on its centred log(1 + count),
    # every masked gene scored, the per-gene read-in at a twentieth of the network's learning rate,
    # the read-outs at it; generation draws each cell's state first from a mixture fitted to the
    # training cells' states.
    "cpu": Preset(
        ModelConfig(
            # A state of 128 numbers: the same validation NLL as 64 (0.25528 against 0.25529)
            # but closer cells with the state prior (validation unbiased MMD^2 over 3 sampling
            # seeds 0.0033 / 0.0049 / 0.0049 against 0.0080 / 0.0044 / 0.0081), +15% time.
            d_model=128,
            n_layers=0,
            n_heads=4,
            d_ff=0,
            patch_size=1,
            head="tilted",
            encoder="cell_mlp",
            encoder_width=256,
            # Chosen on a 540-cell validation slice (--val-fraction 0.25): validation unbiased
            # MMD^2 0.0066 +- 0.0020 over 8 sampling seeds against 0.0106 +- 0.0019 uncentred
            # (the 20 most expressed genes no longer vary twice as much as in real cells), and
            # validation NLL 0.25812 against 0.25845.
            centred_statistic=True,
        ),
        TrainConfig(
            batch_size=32,
            max_steps=2000,
            peak_lr=2e-3,
            min_lr=2e-4,
            warmup_steps=20,
            checkpoint_every=250,
            loss_weighting="masked_mean",
            gene_lr_scale=0.05,
            readout_lr_scale=1.0,
            weight_decay=0.01,
            # Chosen on the demo split's validation slice with a state of 64 (unbiased MMD^2 of 540
            # generated cells against its 216 cells; plain unmasking 0.020): 8 / 12 / 16 / 24 / 32 components
            # 0.0085 / 0.0078 / 0.0073 / 0.011 / 0.012; 16 with 3% / 10% / 30% / all of the
            # genes drawn from the state 0.013 / 0.0073 / 0.0073 / 0.0087.
            state_prior_components=16,
            state_prior_first_fraction=0.1,
        ),
    ),
    "paper": Preset(
        ModelConfig(d_model=640, n_layers=13, n_heads=10, d_ff=2560, patch_size=8),
        TrainConfig(batch_size=256, peak_lr=2e-4, min_lr=2e-5, warmup_steps=1_000),
    ),
}


def get_preset(name: str) -> Preset:
    """Return the preset called ``name`` or raise a ``ValueError`` listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """Serialise a config dataclass to a JSON-friendly dict."""
    return asdict(config)


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build ``cls`` from a dict, ignoring keys that the class does not know (newer files)."""
    known = {f.name for f in fields(cls)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in known}
    return cls(**kwargs)


__all__ = [
    "ModelConfig",
    "TrainConfig",
    "Preset",
    "PRESETS",
    "get_preset",
    "config_to_dict",
    "config_from_dict",
    "replace",
]
