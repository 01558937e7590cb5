import numpy as np
import pytest
import scipy.sparse as sp
import torch

from lingshu.inference.generate import generate
from lingshu.training.checkpoint import load_checkpoint
from lingshu.training.run import train


@pytest.fixture
def checkpoint(tmp_path, counts_adata):
    train(
        counts_adata,
        tmp_path / "ckpt",
        preset="tiny",
        train_overrides={"max_steps": 4, "batch_size": 8},
        progress=False,
    )
    return tmp_path / "ckpt"


def test_generated_cells_are_integer_counts_with_model_genes_and_provenance(checkpoint, counts_adata):
    cells = generate(checkpoint, n_cells=5, n_steps=4, seed=1, batch_size=2, progress=False)
    vocabulary = load_checkpoint(checkpoint).vocabulary
    assert cells.shape == (5, len(vocabulary))
    assert sp.issparse(cells.X) and cells.X.dtype == np.int32
    assert cells.X.min() >= 0
    assert list(cells.var_names) == vocabulary.genes
    assert set(vocabulary.genes) <= set(counts_adata.var_names)
    provenance = cells.uns["lingshu"]
    assert provenance["n_steps"] == 4 and provenance["seed"] == 1 and provenance["checkpoint_step"] == 4


def test_generation_is_reproducible_under_a_seed(checkpoint):
    a = generate(checkpoint, n_cells=4, n_steps=3, seed=3, progress=False)
    b = generate(checkpoint, n_cells=4, n_steps=3, seed=3, progress=False)
    c = generate(checkpoint, n_cells=4, n_steps=3, seed=4, progress=False)
    assert (a.X != b.X).nnz == 0
    assert (a.X != c.X).nnz > 0


def test_bad_arguments_are_rejected(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="n_cells"):
        generate(checkpoint, n_cells=0)
    with pytest.raises(FileNotFoundError, match="not a lingshu checkpoint"):
        generate(tmp_path, n_cells=1)


def test_cell_type_conditional_generation(tmp_path, counts_adata):
    train(
        counts_adata,
        tmp_path / "cond",
        preset="tiny",
        train_overrides={"max_steps": 3, "batch_size": 8},
        progress=False,
        condition_keys={"source": "cell_type"},
    )
    fixed = generate(
        tmp_path / "cond", n_cells=4, n_steps=2, conditions={"cell_type": "type1"}, progress=False
    )
    assert list(fixed.obs["cell_type"]) == ["type1"] * 4
    drawn = generate(tmp_path / "cond", n_cells=200, n_steps=1, progress=False)
    observed = counts_adata.obs["cell_type"].value_counts(normalize=True)
    generated = drawn.obs["cell_type"].value_counts(normalize=True)
    assert set(generated.index) == set(observed.index)
    assert (generated - observed).abs().max() < 0.12  # drawn in training proportions
    with pytest.raises(ValueError, match="nearest known"):
        generate(tmp_path / "cond", n_cells=1, n_steps=1, conditions={"cell_type": "typ1"}, progress=False)


def test_unconditional_model_rejects_conditions(checkpoint):
    with pytest.raises(ValueError, match="without conditions"):
        generate(checkpoint, n_cells=1, n_steps=1, conditions={"cell_type": "B"}, progress=False)


def test_a_briefly_trained_cell_type_model_generates_each_type_with_its_own_profile(tmp_path):
    """The context prior gives each cell type its own marginals from the first step: after three
    training steps (far too few to learn them), each generated type's mean profile is closer to
    its own real type than to the others."""
    from tests.conftest import make_counts_adata

    adata = make_counts_adata(n_cells=300, n_genes=40, n_types=3, seed=1)
    train(
        adata,
        tmp_path / "cond",
        preset="tiny",
        train_overrides={"max_steps": 3, "batch_size": 8},
        progress=False,
        condition_keys={"source": "cell_type"},
    )
    assert load_checkpoint(tmp_path / "cond").model_config.n_contexts == 3
    counts = adata.X.toarray()
    real = {t: np.log1p(counts[adata.obs["cell_type"] == t].mean(0)) for t in ("type0", "type1", "type2")}
    for cell_type in real:
        cells = generate(
            tmp_path / "cond", n_cells=150, n_steps=2, conditions={"cell_type": cell_type}, progress=False
        )
        generated = np.log1p(cells[:, adata.var_names].X.toarray().mean(0))
        distances = {t: np.abs(generated - profile).mean() for t, profile in real.items()}
        assert min(distances, key=distances.get) == cell_type, distances


