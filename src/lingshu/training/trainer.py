"""The optimisation loop: AdamW, warm-up + cosine LR, gradient clipping, EMA, checkpoints.

Every source of randomness at optimisation step k (which cells, which mask levels, which genes
are masked) is drawn from generators seeded by (seed, k), so a run resumed from a checkpoint at
step k continues bit-for-bit like the uninterrupted run on CPU.

Data-parallel training (``training.distributed``): every process draws the same global batch
and masks, works on its contiguous share of them, and DDP averages the gradients, so each update
equals the single-process update on the global batch (up to floating-point rounding).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from lingshu.config import TrainConfig
from lingshu.data.loader import AlignedCounts
from lingshu.data.tokenizer import encode_counts
from lingshu.model.diffusion import masked_loss_and_mask, sample_mask_levels
from lingshu.model.transformer import MaskPredictor
from lingshu.runtime import keep_freed_memory
from lingshu.training import distributed
from lingshu.training.ema import PowerEMA
from lingshu.training.schedule import learning_rate


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator for optimisation step ``step`` of a run seeded with ``seed``."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


# The tilted head's per-gene parameters (its own learning-rate scale, TrainConfig.readout_lr_scale).
READOUT_PARAMETERS = ("gene_readout", "gene_exponents")


def make_optimizer(model: MaskPredictor, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not on norm gains or the token prior,
    which would be pulled back towards uniform); fused on CUDA."""
    decay, no_decay, per_gene, readouts = [], [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name in READOUT_PARAMETERS:
            readouts.append(parameter)
        elif name.startswith("gene_"):
            per_gene.append(parameter)
        else:
            (decay if parameter.dim() >= 2 and name != "token_prior" else no_decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    readout_scale = config.gene_lr_scale if config.readout_lr_scale is None else config.readout_lr_scale
    for params, scale in ((per_gene, config.gene_lr_scale), (readouts, readout_scale)):
        if params:
            groups.append({"params": params, "weight_decay": config.weight_decay, "lr_scale": scale})
    return torch.optim.AdamW(
        groups,
        lr=config.peak_lr,
        betas=config.betas,
        fused=device.type == "cuda",
    )


@dataclass
class TrainingBatch:
    tokens: torch.Tensor
    observed: torch.Tensor
    conditions: torch.Tensor | None


def make_batch(
    counts: np.ndarray, observed: np.ndarray, conditions: np.ndarray | None, device
) -> TrainingBatch:
    """Tokenise a dense count block and move it to ``device``."""
    return TrainingBatch(
        tokens=torch.from_numpy(encode_counts(counts)).to(device),
        observed=torch.from_numpy(observed).to(device),
        conditions=None if conditions is None else torch.from_numpy(conditions).long().to(device),
    )


class DiffusionLoss(nn.Module):
    """The training loss as one module call, which is what DDP and torch.compile wrap."""

    def __init__(self, model: MaskPredictor, scored_genes: int = 0, masked_mean: bool = False):
        super().__init__()
        self.model = model
        self.scored_genes = scored_genes
        self.masked_mean = masked_mean

    def forward(
        self,
        tokens: torch.Tensor,
        observed: torch.Tensor,
        conditions: torch.Tensor | None,
        t: torch.Tensor,
        draws: torch.Tensor,
    ) -> torch.Tensor:
        """The masked diffusion loss of the cells for masks fixed by ``t`` and ``draws``."""
        return masked_loss_and_mask(
            self.model, tokens, observed, conditions, t, draws, self.scored_genes, self.masked_mean
        )[0]


class Trainer:
    """Owns the model, its EMA and the optimizer; ``run`` trains up to ``last_step``.

    Inside a torch.distributed process group the loss is wrapped in DDP and each rank trains
    on its share of every global batch. ``self.model`` stays the plain module (checkpoints
    and the EMA use its parameter names); DDP and torch.compile only wrap ``self.loss``.
    """

    def __init__(self, model: MaskPredictor, config: TrainConfig, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).train()
        self.model.gradient_checkpointing = config.activation_checkpointing
        self.config = config
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        distributed.check_batch_size(config.batch_size, self.world_size)
        self.ema = PowerEMA(self.model, config.ema_sigma_rel)
        self.optimizer = make_optimizer(self.model, config, self.device)
        loss: nn.Module = DiffusionLoss(
            self.model, config.scored_genes, config.loss_weighting == "masked_mean"
        )
        self.ddp: DistributedDataParallel | None = None
        if self.world_size > 1:
            loss = self.ddp = DistributedDataParallel(
                loss, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.loss = torch.compile(loss) if config.compile else loss
        self.step = 0
        self.log: list[dict] = []
        # Validation curve points (step, training seconds, NLL per gene) and the best EMA
        # weights so far; training seconds exclude the evaluations themselves.
        self.validation_log: list[dict] = []
        self.best_state: dict | None = None
        self.train_seconds = 0.0

    def autocast(self):
        """bf16 autocast on CUDA by default (``precision='auto'``), or as configured."""
        precision = self.config.precision
        if precision == "bf16" or (precision == "auto" and self.device.type == "cuda"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, batch: TrainingBatch, generator: torch.Generator) -> float:
        """One optimisation step over a global batch, accumulated over micro-batches.

        ``batch`` holds this rank's share of the global batch (all of it in a single process).
        Returns the loss averaged over the global batch.
        """
        config = self.config
        lr = learning_rate(self.step, config.peak_lr, config.min_lr, config.warmup_steps, config.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        local, n_genes = batch.tokens.shape
        size = local * self.world_size
        micro = config.micro_batch_size or local
        self.optimizer.zero_grad(set_to_none=True)
        # Mask levels and mask draws for the whole global batch first, so that gradient
        # accumulation over micro-batches and ranks sees exactly the masks of one big batch;
        # then this rank's contiguous share of them.
        mine = distributed.shard(size, self.rank, self.world_size)
        t = sample_mask_levels(size, config.t_min, generator, self.device)[mine]
        draws = torch.rand((size, n_genes), generator=generator)[mine].to(self.device)
        starts = range(0, local, micro)
        total = 0.0
        for start in starts:
            part = slice(start, start + micro)
            # Gradients are all-reduced once, in the backward pass of the last micro-batch.
            last = start == starts[-1]
            with contextlib.nullcontext() if self.ddp is None or last else self.ddp.no_sync():
                with self.autocast():
                    loss = self.loss(
                        batch.tokens[part],
                        batch.observed if batch.observed.dim() == 1 else batch.observed[part],
                        None if batch.conditions is None else batch.conditions[part],
                        t[part],
                        draws[part],
                    )
                # Weights give this rank's mean; DDP's average over equal shares is the global mean.
                weight = batch.tokens[part].shape[0] / local
                (loss * weight).backward()
            total += float(loss.detach()) * weight
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        return distributed.mean_over_ranks(total, self.device)

    def validate(self, validation: Callable[[MaskPredictor], float]) -> float:
        """Score the EMA weights (what sampling uses) with ``validation``, log the point and
        keep the weights when they are the best so far."""
        nll = validation(self.ema.model)
        best = min((r["val_nll"] for r in self.validation_log), default=float("inf"))
        self.validation_log.append({"step": self.step, "train_seconds": self.train_seconds, "val_nll": nll})
        if nll < best:
            self.best_state = {k: v.detach().clone() for k, v in self.ema.model.state_dict().items()}
        return nll

    def run(
        self,
        data: AlignedCounts,
        conditions: np.ndarray | None = None,
        on_checkpoint: Callable[[Trainer], None] | None = None,
        progress: bool = True,
        validation: Callable[[MaskPredictor], float] | None = None,
    ) -> None:
        """Train from ``self.step`` to ``config.last_step``, calling ``on_checkpoint`` periodically
        (on rank 0 only; progress bars also show on rank 0 only). ``validation`` scores the
        EMA weights every ``val_every`` steps (rank 0; see :meth:`validate`)."""
        config = self.config
        if self.step >= config.last_step:
            return
        keep_freed_memory()  # every step allocates the same big tensors: reuse their pages
        batches = data.iter_batches(
            config.batch_size,
            config.seed,
            start_step=self.step,
            shard=distributed.shard(config.batch_size, self.rank, self.world_size),
        )
        bar = tqdm(
            total=config.last_step,
            initial=self.step,
            disable=not progress or self.rank != 0,
            desc="training",
            unit="step",
            dynamic_ncols=True,
        )
        started, cells = time.perf_counter(), 0
        val_every = config.val_every or config.checkpoint_every
        postfix: dict[str, str] = {}
        for step, indices, counts in batches:
            if step >= config.last_step:
                break
            step_started = time.perf_counter()
            batch = make_batch(
                counts,
                data.observed_of(indices),
                None if conditions is None else conditions[indices],
                self.device,
            )
            loss = self.train_step(batch, step_generator(config.seed, step))
            self.train_seconds += time.perf_counter() - step_started
            cells += len(indices) * self.world_size
            rate = cells / max(time.perf_counter() - started, 1e-9)
            bar.update(1)
            postfix.update(loss=f"{loss:.4f}", cells_per_s=f"{rate:.1f}")
            if validation is not None and self.rank == 0:
                if self.step % val_every == 0 or self.step == config.last_step:
                    postfix["val_nll"] = f"{self.validate(validation):.5f}"
            bar.set_postfix(postfix)
            if self.step % config.log_every == 0 or self.step == config.last_step:
                self.log.append(
                    {
                        "step": self.step,
                        "loss": loss,
                        "cells_per_s": rate,
                        "lr": self.optimizer.param_groups[0]["lr"],
                    }
                )
            due = self.step % config.checkpoint_every == 0 or self.step == config.last_step
            if on_checkpoint and self.rank == 0 and due:
                on_checkpoint(self)
        bar.close()
