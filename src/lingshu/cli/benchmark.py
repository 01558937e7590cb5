"""``lingshu benchmark``: speed/memory of training and sampling (and quality benchmarks)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lingshu.cli import app
from lingshu.cli._common import user_errors_as_messages

if TYPE_CHECKING:  # pandas is imported by the benchmarks themselves, not at CLI start-up
    import pandas as pd

benchmark_app = typer.Typer(
    help="Benchmarks: speed and memory, generation and perturbation quality.", no_args_is_help=True
)
app.add_typer(benchmark_app, name="benchmark")


@benchmark_app.command("speed")
@user_errors_as_messages
def speed(
    preset: str = typer.Option("paper", "--preset", help="Model preset to time (tiny, small, paper)."),
    genes: int = typer.Option(18_080, "--genes", help="Number of genes per cell (paper: 18,080)."),
    patch: int | None = typer.Option(None, "--patch", help="Compression group size S (default: preset's)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    micro_batches: str = typer.Option("8", "--micro-batches", help="Comma-separated micro-batch sizes."),
    train_steps: int = typer.Option(3, "--train-steps", help="Timed optimisation steps per batch size."),
    sample_steps: int = typer.Option(
        256, "--sample-steps", help="Unmasking steps of unconditional sampling."
    ),
    timed_sample_steps: int = typer.Option(
        4,
        "--timed-sample-steps",
        help="Steps actually timed; cost per step is constant, so the result is scaled to --sample-steps.",
    ),
    peak_tflops: float | None = typer.Option(
        None, "--peak-tflops", help="Device peak TFLOP/s for MFU (known GPUs are looked up)."
    ),
    out: Path = typer.Option(Path("benchmarks/speed.json"), "--out", help="JSON file for the results."),
    profile: bool = typer.Option(
        False,
        "--profile",
        help="Also profile one training step at the first micro-batch size: the operators taking the "
        "time and the attention kernel SDPA ran (written to OUT with suffix .profile.json).",
    ),
) -> None:
    """Training cells/s, FLOPs, MFU, memory and sampling cells/s on synthetic counts."""
    from lingshu.benchmarks.speed import results_as_records, run_speed_benchmark

    sizes = tuple(int(s) for s in micro_batches.split(","))
    records = results_as_records(
        run_speed_benchmark(
            preset=preset,
            n_genes=genes,
            patch_size=patch,
            micro_batches=sizes,
            device=device,
            train_steps=train_steps,
            sample_steps=sample_steps,
            timed_sample_steps=timed_sample_steps,
            peak_tflops=peak_tflops,
        )
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1) + "\n")
    for r in records:
        mfu = "n/a" if r["train_mfu"] is None else f"{100 * r['train_mfu']:.1f}%"
        typer.echo(
            f"{r['device']} | {r['preset']} S={r['patch_size']} genes={r['n_genes']} "
            f"micro-batch={r['micro_batch']}: "
            f"train {r['train_cells_per_s']:.2f} cells/s (MFU {mfu}), "
            f"sample {r['sample_steps']} steps {r['sample_cells_per_s']:.3f} cells/s, "
            f"CFG {r['cfg_steps']} steps {r['cfg_cells_per_s']:.2f} cells/s, "
            f"host RAM {r['peak_host_ram_gb']:.2f} GB"
        )
    typer.echo(f"wrote {out}")
    if profile:
        from lingshu.benchmarks.profile import profile_training_step

        report = profile_training_step(preset, genes, patch, sizes[0], device)
        profile_path = out.with_suffix(".profile.json")
        profile_path.write_text(json.dumps(report, indent=1) + "\n")
        typer.echo(f"attention kernel: {report['attention_kernel']}; one step {report['step_ms']:.0f} ms:")
        for op in report["top_ops"]:
            typer.echo(f"  {op['share']:6.1%}  {op['self_ms']:9.1f} ms  {op['calls']:5d} calls  {op['op']}")
        typer.echo(f"wrote {profile_path}")


def run_over_seeds(
    seeds: list[int],
    out: Path,
    run_seed: Callable[[Path, int], pd.DataFrame],
    write_summary: Callable[[dict[int, pd.DataFrame], Path], object],
) -> None:
    """Run a benchmark once per seed into ``out/seed_<S>/`` (``run_seed`` returns its metrics
    table), write the summary over seeds with ``write_summary`` and print ``seeds.md``."""
    per_seed = {}
    for each in seeds:
        typer.echo(f"seed {each}: {out / f'seed_{each}'}")
        per_seed[each] = run_seed(out / f"seed_{each}", each)
    write_summary(per_seed, out)
    typer.echo((out / "seeds.md").read_text())
    typer.echo(f"report: {out / 'seeds.md'}")


@benchmark_app.command("generation")
@user_errors_as_messages
def generation(
    dataset: str = typer.Option("pbmc3k", "--dataset", help="Registered dataset name or .h5ad file."),
    split: str = typer.Option(
        "pbmc3k_cells", "--split", help="Cell split: a shipped split name or a JSON file."
    ),
    preset: str = typer.Option("cpu", "--preset", help="Preset of the label-free model."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Training steps (default: preset's)."),
    min_cells: int = typer.Option(
        10, "--min-cells", help="Vocabulary: genes detected in >= this many cells."
    ),
    steps: str = typer.Option(
        "16,32", "--steps", help="Comma-separated sampling step counts (quality-vs-steps table)."
    ),
    baselines: str = typer.Option(
        "independent_genes,independent_genes_by_group,celltype_poisson,celltype_negative_binomial,copy_training",
        "--baselines",
        help="Comma-separated baselines (add scvi with `pip install 'lingshu-cell[baselines]'`).",
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Reuse a trained checkpoint instead of training."
    ),
    out: Path = typer.Option(Path("runs/benchmark_generation"), "--out", help="Output directory."),
    seed: int = typer.Option(0, "--seed", help="Global seed."),
    seeds: str | None = typer.Option(
        None,
        "--seeds",
        help="Comma-separated seeds (e.g. 0,1,2): run the whole benchmark once per seed into "
        "<out>/seed_<S>/ (with --checkpoint, the same model each time) and write the mean, spread "
        "and the issue's goal per seed (seeds.md); overrides --seed.",
    ),
    conditional_key: str = typer.Option(
        "cell_type",
        "--conditional-key",
        help="Also train a second, conditional model on this obs column (cells generated in its "
        "training proportions), scored beside the label-free headline model; 'none' skips it.",
    ),
    conditional_preset: str = typer.Option(
        "cpu", "--conditional-preset", help="Preset of the conditional model."
    ),
    depth_bins: int = typer.Option(
        0,
        "--depth-bins",
        help="The conditional model's library-size bins per label (0 = none; see `lingshu train`).",
    ),
) -> None:
    """Train, generate and evaluate against held-out cells, the real ceiling and the baselines."""
    from lingshu.benchmarks.generation import run_generation_benchmark
    from lingshu.benchmarks.seeds import parse_seeds

    seed_list = parse_seeds(seeds) if seeds is not None else None
    options = {
        "dataset": dataset,
        "split": split,
        "preset": preset,
        "max_steps": max_steps,
        "min_cells": min_cells,
        "sampling_steps": [int(s) for s in steps.split(",")],
        "baselines": [b for b in baselines.split(",") if b],
        "checkpoint": checkpoint,
        "conditional_key": None if conditional_key.lower() == "none" else conditional_key,
        "conditional_preset": conditional_preset,
        "depth_bins": depth_bins,
    }
    if seed_list is not None:
        from lingshu.benchmarks.generation_seeds import write_seed_summary

        def run_seed(run_out: Path, run_seed: int) -> pd.DataFrame:
            return run_generation_benchmark(run_out, seed=run_seed, **options)

        run_over_seeds(seed_list, out, run_seed, write_seed_summary)
        return
    table = run_generation_benchmark(out, seed=seed, **options)
    typer.echo(table.to_string())
    typer.echo(f"report: {out / 'report' / 'report.md'}")


@benchmark_app.command("likelihood")
@user_errors_as_messages
def likelihood(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Trained checkpoint directory."),
    cells: Path = typer.Option(..., "--cells", help="Held-out cells (.h5ad of raw counts) to score."),
    train: Path | None = typer.Option(
        None,
        "--train",
        help="The training cells: fits the reference tables (global, per cell type, cell type x depth).",
    ),
    levels: str = typer.Option("0.1,0.5,0.9", "--levels", help="Comma-separated mask levels t in (0, 1]."),
    draws: int = typer.Option(3, "--draws", help="Mask draws per level (the same for every row)."),
    label_key: str = typer.Option(
        "cell_type", "--label-key", help="obs column of the cell types for the oracle tables ('none': skip)."
    ),
    depth_bins: int = typer.Option(8, "--depth-bins", help="Library-size bins per type for the depth table."),
    layer: str | None = typer.Option(None, "--layer", help="Read counts from this layer instead of X."),
    raw_weights: bool = typer.Option(
        False, "--raw-weights", help="Score the raw weights instead of the EMA."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the mask draws and the tables' validation slice."),
    out: Path = typer.Option(Path("runs/likelihood"), "--out", help="Output directory."),
) -> None:
    """Masked NLL of held-out cells at fixed mask levels: the model, its priors alone (network
    off) and lookup tables fitted on the training cells, on the same mask draws."""
    from lingshu.data.conditions import ConditionMap
    from lingshu.data.io import read_counts
    from lingshu.evaluation.likelihood import evaluate_likelihood, markdown_table
    from lingshu.training.checkpoint import load_checkpoint

    source = load_checkpoint(checkpoint)
    model = source.build_model(use_ema=not raw_weights)
    summary, raw = evaluate_likelihood(
        model,
        source.vocabulary,
        ConditionMap.from_dict(source.conditions),
        read_counts(cells, layer=layer),
        None if train is None else read_counts(train, layer=layer),
        label_key=None if label_key.lower() == "none" else label_key,
        depth_bins=depth_bins,
        levels=[float(t) for t in levels.split(",")],
        n_draws=draws,
        seed=seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / "likelihood.csv", index=False)
    raw.to_csv(out / "likelihood_draws.csv", index=False)
    gains = "the global per-gene table" if train is not None else "the priors alone (no --train)"
    text = (
        f"# Held-out masked likelihood\n\ncheckpoint `{checkpoint}`, cells `{cells}`, "
        f"{draws} mask draws per level (mean ± sd), gains in nats per cell over {gains}.\n\n"
        + markdown_table(summary)
        + "\n"
    )
    (out / "likelihood.md").write_text(text)
    typer.echo(text)
    typer.echo(f"report: {out / 'likelihood.md'}")


@benchmark_app.command("memory")
@user_errors_as_messages
def memory(
    cells: str = typer.Option(
        "20000,200000", "--cells", help="Comma-separated numbers of cells of the synthetic files."
    ),
    genes: int = typer.Option(2_000, "--genes", help="Genes per cell of the synthetic files."),
    modes: str = typer.Option(
        "backed,in_memory", "--modes", help="backed (stream from disk) and/or in_memory."
    ),
    max_steps: int = typer.Option(20, "--max-steps", help="Training steps per run."),
    preset: str = typer.Option("tiny", "--preset", help="Model preset to train."),
    work_dir: Path = typer.Option(
        Path("runs/benchmark_memory"), "--work-dir", help="Where the synthetic files and models go."
    ),
    out: Path = typer.Option(Path("benchmarks/memory.json"), "--out", help="JSON file for the results."),
) -> None:
    """Peak host RAM of training as the file grows: streamed from disk (--backed) vs in memory."""
    from lingshu.benchmarks.memory import results_as_records, run_memory_benchmark

    records = results_as_records(
        run_memory_benchmark(
            work_dir,
            cell_counts=tuple(int(c) for c in cells.split(",")),
            n_genes=genes,
            modes=tuple(m.strip() for m in modes.split(",")),
            max_steps=max_steps,
            preset=preset,
        )
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1))
    for r in records:
        loader = "" if r["loader_cells_per_s"] is None else f", loader {r['loader_cells_per_s']:,.0f} cells/s"
        typer.echo(
            f"{r['n_cells']:>9,} cells x {r['n_genes']:,} genes ({r['file_mb']:,.0f} MB) {r['mode']:>9}: "
            f"peak host RAM {r['peak_host_ram_gb']:.2f} GB, {r['train_wall_s']:.0f} s{loader}"
        )
    typer.echo(f"wrote {out}")


@benchmark_app.command("perturbation")
@user_errors_as_messages
def perturbation(
    task: str | None = typer.Option(
        None, "--task", help="Task: kang, norman or papalexi (the split shipped with the package)."
    ),
    split: Path | None = typer.Option(
        None,
        "--split",
        help="Your own split JSON file (same format as lingshu/splits/kang2018.json); overrides --task.",
    ),
    methods: str = typer.Option(
        "lingshu,control,perturbation_mean,additive_shift",
        "--methods",
        help="Comma-separated methods: lingshu (the model, trained on the split's training cells; "
        "its priors alone, the same checkpoint with the network off, always run beside it) and "
        "the baselines control, perturbation_mean, additive_shift.",
    ),
    preset: str | None = typer.Option(
        None,
        "--preset",
        help="The model's preset (tiny, small, cpu, paper; default cpu). With --pretrained only "
        "its training schedule counts (default: the pretrained model's own schedule).",
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", help="The model's training steps."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="The model's batch in cells."),
    control_fraction: float | None = typer.Option(
        None,
        "--control-fraction",
        help="Cap on the control cells' share of the model's training cells (default 0.1).",
    ),
    scored_genes: int | None = typer.Option(
        None,
        "--scored-genes",
        help="Score about N masked genes per cell in training (an unbiased subsample; 0 = every "
        "masked gene, the preset's default): faster steps for models with thousands of genes.",
    ),
    patch_size: int | None = typer.Option(
        None, "--patch-size", help="The model's compression S (paper: 32 for genetic perturbations)."
    ),
    depth_bins: int = typer.Option(
        0,
        "--depth-bins",
        help="Train the model with N depth bins per context (0 = none); predictions draw each "
        "cell's bin as its context's training cells show them.",
    ),
    sampling_steps: int = typer.Option(3, "--sampling-steps", help="Unmasking steps per prediction."),
    guidance: float | None = typer.Option(
        None,
        "--guidance",
        help="CFG w. Default: chosen with the prior injection and the training step on a "
        "validation block of training pairs held back like the held-out ones (w in 0, 1, 2, 3 at "
        "every checkpoint of the schedule; the sweep is in model_guidance_sweep.csv), else 2 "
        "genetic / 3 cytokine where the data offer no block. A given w trains the whole schedule.",
    ),
    prior: bool | None = typer.Option(
        None,
        "--prior/--no-prior",
        help="Prior injection (default: chosen with the guidance for genetic perturbations; "
        "never for cytokines).",
    ),
    unseen: str = typer.Option(
        "average",
        "--unseen",
        help="A held-out target the model has no token for: 'average' (the context's average "
        "perturbation shift plus the prior injection) or 'control' (the injection alone).",
    ),
    pretrained: Path | None = typer.Option(
        None,
        "--pretrained",
        help="A pretrained checkpoint (e.g. trained on `lingshu data pretraining-corpus`): the "
        "model runs twice, fine-tuned from it ('lingshu pretrained') and from scratch with the "
        "same architecture ('lingshu'), each beside its priors alone.",
    ),
    ablation: bool = typer.Option(
        False,
        "--ablation",
        help="Also run the model with w in 0..3, S in 1, 8, 32 (transformer presets), the prior "
        "injection off, and models without the shift prior and (with held-out doubles) with "
        "the parts' tilts summed instead of the log-mean rule (one factor at a time).",
    ),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda for the model."),
    out: Path | None = typer.Option(
        None, "--out", help="Output directory (default: runs/benchmark_perturbation/<task>)."
    ),
    seed: int = typer.Option(
        0,
        "--seed",
        help="Seed of the model's training and sampling, the baselines' draws and the half-split.",
    ),
    seeds: str | None = typer.Option(
        None,
        "--seeds",
        help="Comma-separated seeds (e.g. 0,1,2,3,4): run the whole benchmark once per seed into "
        "<out>/seed_<S>/ and write the mean, spread and goal per seed (seeds.md); overrides --seed.",
    ),
    threads: int = typer.Option(1, "--threads", help="Threads for cell-eval's differential expression."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw the figures (UMAP is the slow part)."),
) -> None:
    """Predict held-out (context, perturbation) pairs and score them with cell-eval beside the ceilings."""
    from lingshu.benchmarks.perturbation import TASKS, run_perturbation_benchmark

    if split is None and task is None:
        raise ValueError(f"give --task ({', '.join(TASKS)}) or --split FILE")
    if split is None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)} (or pass --split FILE)")
    chosen = split if split is not None else task
    out = out or Path("runs/benchmark_perturbation") / (Path(str(chosen)).stem if split is not None else task)
    from lingshu.benchmarks.perturbation import PERTURBATION_METHODS
    from lingshu.benchmarks.perturbation_model import (
        MODEL_METHOD,
        LingshuPredictor,
        ablation_methods,
        with_pretraining,
        with_priors_alone,
    )

    names = [m.strip() for m in methods.split(",") if m.strip()]
    for name in names:
        if name != MODEL_METHOD and name not in PERTURBATION_METHODS:
            raise ValueError(
                f"unknown methods ['{name}']; choose from {MODEL_METHOD}, {', '.join(PERTURBATION_METHODS)}"
            )
    from lingshu.inference.predict import UNSEEN_FALLBACKS

    if unseen not in UNSEEN_FALLBACKS:
        raise ValueError(f"--unseen must be one of {', '.join(UNSEEN_FALLBACKS)}, got {unseen!r}")
    if pretrained is not None and MODEL_METHOD not in names:
        raise ValueError(f"--pretrained needs the model among --methods ({MODEL_METHOD})")
    if control_fraction is not None and not 0 < control_fraction <= 1:
        raise ValueError(f"--control-fraction must be in (0, 1], got {control_fraction}")
    from lingshu.benchmarks.seeds import parse_seeds

    seed_list = parse_seeds(seeds) if seeds is not None else None
    from lingshu.benchmarks.perturbation import resolve_split
    from lingshu.evaluation.perturbation_baselines import COMBINATION_SEPARATOR

    has_combinations = any(COMBINATION_SEPARATOR in p.perturbation for p in resolve_split(chosen).held_out)

    def run_once(run_out: Path, run_seed: int):
        model = LingshuPredictor(
            model_dir=run_out / "model",
            preset=preset or "cpu",
            train_overrides={
                k: v
                for k, v in {
                    "max_steps": max_steps,
                    "batch_size": batch_size,
                    "max_control_fraction": control_fraction,
                    "scored_genes": scored_genes,
                }.items()
                if v is not None
            },
            model_overrides={"patch_size": patch_size} if patch_size else {},
            depth_bins=depth_bins,
            n_steps=sampling_steps,
            guidance=guidance,
            use_prior=prior,
            device=device,
            unseen=unseen,
        )
        models = {MODEL_METHOD: model}
        if pretrained is not None:
            models = with_pretraining(model, pretrained, run_out, own_schedule=preset is None)
        chosen_methods = {}
        for name in names:
            chosen_methods.update(models if name == MODEL_METHOD else {name: PERTURBATION_METHODS[name]})
        chosen_methods = with_priors_alone(chosen_methods)
        if ablation:
            chosen_methods.update(
                ablation_methods(run_out / "ablation_models", model, combinations=has_combinations)
            )
        return run_perturbation_benchmark(
            chosen,
            methods=chosen_methods,
            out_dir=run_out,
            seed=run_seed,
            num_threads=threads,
            plots=plots,
        )

    columns = ["method", "block", "mae", "pearson_delta", "overlap_at_N", "score_vs_perturbation_mean"]
    if seed_list is not None:
        from lingshu.benchmarks.perturbation_seeds import write_seed_summary

        run_over_seeds(
            seed_list, out, lambda run_out, each: run_once(run_out, each).metrics, write_seed_summary
        )
        return
    result = run_once(out, seed)
    typer.echo(result.metrics[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    typer.echo(f"report: {out / 'report.md'}")
