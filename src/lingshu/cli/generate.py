"""``lingshu generate``: sample new cells from a checkpoint into an .h5ad file."""

from __future__ import annotations

from pathlib import Path

import typer

from lingshu.cli import app
from lingshu.cli._common import parse_assignment, user_errors_as_messages
from lingshu.data.writing import write_h5ad_atomic
from lingshu.inference.generate import generate as generate_cells


@app.command("generate")
@user_errors_as_messages
def generate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint directory from `lingshu train`."),
    n_cells: int = typer.Option(..., "--n-cells", help="Number of cells to generate."),
    steps: int = typer.Option(256, "--steps", help="Unmasking steps (forward passes per batch; paper: 256)."),
    out: Path = typer.Option(..., "--out", help="Output .h5ad (integer counts, CSR)."),
    condition: list[str] = typer.Option(
        [],
        "--condition",
        help="KEY=LABEL for a conditional model, e.g. --condition cell_type=B "
        "(repeat for several conditions). Default: conditions drawn in training proportions.",
    ),
    guidance: float = typer.Option(
        0.0,
        "--guidance",
        help="Classifier-free guidance w against the control label (perturbation models only; "
        "0 = none, as for unconditional generation).",
    ),
    batch_size: int = typer.Option(128, "--batch-size", help="Cells generated together per forward pass."),
    raw_weights: bool = typer.Option(
        False, "--raw-weights", help="Sample with the raw instead of EMA weights."
    ),
    network_off: bool = typer.Option(
        False,
        "--network-off",
        help="Sample from the checkpoint's priors alone (its token tables; the network switched "
        "off): the 'priors alone' row to score beside the model.",
    ),
    state_prior: bool = typer.Option(
        True,
        "--state-prior/--plain-unmasking",
        help="Draw each cell's state first from the checkpoint's state prior, when it has one "
        "(cell_mlp models; fitted to the sampling weights' states of the training cells), or "
        "unmask from nothing (the ablation).",
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Global seed: same seed and checkpoint give the same cells."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Generate new cells (raw integer counts over the model's gene vocabulary)."""
    requested = dict(parse_assignment(item) for item in condition)
    adata = generate_cells(
        checkpoint,
        n_cells,
        n_steps=steps,
        seed=seed,
        batch_size=batch_size,
        device=device,
        use_ema=not raw_weights,
        progress=progress,
        conditions=requested or None,
        guidance=guidance,
        network=not network_off,
        state_prior=state_prior,
    )
    write_h5ad_atomic(adata, out)
    typer.echo(f"wrote {adata.n_obs:,} cells x {adata.n_vars:,} genes to {out} ({steps} steps)")
