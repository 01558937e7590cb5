"""``lingshu predict``: cells for a context and a perturbation, without any ground truth."""

from __future__ import annotations

from pathlib import Path

import typer

from lingshu.cli import app
from lingshu.cli._common import user_errors_as_messages
from lingshu.data.writing import write_h5ad_atomic
from lingshu.inference.predict import Request, read_requests
from lingshu.inference.predict import predict as predict_cells


@app.command("predict")
@user_errors_as_messages
def predict(
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", help="Checkpoint from `lingshu train --perturbation-key ...`."
    ),
    context: str | None = typer.Option(
        None, "--context", help="Source context (cell line, cell type, donor), e.g. K562."
    ),
    perturbation: str | None = typer.Option(
        None,
        "--perturbation",
        help="Target gene, cytokine or control label; A+B for a combination of seen genes.",
    ),
    table: Path | None = typer.Option(
        None,
        "--table",
        help="CSV/TSV of many requests (columns: context, perturbation, optional n_cells) "
        "instead of --context/--perturbation.",
    ),
    n_cells: int = typer.Option(100, "--n-cells", help="Cells per request."),
    steps: int = typer.Option(3, "--steps", help="Unmasking steps (paper: 3 for conditional sampling)."),
    guidance: float | None = typer.Option(
        None,
        "--guidance",
        help="Classifier-free guidance w against the control (0 = none; default 2 genetic, 3 cytokine).",
    ),
    prior: bool | None = typer.Option(
        None,
        "--prior/--no-prior",
        help="Pre-fill genes the target down-regulates in other contexts (default: on for genetic).",
    ),
    unseen: str = typer.Option(
        "error",
        "--unseen",
        help="Perturbation genes the model has no token for: 'error' (default) refuses them; "
        "'control' leaves them out of the condition (the control label if none is left), so "
        "they enter only through the prior injection; 'average' does the same and adds, per "
        "such gene, the context's average perturbation shift (the shift prior's mean over "
        "every perturbation it saw).",
    ),
    out: Path = typer.Option(..., "--out", help="Output .h5ad (integer counts, CSR)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Cells sampled together per forward pass."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Global seed: same seed and checkpoint give the same cells."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Predict the cells of a perturbation in a context (no ground truth needed)."""
    if table is not None:
        if perturbation is not None or context is not None:
            raise ValueError("give either --table or --context/--perturbation, not both")
        requests = read_requests(table, n_cells)
    elif perturbation is None:
        raise ValueError("give --perturbation (and --context), or --table with many requests")
    else:
        requests = [Request(context, perturbation, n_cells)]
    adata = predict_cells(
        checkpoint,
        requests,
        n_steps=steps,
        guidance=guidance,
        use_prior=prior,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=progress,
        unseen=unseen,
    )
    write_h5ad_atomic(adata, out)
    settings = adata.uns["lingshu"]
    typer.echo(
        f"wrote {adata.n_obs:,} cells x {adata.n_vars:,} genes for {len(requests)} request(s) to {out} "
        f"({steps} steps, guidance w={settings['guidance']:g}, prior {'on' if settings['prior'] else 'off'})"
    )
