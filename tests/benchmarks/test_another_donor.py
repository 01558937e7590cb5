"""benchmarks/another_donor.py: another donor's PBMCs as a yardstick for generation distances."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lingshu.data.io import read_counts
from lingshu.data.paths import dataset_path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "another_donor.py"


@pytest.fixture(scope="module")
def script():
    for name in ("pbmc3k", "kang2018"):
        try:
            dataset_path(name, download=False)
        except FileNotFoundError as error:
            pytest.skip(f"real {name} data not found: {error}")
    spec = importlib.util.spec_from_file_location("another_donor", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_another_donors_cells_are_kang_controls_drawn_without_replacement(script):
    cells = script.another_donors_cells(300, seed=0)
    assert cells.n_obs == 300 and cells.obs_names.is_unique
    assert set(cells.obs["condition"].astype(str)) == {script.CONTROL_LABEL}
    assert (script.another_donors_cells(300, seed=0).obs_names == cells.obs_names).all()
    with pytest.raises(ValueError, match="control cells"):
        script.another_donors_cells(10**6, seed=0)


def test_same_donor_cells_score_near_zero_and_another_donors_far(script):
    """Two disjoint draws of pbmc3k cells are one distribution (unbiased MMD^2 near 0, iLISI
    high); Kang's control PBMCs (other donors, chemistry and lab) are far from both."""
    pbmc = read_counts(dataset_path("pbmc3k"))
    order = np.random.default_rng(0).permutation(pbmc.n_obs)
    held_out, same = pbmc[np.sort(order[:250])].copy(), pbmc[np.sort(order[250:500])].copy()
    table = script.score_against(
        held_out, {"same donor": same, "another donor": script.another_donors_cells(250, 0)}, seed=0
    ).set_index("cells")
    same_donor = table.loc["same donor", "mmd_unbiased"]
    assert same_donor < 0.005
    assert table.loc["same donor", "ilisi"] > 0.8
    assert table.loc["another donor", "mmd_unbiased"] > 20 * max(same_donor, 0.005)
    assert table.loc["another donor", "ilisi"] < 0.2
    assert table["n_genes"].nunique() == 1 and table["n_genes"].iloc[0] < pbmc.n_vars
