"""The PBMC pretraining corpus, on the shared data: no held-out or stimulated cell goes in."""

import pytest

from lingshu.data.io import read_counts
from lingshu.data.panels import MEASURED_PREFIX, PANEL_KEY
from lingshu.data.paths import dataset_path
from lingshu.data.pretraining import RECIPES, build_corpus
from lingshu.data.splits import load_split


@pytest.fixture(scope="module")
def corpus():
    try:
        return build_corpus("pbmc")
    except FileNotFoundError as error:
        pytest.skip(f"real PBMC data not found: {error}")


def test_the_pbmc_corpus_holds_pbmc3k_training_cells_and_kang_controls_only(corpus):
    parts = {part.dataset: part for part in RECIPES["pbmc"]}
    panels = corpus.obs[PANEL_KEY].astype(str)
    held_out = set(load_split("pbmc3k_cells")["held_out_cells"])
    pbmc = [name.split(":", 1)[1] for name in corpus.obs_names[panels == "pbmc3k"]]
    assert len(pbmc) == 2700 - len(held_out) and not held_out & set(pbmc)
    for dataset in ("kang2018", "kang2018_donors", "kang2018_ctrl_stim"):
        source = read_counts(dataset_path(dataset, download=False))
        cells = [name.split(":", 1)[1] for name in corpus.obs_names[panels == dataset]]
        conditions = source.obs.loc[cells, "condition"].astype(str)
        # Every control cell of the file, and nothing else.
        assert set(conditions) == {parts[dataset].control}
        assert len(cells) == int((source.obs["condition"].astype(str) == parts[dataset].control).sum())
        assert corpus.var[MEASURED_PREFIX + dataset].sum() == source.n_vars


def test_an_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="unknown recipe 'mouse'; choose from pbmc"):
        build_corpus("mouse")