def test_drawn_slots_follow_the_asked_labels_else_their_context_else_every_cell():
    import pandas as pd

    from lingshu.data.conditions import ConditionMap
    from lingshu.inference.generate import draw_slots

    obs = pd.DataFrame(
        {
            "line": ["A", "A", "A", "B", "B"],
            "gene": ["control", "KO1", "KO1", "control", "KO2"],
            "depth": ["1/2", "2/2", "2/2", "1/2", "1/2"],
        }
    )
    keys = {"source": "line", "perturbation": "gene", "depth": "depth"}
    cmap = ConditionMap.from_obs(obs, keys, control_label="control")
    rng = np.random.default_rng(0)
    seen = draw_slots(cmap, ["A", "KO1", None], 50, rng)
    assert set(seen["depth"]) == {"2/2"} and set(seen["gene"]) == {"KO1"}
    unseen_here = draw_slots(cmap, ["B", "KO1", None], 50, rng)  # KO1 never seen in line B
    assert set(unseen_here["depth"]) == {"1/2"}
    assert draw_slots(cmap, ["A", "KO2", None], 200, rng)["depth"].value_counts()["2/2"] > 100


def test_network_off_samples_the_priors_alone_whatever_the_networks_weights(tmp_path, counts_adata):
    overrides = {"head": "tilted", "value_embedding": True}
    source = train(
        counts_adata,
        tmp_path / "tilted",
        preset="tiny",
        train_overrides={"max_steps": 4, "batch_size": 8},
        model_overrides=overrides,
        progress=False,
    )
    moved = load_checkpoint(tmp_path / "tilted")
    moved.ema_state["model"] = {
        name: value + 0.5 * (name == "shared_readout") for name, value in moved.ema_state["model"].items()
    }
    off_a = generate(source, n_cells=6, n_steps=3, seed=2, progress=False, network=False)
    off_b = generate(moved, n_cells=6, n_steps=3, seed=2, progress=False, network=False)
    on_a = generate(source, n_cells=6, n_steps=3, seed=2, progress=False)
    on_b = generate(moved, n_cells=6, n_steps=3, seed=2, progress=False)
    assert (off_a.X != off_b.X).nnz == 0  # the network's weights do not enter
    assert (on_a.X != on_b.X).nnz > 0
    assert off_a.uns["lingshu"]["network"] == "off (priors alone)"


def test_a_cell_mlp_model_keeps_a_state_prior_that_generation_draws_from_first(tmp_path, counts_adata):
    from tests.conftest import make_counts_adata

    cells = make_counts_adata(n_cells=240, seed=2)  # 2 components need 200 cells
    source = train(
        cells,
        tmp_path / "mlp",
        preset="tiny",
        train_overrides={"max_steps": 4, "batch_size": 8, "state_prior_components": 2},
        model_overrides={"head": "tilted", "encoder": "cell_mlp", "encoder_width": 16},
        progress=False,
    )
    loaded = load_checkpoint(tmp_path / "mlp")
    assert source.state_prior is not None and loaded.state_prior is not None
    torch.testing.assert_close(loaded.state_prior.means, source.state_prior.means)
    assert loaded.state_prior.n_components == 2
    drawn = generate(loaded, n_cells=6, n_steps=3, seed=2, progress=False)
    again = generate(tmp_path / "mlp", n_cells=6, n_steps=3, seed=2, progress=False)
    plain = generate(loaded, n_cells=6, n_steps=3, seed=2, progress=False, state_prior=False)
    assert (drawn.X != again.X).nnz == 0
    assert (drawn.X != plain.X).nnz > 0
    assert drawn.uns["lingshu"]["state_prior"].startswith("drawn first (2 components")
    assert plain.uns["lingshu"]["state_prior"] == "none (plain unmasking)"
    # Without the setting (or with conditions), no state prior is fitted.
    train(
        counts_adata,
        tmp_path / "none",
        preset="tiny",
        train_overrides={"max_steps": 2, "batch_size": 8},
        model_overrides={"head": "tilted", "encoder": "cell_mlp", "encoder_width": 16},
        progress=False,
    )
    assert load_checkpoint(tmp_path / "none").state_prior is None
