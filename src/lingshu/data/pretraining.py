"""Pretraining corpora: the cells of several files a model may learn from before fine-tuning.

The PBMC recipe stacks (:mod:`lingshu.data.panels`) pbmc3k's training cells (its shipped cell
split's held-out cells stay out: the generation benchmark scores them) and the *control* cells of
Kang's three files. No stimulated Kang cell goes in: the Kang benchmark holds out stimulated cells,
and the files without cell-type labels may hold the held-out types' stimulated cells, so a single
one would leak the answer into the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np

from lingshu.data.io import read_counts
from lingshu.data.panels import stack_panels
from lingshu.data.paths import dataset_path
from lingshu.data.splits import apply_cell_split, load_split


@dataclass(frozen=True)
class CorpusPart:
    """One file's share of a corpus: a registered dataset, and which of its cells go in (the
    training side of ``split``, or the cells whose ``key`` column reads ``control``)."""

    dataset: str
    split: str | None = None
    key: str | None = None
    control: str | None = None

    def cells(self, adata: ad.AnnData) -> ad.AnnData:
        """The part's cells of ``adata``; a control label the column lacks is an error."""
        if self.split is not None:
            adata, _ = apply_cell_split(adata, load_split(self.split))
        if self.key is not None:
            if self.key not in adata.obs:
                raise ValueError(f"{self.dataset}: no obs[{self.key!r}] to pick the control cells by")
            labels = adata.obs[self.key].astype(str).to_numpy()
            if self.control not in set(labels):
                raise ValueError(
                    f"{self.dataset}: obs[{self.key!r}] has no {self.control!r} cells "
                    f"(labels: {', '.join(sorted(set(labels)))})"
                )
            adata = adata[labels == self.control]
        return adata.copy()


RECIPES: dict[str, tuple[CorpusPart, ...]] = {
    "pbmc": (
        CorpusPart("pbmc3k", split="pbmc3k_cells"),
        CorpusPart("kang2018", key="condition", control="control"),
        CorpusPart("kang2018_donors", key="condition", control="ctrl"),
        CorpusPart("kang2018_ctrl_stim", key="condition", control="CTRL"),
    )
}


def build_corpus(recipe: str, download: bool = False) -> ad.AnnData:
    """The stacked cells of a recipe (one gene panel per file, see :func:`stack_panels`)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    parts = {}
    for part in RECIPES[recipe]:
        cells = part.cells(read_counts(dataset_path(part.dataset, download=download)))
        parts[part.dataset] = cells
    corpus = stack_panels(parts)
    corpus.uns["lingshu_corpus"] = {
        "recipe": recipe,
        "parts": np.array(
            [f"{name}: {cells.n_obs} cells x {cells.n_vars} genes" for name, cells in parts.items()]
        ),
    }
    return corpus
