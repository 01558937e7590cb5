"""``lingshu train``: fit a model on raw counts and write a checkpoint directory."""

from __future__ import annotations

import functools
from pathlib import Path

import anndata as ad
import typer

from lingshu.cli import app
from lingshu.cli._common import user_errors_as_messages
from lingshu.config import PRESETS
from lingshu.data.io import read_counts
from lingshu.data.paths import resolve_data
from lingshu.data.splits import apply_cell_split, load_split
from lingshu.training import distributed
from lingshu.training.run import train as train_model
from lingshu.training.validation import DEFAULT_VAL_FRACTION

COMBINATION_RULES = {
    "log-means": {"combine_log_means": True, "combine_folds": False},
    "folds": {"combine_log_means": False, "combine_folds": True},
    "tilts": {"combine_log_means": False, "combine_folds": False},
}


def combination_settings(rule: str) -> dict[str, bool]:
    """The model settings of a --combination rule; an unknown rule fails, listing the known."""
    if rule not in COMBINATION_RULES:
        raise typer.BadParameter(
            f"unknown --combination {rule!r}; choose from {', '.join(COMBINATION_RULES)}"
        )
    return COMBINATION_RULES[rule]


@app.command("train")
@user_errors_as_messages
def train(
    data: str = typer.Argument(
        ...,
        help="Training .h5ad (raw integer UMI counts), a directory of .h5ad shards (read from disk, "
        "in file-name order) or a registered dataset name such as pbmc3k.",
    ),
    layer: str | None = typer.Option(None, "--layer", help="Layer holding raw counts (default: X)."),
    preset: str = typer.Option("cpu", "--preset", help=f"Model/training preset: {', '.join(PRESETS)}."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Optimisation steps (default: preset's)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch in cells (paper: 256)."),
    micro_batch_size: int | None = typer.Option(
        None,
        "--micro-batch-size",
        help="Cells per forward pass; gradients are accumulated up to "
        "--batch-size (use it when the batch does not fit in memory).",
    ),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default: preset's)."),
    activation_checkpointing: bool = typer.Option(
        False,
        "--activation-checkpointing",
        help="Recompute block activations in the backward pass: less GPU memory, ~30%% more "
        "compute, identical results.",
    ),
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="auto (bf16 autocast on GPU, fp32 on CPU), bf16 or fp32; weights stay fp32.",
    ),
    compile_model: bool = typer.Option(
        False,
        "--compile",
        help="torch.compile the model and loss: faster steps after a one-off compilation "
        "(needs a C++ compiler on CPU); same results up to floating-point rounding.",
    ),
    devices: int = typer.Option(
        1,
        "--devices",
        help="Data-parallel training processes started on this machine (one GPU each on CUDA; "
        "gloo on CPU). The global --batch-size is split evenly between them, so it must be a "
        "multiple of N. Under torchrun (--nproc_per_node N) leave this out.",
    ),
    patch_size: int | None = typer.Option(
        None, "--patch-size", help="Sequence-compression group size S (1 = none; paper: 8 or 32)."
    ),
    min_cells: int = typer.Option(
        1,
        "--min-cells",
        help="Gene vocabulary = genes detected in at least this many training cells.",
    ),
    holdout: Path | None = typer.Option(
        None, "--holdout", help="Split JSON file; its held-out cells are excluded from training."
    ),
    source_key: str | None = typer.Option(
        None,
        "--source-key",
        help="obs column of the source condition (cell type, cell line, donor): "
        "one condition token per label, prepended to each cell, for conditional generation.",
    ),
    perturbation_key: str | None = typer.Option(
        None,
        "--perturbation-key",
        help="obs column of the perturbation (target gene, cytokine or the control label); "
        "combinations written A+B get one token per gene.",
    ),
    control_label: str | None = typer.Option(
        None, "--control-label", help="The perturbation column's control label, e.g. non-targeting."
    ),
    control_fraction: float | None = typer.Option(
        None,
        "--control-fraction",
        help="Cap control cells at this fraction of the training cells (paper: 0.1; 1 keeps all).",
    ),
    perturbation_kind: str = typer.Option(
        "genetic",
        "--perturbation-kind",
        help="genetic or cytokine: sets the default guidance (2 or 3) and whether the prior is used.",
    ),
    depth_bins: int = typer.Option(
        0,
        "--depth-bins",
        help="Add a depth condition: each cell's library-size quantile bin (of N) within its "
        "source label, with a depth prior; generation draws bins in training proportions "
        "(0 = none). With --perturbation-key the bins' priors are measured on the controls.",
    ),
    depth_table_width: int | None = typer.Option(
        None,
        "--depth-table-width",
        help="With --depth-bins: each bin's own frequencies of counts below this (and of the tail "
        "above) start its distribution, on top of the depth tilt (default 32; 0 = the tilt alone).",
    ),
    poisson_tail: bool | None = typer.Option(
        None,
        "--poisson-tail/--no-poisson-tail",
        help="With --perturbation-key: let the shift prior raise a gene past its controls' highest "
        "count as a Poisson bump (default: on for --perturbation-kind cytokine, off for genetic).",
    ),
    combination: str = typer.Option(
        "log-means",
        "--combination",
        help="With --perturbation-key, how a combination A+B's shift is formed from its parts': "
        "'log-means' moves each gene's mean log1p(count) by the parts' summed shifts (default), "
        "'folds' its mean count by their summed log fold changes, 'tilts' adds their tilts.",
    ),
    val_fraction: float | None = typer.Option(
        None,
        "--val-fraction",
        help="Hold back this fraction of the training cells as a validation slice (never trained "
        "on): its masked NLL per gene at t = 0.5 is logged (validation.csv in the checkpoint) and "
        "the best-scoring weights are kept for sampling (default 0.1; with --resume, the "
        "checkpoint's; 0 = no slice).",
    ),
    val_every: int | None = typer.Option(
        None, "--val-every", help="Validation NLL every N steps (default: the checkpoint interval)."
    ),
    out: Path = typer.Option(Path("runs/model"), "--out", help="Checkpoint directory to write."),
    resume: bool = typer.Option(False, "--resume", help="Continue training the checkpoint in --out."),
    init_from: Path | None = typer.Option(
        None,
        "--init-from",
        help="Start from a pretrained checkpoint directory (fine-tuning): its architecture and "
        "weights, moved onto this file's genes by symbol and onto its labels (new labels get "
        "fresh tokens); the priors are measured on this file, the schedule is --preset's.",
    ),
    backed: bool = typer.Option(
        False,
        "--backed",
        help="Stream mini-batches from disk instead of loading the matrix into RAM.",
    ),
    state_prior_components: int | None = typer.Option(
        None,
        "--state-prior-components",
        help="Gaussians of the state prior fitted after training (cell_mlp models without "
        "conditions; generation draws each cell's state from it first). 0: none. Default: the "
        "preset's (cpu: 16; fewer with under 100 training cells per component).",
    ),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda if available)."),
    seed: int = typer.Option(0, "--seed", help="Global seed: same seed and data give the same model."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train a masked discrete diffusion model on whole-transcriptome raw counts."""
    path = resolve_data(data)
    load = functools.partial(read_training_data, path, layer, backed, holdout)
    main_process = distributed.env_rank() == 0  # under torchrun only rank 0 prints
    overrides = {
        "max_steps": max_steps,
        "batch_size": batch_size,
        "micro_batch_size": micro_batch_size,
        "peak_lr": lr,
        "seed": seed,
        "activation_checkpointing": activation_checkpointing or None,
        "max_control_fraction": control_fraction,
        "compile": compile_model or None,
        "precision": None if precision == "auto" else precision,
        "val_fraction": DEFAULT_VAL_FRACTION if val_fraction is None and not resume else val_fraction,
        "val_every": val_every,
        "state_prior_components": state_prior_components,
    }
    train_overrides = {k: v for k, v in overrides.items() if v is not None}
    model_overrides = {} if patch_size is None else {"patch_size": patch_size}
    if depth_table_width is not None:
        model_overrides["depth_table_width"] = depth_table_width
    if poisson_tail is not None:
        model_overrides["poisson_tail"] = poisson_tail
    model_overrides.update(combination_settings(combination))
    condition_keys = {"source": source_key} if source_key else {}
    if perturbation_key:
        condition_keys["perturbation"] = perturbation_key
    elif control_label:
        raise ValueError("--control-label needs --perturbation-key")
    if devices > 1 and distributed.env_world_size() == 1:
        # Every process reads the file itself (works for --backed too); rank 0 writes --out.
        typer.echo(f"training on {path} in {devices} processes")
        data_or_loader = load
    else:
        data_or_loader = load()
        if main_process:
            typer.echo(
                f"training on {data_or_loader.n_obs:,} cells x {data_or_loader.n_vars:,} genes from {path}"
            )
    result = train_model(
        data_or_loader,
        out,
        preset=preset,
        model_overrides=model_overrides,
        train_overrides=train_overrides,
        min_cells=min_cells,
        resume=resume,
        device=device,
        progress=progress,
        condition_keys=condition_keys,
        control_label=control_label,
        perturbation_kind=perturbation_kind,
        devices=devices,
        depth_bins=depth_bins,
        init_from=init_from,
    )
    last = result.log[-1] if result.log else {}
    if not main_process:
        return
    typer.echo(
        f"checkpoint written to {out} (step {result.step}, loss {last.get('loss', float('nan')):.4f}, "
        f"{last.get('cells_per_s', float('nan')):.1f} cells/s)"
    )
    best = result.best_validation
    if best is not None:
        typer.echo(
            f"validation NLL {best['val_nll']:.5f} nats/gene at step {int(best['step'])} "
            f"({best['train_seconds']:.0f} s of training): those weights are kept for sampling"
        )


def read_training_data(path: Path, layer: str | None, backed: bool, holdout: Path | None) -> ad.AnnData:
    """The training cells: the file (or shard directory) at ``path`` minus the held-out cells."""
    if holdout is not None and path.is_dir():
        raise ValueError("--holdout needs a single .h5ad file; leave the held-out cells out of the shards")
    adata = read_counts(path, layer=layer, backed=backed and holdout is None)
    if holdout is not None:
        adata, _ = apply_cell_split(adata, load_split(holdout))
    return adata
