import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lingshu.data.perturbation_splits import apply_perturbation_split, split_from_dict
from lingshu.evaluation.perturbation_baselines import (
    PERTURBATION_BASELINES,
    CellRequest,
    GroupStats,
    additive_shift,
    additive_shift_profile,
    control,
    perturbation_mean,
    real_half_split,
    requests_for,
)

N_GENES = 30
DEPTH = {"c1": 1.0, "c2": 1.0, "c3": 2.0}  # c3 is sequenced twice as deep
EFFECT = {"A": (slice(0, 5), 4.0), "B": (slice(5, 10), 0.25)}


def true_mean(context: str, pert: str) -> np.ndarray:
    """Contexts differ only in depth; A up-regulates genes 0-4, B down-regulates genes 5-9."""
    mean = np.full(N_GENES, 4.0) * DEPTH[context]
    for single in pert.split("+"):
        if single in EFFECT:
            genes, factor = EFFECT[single]
            mean[genes] *= factor
    return mean


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(0)
    groups = [(c, p) for c in ("c1", "c2", "c3") for p in ("control", "A", "B")] + [("c1", "A+B")]
    blocks, contexts, perts = [], [], []
    for context, pert in groups:
        mean = true_mean(context, pert)
        blocks.append(rng.negative_binomial(5, 5 / (5 + mean), size=(400, N_GENES)))
        contexts += [context] * 400
        perts += [pert] * 400
    obs = pd.DataFrame({"line": contexts, "pert": perts}, index=[f"cell{i}" for i in range(len(perts))])
    adata = ad.AnnData(
        X=sp.csr_matrix(np.vstack(blocks).astype(np.int32)),
        obs=obs,
        var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]),
    )
    split = split_from_dict(
        {
            "dataset": "toy",
            "context_key": "line",
            "perturbation_key": "pert",
            "control_label": "control",
            "held_out": [{"context": "c3", "perturbation": "A"}, {"context": "c1", "perturbation": "A+B"}],
        }
    )
    train, held = apply_perturbation_split(adata, split)
    return split, train, held


def predicted_mean(adata, context, pert):
    rows = (adata.obs["line"] == context).to_numpy() & (adata.obs["pert"] == pert).to_numpy()
    return np.asarray(adata.X[rows].mean(axis=0)).ravel()


@pytest.mark.parametrize("name", list(PERTURBATION_BASELINES))
def test_every_baseline_returns_integer_labelled_cells_sized_like_the_held_out(task, name):
    split, train, held = task
    requests = requests_for(held, split)
    assert requests == [CellRequest("c3", "A", 400), CellRequest("c1", "A+B", 400)]
    cells = PERTURBATION_BASELINES[name](train, split, requests, 0)
    assert cells.n_obs == 800 and list(cells.var_names) == list(train.var_names)
    assert np.issubdtype(cells.X.dtype, np.integer)
    assert cells.obs.groupby(["line", "pert"], observed=True).size().to_dict() == {
        ("c1", "A+B"): 400,
        ("c3", "A"): 400,
    }
    again = PERTURBATION_BASELINES[name](train, split, requests, 0)
    assert (cells.X != again.X).nnz == 0  # seeded


def test_additive_shift_recovers_depth_scaled_single_and_additive_double(task):
    split, train, held = task
    stats = GroupStats.of(train, split)
    # c3-A: A's shift seen in c1 and c2 (depth 1), scaled to c3's depth 2.
    profile = additive_shift_profile(CellRequest("c3", "A", 1), split, stats)
    np.testing.assert_allclose(profile, true_mean("c3", "A"), rtol=0.1, atol=0.3)
    # c1-(A+B): the two singles' shifts (seen in c1 itself) add up.
    profile = additive_shift_profile(CellRequest("c1", "A+B", 1), split, stats)
    np.testing.assert_allclose(profile, true_mean("c1", "A+B"), rtol=0.1, atol=0.3)
    # The sampled cells follow the profile.
    cells = additive_shift(train, split, requests_for(held, split), seed=1)
    np.testing.assert_allclose(predicted_mean(cells, "c3", "A"), true_mean("c3", "A"), rtol=0.15, atol=0.5)


def test_perturbation_mean_is_the_mean_of_the_contexts_perturbation_means(task):
    split, train, held = task
    cells = perturbation_mean(train, split, requests_for(held, split), seed=1)
    # c1's training perturbations are A and B (A+B is held out).
    expected = (true_mean("c1", "A") + true_mean("c1", "B")) / 2
    np.testing.assert_allclose(predicted_mean(cells, "c1", "A+B"), expected, rtol=0.15, atol=0.5)
    # Same profile for every perturbation of a context: c3 sees the mean of its own B only.
    np.testing.assert_allclose(predicted_mean(cells, "c3", "A"), true_mean("c3", "B"), rtol=0.15, atol=0.5)


def test_negative_binomial_baselines_are_overdispersed(task):
    split, train, held = task
    cells = additive_shift(train, split, [CellRequest("c3", "A", 2000)], seed=2)
    x = cells.X[:, :5].toarray().astype(float)  # mean ~32: Poisson would give var == mean
    assert (x.var(axis=0) > 2 * x.mean(axis=0)).all()


def test_control_resamples_the_contexts_own_control_cells(task):
    split, train, held = task
    cells = control(train, split, [CellRequest("c3", "A", 50)], seed=0)
    rows = (train.obs["line"] == "c3").to_numpy() & (train.obs["pert"] == "control").to_numpy()
    real_rows = {tuple(r) for r in train.X[rows].toarray()}
    assert all(tuple(r) in real_rows for r in cells.X.toarray())


def test_real_half_split_is_disjoint_and_balanced(task):
    split, _, held = task
    first, second = real_half_split(held, split, seed=0)
    assert first.n_obs == second.n_obs == 400
    assert not set(first.obs_names) & set(second.obs_names)
    assert first.obs.groupby("pert", observed=True).size().to_dict() == {"A": 200, "A+B": 200}
