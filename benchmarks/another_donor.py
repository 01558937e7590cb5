"""How far are generated pbmc3k cells from the held-out cells, next to how far another donor's PBMCs are?

A yardstick for the generation benchmark's distances: the control PBMCs of Kang et al. 2018
(other donors, another lab, 10x v2 chemistry) scored against the pbmc3k held-out cells with the
same metric code, on the genes every input measures. A generator whose cells sit much closer to
the held-out cells than another donor's real cells do has its remaining gap inside the spread
between donors; one that sits farther is not yet a faithful pbmc3k generator.

    python benchmarks/another_donor.py --held-out demo_output/data/held_out.h5ad \\
        --train demo_output/data/train.h5ad \\
        --generated "lingshu=demo_output/generated.h5ad" --out benchmarks/results/another_donor.csv

Uses the package's public API only (as a user's script would).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from lingshu.data.paths import dataset_path
from lingshu.evaluation.baselines import independent_genes_by_group
from lingshu.evaluation.metrics import MetricContext, ilisi, mmd, mmd_unbiased_metric
from lingshu.evaluation.preprocess import preprocess

CONTROL_LABEL = "control"


def another_donors_cells(n_cells: int, seed: int) -> ad.AnnData:
    """``n_cells`` control PBMCs of Kang et al. 2018 drawn without replacement (registered
    dataset ``kang2018``, ``obs['condition'] == 'control'``)."""
    kang = ad.read_h5ad(dataset_path("kang2018"))
    controls = np.flatnonzero(kang.obs["condition"].astype(str).to_numpy() == CONTROL_LABEL)
    if len(controls) < n_cells:
        raise ValueError(f"kang2018 has {len(controls)} control cells, fewer than the {n_cells} asked for")
    chosen = np.sort(np.random.default_rng(seed).choice(controls, n_cells, replace=False))
    return kang[chosen].copy()


def score_against(held_out: ad.AnnData, others: dict[str, ad.AnnData], seed: int) -> pd.DataFrame:
    """MMD, unbiased MMD^2 and iLISI of each of ``others`` against ``held_out``, all on the genes
    every input measures (so each row is scored on the same genes)."""
    matrices, genes = preprocess({"held_out": held_out, **others}, detection_reference=["held_out"])
    rows = []
    for name in others:
        context = MetricContext(seed=seed)
        real, generated = matrices["held_out"], matrices[name]
        rows.append(
            {
                "cells": name,
                "n_genes": len(genes),
                "mmd": mmd(real, generated, context),
                "mmd_unbiased": mmd_unbiased_metric(real, generated, context),
                "ilisi": ilisi(real, generated, context),
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-out", required=True, type=Path, help="pbmc3k held-out cells (h5ad)")
    parser.add_argument("--train", required=True, type=Path, help="pbmc3k training cells (h5ad)")
    parser.add_argument(
        "--generated", action="append", default=[], help="NAME=PATH of generated cells (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the table here (csv)")
    args = parser.parse_args()

    held_out = ad.read_h5ad(args.held_out)
    n = held_out.n_obs
    rng = np.random.default_rng(args.seed)
    train = ad.read_h5ad(args.train)
    ceiling = train[np.sort(rng.choice(train.n_obs, n, replace=False))].copy()
    others = {"real ceiling: pbmc3k training cells": ceiling}
    for item in args.generated:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--generated takes NAME=PATH, got {item!r}")
        others[name] = ad.read_h5ad(path)
    if "cell_type" in train.obs:
        others["best baseline: independent_genes_by_group (labels)"] = independent_genes_by_group(
            train, n, seed=args.seed
        )
    others["another donor: Kang 2018 control PBMCs"] = another_donors_cells(n, args.seed)
    table = score_against(held_out, others, args.seed)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
