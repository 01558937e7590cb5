"""Where the time of a training step goes, and which attention kernel SDPA picked.

``torch.profiler`` records one optimisation step (forward, backward, optimizer) after a warm-up;
the operators are ranked by their own time. The attention kernel is read from the recorded
operator names (flash, memory-efficient, cuDNN or the math fallback), so the report says what
actually ran rather than what was allowed.
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from lingshu.benchmarks.speed import benchmark_config, device_name, training_setup
from lingshu.training.trainer import step_generator

# Checked in this order: the CPU flash kernel's name also contains "_flash_attention".
ATTENTION_KERNELS = {
    "_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "_flash_attention": "flash",
    "_efficient_attention": "memory-efficient",
    "_cudnn_attention": "cuDNN",
    "_scaled_dot_product_attention_math": "math (unfused)",
}


def attention_kernel(op_names: list[str]) -> str:
    """The SDPA implementation that ran, from the profiler's operator names."""
    for fragment, name in ATTENTION_KERNELS.items():
        if any(fragment in op for op in op_names):
            return name
    return "none recorded"


def profile_training_step(
    preset: str = "paper",
    n_genes: int = 18_080,
    patch_size: int | None = None,
    micro: int = 8,
    device: str = "cpu",
    top: int = 12,
) -> dict:
    """Profile one training step; returns the device, the attention kernel and the top operators."""
    dev = torch.device(device)
    config = benchmark_config(preset, n_genes, patch_size)
    trainer, batch = training_setup(preset, config, micro, dev)
    trainer.train_step(batch, step_generator(0, 0))  # warm-up outside the profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as recorded:
        trainer.train_step(batch, step_generator(0, 1))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    events = recorded.key_averages()
    on_device = dev.type == "cuda"
    time_of = (lambda e: e.self_device_time_total) if on_device else (lambda e: e.self_cpu_time_total)
    total = sum(time_of(e) for e in events) or 1.0
    ranked = sorted(events, key=time_of, reverse=True)[:top]
    return {
        "device": device_name(dev),
        "preset": preset,
        "n_genes": n_genes,
        "patch_size": config.patch_size,
        "micro_batch": micro,
        "attention_kernel": attention_kernel([e.key for e in events]),
        "step_ms": total / 1e3,
        "top_ops": [
            {"op": e.key, "self_ms": time_of(e) / 1e3, "share": time_of(e) / total, "calls": e.count}
            for e in ranked
        ],
    }
