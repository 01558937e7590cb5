"""Training and sampling throughput on synthetic counts shaped like real data.

Counts are drawn from a negative binomial with log-normal gene means (sparse, heavy-tailed), so
the token distribution resembles real UMI data. Numbers are per device and always reported with
the device's name. MFU is given only where the device's peak is known or passed in.
"""

from __future__ import annotations

import platform
import resource
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from lingshu.config import ModelConfig, get_preset
from lingshu.data.tokenizer import encode_counts
from lingshu.model.diffusion import sample_tokens
from lingshu.model.transformer import MaskPredictor
from lingshu.training.trainer import Trainer, TrainingBatch, step_generator

# Dense bf16 peak TFLOP/s of common accelerators (vendor figures, no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "A10": 125.0}


def synthetic_counts(n_cells: int, n_genes: int, seed: int = 0) -> np.ndarray:
    """Sparse, overdispersed counts: ~90% zeros, a few genes in the hundreds."""
    rng = np.random.default_rng(seed)
    means = rng.lognormal(mean=-2.5, sigma=1.8, size=n_genes)
    library = rng.lognormal(0, 0.4, size=(n_cells, 1))
    mu = means * library
    return rng.negative_binomial(1.5, 1.5 / (1.5 + mu)).astype(np.int32)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def device_peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    name = device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


@dataclass
class SpeedResult:
    device: str
    preset: str
    n_genes: int
    patch_size: int
    micro_batch: int
    parameters: int
    train_cells_per_s: float
    train_tokens_per_s: float
    flops_per_cell_train: float
    train_mfu: float | None
    sample_steps: int
    sample_cells_per_s: float
    sample_mfu: float | None
    cfg_steps: int
    cfg_cells_per_s: float
    peak_device_memory_gb: float | None
    peak_host_ram_gb: float
    timed_train_steps: int
    timed_sample_steps: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_sampling(model, batch, steps, timed_steps, device, guidance: bool) -> float:
    """Seconds per cell for ``steps`` unmasking steps, measured over ``timed_steps`` of them.

    The cost of a step does not depend on which step it is (every step runs the full sequence),
    so timing the first ``timed_steps`` steps of an N-step schedule and scaling by N/timed_steps
    is exact up to the (cheap) sampling of revealed positions.
    """
    generator = torch.Generator().manual_seed(0)
    n_cond = model.config.n_condition_slots
    cond = torch.zeros(batch, n_cond, dtype=torch.long, device=device) if n_cond else None
    ctrl = torch.ones_like(cond) if (guidance and cond is not None) else None
    sample_tokens(model, batch, 1, generator, cond, ctrl, 2.0 if ctrl is not None else 0.0, device=device)
    _sync(device)
    start = time.perf_counter()
    sample_tokens(
        model, batch, timed_steps, generator, cond, ctrl, 2.0 if ctrl is not None else 0.0, device=device
    )
    _sync(device)
    return (time.perf_counter() - start) * steps / timed_steps / batch


def benchmark_config(preset: str, n_genes: int, patch_size: int | None) -> ModelConfig:
    """The preset's architecture over ``n_genes`` genes with a source and a perturbation token."""
    return replace(
        get_preset(preset).model,
        n_genes=n_genes,
        n_condition_tokens=2,
        n_condition_slots=2,
        **({} if patch_size is None else {"patch_size": patch_size}),
    )


def training_setup(
    preset: str, config: ModelConfig, micro: int, dev: torch.device
) -> tuple[Trainer, TrainingBatch]:
    """A fresh model, its trainer and one synthetic batch of ``micro`` cells on ``dev``."""
    torch.manual_seed(0)
    trainer = Trainer(
        MaskPredictor(config), replace(get_preset(preset).train, batch_size=micro, max_steps=10_000), dev
    )
    batch = TrainingBatch(
        tokens=torch.from_numpy(encode_counts(synthetic_counts(micro, config.n_genes))).to(dev),
        observed=torch.ones(config.n_genes, dtype=torch.bool, device=dev),
        conditions=torch.zeros(micro, 2, dtype=torch.long, device=dev),
    )
    return trainer, batch


def run_speed_benchmark(
    preset: str = "paper",
    n_genes: int = 18_080,
    patch_size: int | None = None,
    micro_batches: tuple[int, ...] = (8,),
    device: str = "cpu",
    train_steps: int = 3,
    sample_steps: int = 256,
    timed_sample_steps: int = 4,
    cfg_steps: int = 3,
    peak_tflops: float | None = None,
    autocast_bf16: bool | None = None,
) -> list[SpeedResult]:
    """Measure training and sampling throughput for each micro-batch size."""
    dev = torch.device(device)
    config = benchmark_config(preset, n_genes, patch_size)
    peak = device_peak_tflops(dev, peak_tflops)
    results = []
    for micro in micro_batches:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        trainer, batch = training_setup(preset, config, micro, dev)
        model = trainer.model
        trainer.train_step(batch, step_generator(0, 0))  # warm-up (allocations, kernels)
        _sync(dev)
        start = time.perf_counter()
        for step in range(train_steps):
            trainer.train_step(batch, step_generator(0, step + 1))
        _sync(dev)
        train_rate = micro * train_steps / (time.perf_counter() - start)
        flops_train = model.flops_per_cell(training=True)
        model.eval()
        per_cell = _time_sampling(
            model, micro, sample_steps, min(timed_sample_steps, sample_steps), dev, False
        )
        per_cell_cfg = _time_sampling(model, micro, cfg_steps, cfg_steps, dev, True)
        flops_sample = model.flops_per_cell(training=False, sampling_steps=sample_steps)
        results.append(
            SpeedResult(
                device=device_name(dev),
                preset=preset,
                n_genes=n_genes,
                patch_size=config.patch_size,
                micro_batch=micro,
                parameters=sum(p.numel() for p in model.parameters()),
                train_cells_per_s=train_rate,
                train_tokens_per_s=train_rate * n_genes,
                flops_per_cell_train=flops_train,
                train_mfu=None if peak is None else train_rate * flops_train / (peak * 1e12),
                sample_steps=sample_steps,
                sample_cells_per_s=1.0 / per_cell,
                sample_mfu=None if peak is None else flops_sample / per_cell / (peak * 1e12),
                cfg_steps=cfg_steps,
                cfg_cells_per_s=1.0 / per_cell_cfg,
                peak_device_memory_gb=(torch.cuda.max_memory_allocated(dev) / 2**30)
                if dev.type == "cuda"
                else None,
                peak_host_ram_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                timed_train_steps=train_steps,
                timed_sample_steps=min(timed_sample_steps, sample_steps),
            )
        )
        del trainer, model
    return results


def results_as_records(results: list[SpeedResult]) -> list[dict]:
    return [asdict(r) for r in results]
