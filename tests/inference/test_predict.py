import anndata as ad
import numpy as np
import pytest
import torch

from lingshu.data.conditions import ConditionMap
from lingshu.inference.predict import Request, predict, read_requests
from lingshu.model.diffusion import sample_tokens
from lingshu.training.checkpoint import load_checkpoint
from lingshu.training.run import train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tests.conftest import make_perturbation_adata

    out = tmp_path_factory.mktemp("pert") / "ckpt"
    _train_perturbation_model(make_perturbation_adata(), out, max_steps=4, batch_size=16)
    return out


def _train_perturbation_model(adata, out, max_steps: int, batch_size: int, depth_bins: int = 0) -> None:
    """A tiny model conditioned on the cell line and the perturbation (control label 'control')."""
    train(
        adata,
        out,
        preset="tiny",
        train_overrides={"max_steps": max_steps, "batch_size": batch_size},
        progress=False,
        condition_keys={"source": "cell_line", "perturbation": "perturbation"},
        control_label="control",
        depth_bins=depth_bins,
    )


def test_checkpoint_keeps_label_maps_capped_controls_and_the_prior(checkpoint):
    source = load_checkpoint(checkpoint)
    cmap = ConditionMap.from_dict(source.conditions)
    assert cmap.slot("perturbation").width == 2 and cmap.slot("perturbation").kind == "genetic"
    assert source.model_config.n_condition_slots == 2 and source.model_config.condition_widths == (1, 2)
    assert sorted(source.prior["down"]["KO1"]["ctxB"]) == ["DOWN1_a", "DOWN1_b", "KO1"]


def test_prediction_prefills_the_prior_and_records_what_it_did(checkpoint, tmp_path):
    cells = predict(
        checkpoint, [Request("ctxA", "KO1", 6), Request("ctxB", "KO1+KO2", 4)], seed=0, progress=False
    )
    assert cells.shape[0] == 10 and cells.X.dtype == np.int32
    assert list(cells.obs["perturbation"]) == ["KO1"] * 6 + ["KO1+KO2"] * 4
    assert list(cells.obs["cell_line"]) == ["ctxA"] * 6 + ["ctxB"] * 4
    first, second = cells.uns["lingshu"]["requests"]["0"], cells.uns["lingshu"]["requests"]["1"]
    # ctxA's prior comes from ctxB's evidence; a combination takes the union of its genes' priors.
    assert sorted(first["prior_genes"]) == ["DOWN1_a", "DOWN1_b", "KO1"]
    assert set(second["prior_genes"]) == {"DOWN1_a", "DOWN1_b", "DOWN2_a", "DOWN2_b", "KO1", "KO2"}
    assert first["seen_in_training"] and second["seen_in_training"]
    reordered = predict(checkpoint, [Request("ctxA", "KO2+KO1", 1)], progress=False)
    assert reordered.uns["lingshu"]["requests"]["0"]["seen_in_training"]
    genes = list(cells.var_names)
    prior_columns = [genes.index(g) for g in first["prior_genes"]]
    np.testing.assert_array_equal(cells.X[:6][:, prior_columns].toarray(), 1)  # count 1, never re-masked
    assert cells.uns["lingshu"]["guidance"] == 2.0 and cells.uns["lingshu"]["n_steps"] == 3
    cells.write_h5ad(tmp_path / "pred.h5ad")  # the provenance must be storable
    assert ad.read_h5ad(tmp_path / "pred.h5ad").uns["lingshu"]["requests"]["1"]["perturbation"] == "KO1+KO2"


def test_prior_off_guidance_and_seed_change_the_cells_as_asked(checkpoint):
    def run(**kwargs):
        return predict(checkpoint, [Request("ctxA", "KO2", 8)], progress=False, **kwargs).X.toarray()

    base = run(seed=1)
    np.testing.assert_array_equal(base, run(seed=1))
    assert not np.array_equal(base, run(seed=2))
    assert not np.array_equal(base, run(seed=1, guidance=0.0))
    no_prior = predict(checkpoint, [Request("ctxA", "KO2", 8)], use_prior=False, progress=False)
    assert len(no_prior.uns["lingshu"]["requests"]["0"]["prior_genes"]) == 0


def test_the_priors_alone_ignore_guidance_and_keep_the_prior_injection(checkpoint):
    def run(**kwargs):
        return predict(checkpoint, [Request("ctxA", "KO1", 8)], seed=3, progress=False, **kwargs)

    off = run(network=False)
    # With the network off guidance has nothing to amplify: w changes nothing.
    np.testing.assert_array_equal(off.X.toarray(), run(network=False, guidance=0.0).X.toarray())
    assert not np.array_equal(off.X.toarray(), run().X.toarray())
    assert off.uns["lingshu"]["network"] == "off (priors alone)"
    genes = list(off.var_names)
    columns = [genes.index(g) for g in off.uns["lingshu"]["requests"]["0"]["prior_genes"]]
    np.testing.assert_array_equal(off.X[:, columns].toarray(), 1)


def test_bad_requests_fail_before_anything_is_generated(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="'KO3' .*never seen in training.*nearest known: KO2, KO1; 3 known"):
        predict(checkpoint, [Request("ctxA", "KO1", 2), Request("ctxA", "KO3", 2)], progress=False)
    with pytest.raises(ValueError, match="cell_line 'ctxC'|source 'ctxC'"):
        predict(checkpoint, [Request("ctxC", "KO1", 2)], progress=False)
    with pytest.raises(ValueError, match="give a context"):
        predict(checkpoint, [Request(None, "KO1", 2)], progress=False)
    table = tmp_path / "requests.csv"
    table.write_text("context,perturbation,n_cells\nctxA,KO1,3\nctxB,control,\n")
    assert read_requests(table, 5) == [Request("ctxA", "KO1", 3), Request("ctxB", "control", 5)]
    (tmp_path / "bad.csv").write_text("context,target\nctxA,KO1\n")
    with pytest.raises(ValueError, match="needs a 'perturbation' column"):
        read_requests(tmp_path / "bad.csv", 5)


def test_guidance_zero_samples_exactly_the_conditional_model(checkpoint):
    model = load_checkpoint(checkpoint).build_model()
    cmap = ConditionMap.from_dict(load_checkpoint(checkpoint).conditions)
    conditions = torch.from_numpy(np.stack([cmap.encode_labels(["ctxA", "KO1"])] * 3))
    control = torch.from_numpy(np.stack([cmap.encode_labels(["ctxA", "control"])] * 3))
    plain = sample_tokens(model, 3, 4, torch.Generator().manual_seed(0), conditions=conditions)
    guided = sample_tokens(
        model, 3, 4, torch.Generator().manual_seed(0), conditions, control_conditions=control, guidance=0.0
    )
    torch.testing.assert_close(plain, guided, rtol=0, atol=0)


def test_unseen_targets_can_be_sampled_under_the_control_token_with_the_prior(checkpoint):
    cells = predict(
        checkpoint,
        [Request("ctxA", "NEWGENE", 3), Request("ctxB", "KO1+NEWGENE", 2)],
        unseen="control",
        progress=False,
    )
    first, second = cells.uns["lingshu"]["requests"]["0"], cells.uns["lingshu"]["requests"]["1"]
    assert list(first["unseen_genes"]) == ["NEWGENE"] and not first["average_shift"]
    assert first["conditioned_on"] == "control" and not first["seen_in_training"]
    assert second["conditioned_on"] == "KO1" and not second["seen_in_training"]
    assert list(cells.obs["perturbation"]) == ["NEWGENE"] * 3 + ["KO1+NEWGENE"] * 2
    # NEWGENE is not a measured gene, so only KO1's evidence from ctxA is pre-filled.
    assert sorted(second["prior_genes"]) == ["DOWN1_a", "DOWN1_b", "KO1"]


def test_an_unseen_target_can_take_the_contexts_average_perturbation_shift(tmp_path):
    """KO1 and KO2 each silence their own three genes, so the average perturbation of a context
    lowers all six; an unseen target asked for with ``unseen="average"`` gets that shift (the
    perturbation-mean answer) where ``"control"`` leaves them at the control level. Priors alone
    (one training step), no guidance, no injection, so only the shift prior differs."""
    from tests.conftest import make_perturbation_adata, train_one_step

    out = tmp_path / "one_step"
    train_one_step(
        make_perturbation_adata(), out, {"source": "cell_line", "perturbation": "perturbation"}, "control"
    )
    request = [Request("ctxA", "NEWGENE", 300)]
    means = {}
    for mode in ("control", "average"):
        cells = predict(out, request, guidance=0, use_prior=False, unseen=mode, progress=False)
        assert cells.uns["lingshu"]["requests"]["0"]["average_shift"] == (mode == "average")
        means[mode] = np.asarray(cells.X.mean(0)).ravel()
    genes = list(cells.var_names)
    silenced = [genes.index(g) for g in ("KO1", "KO2", "DOWN1_a", "DOWN1_b", "DOWN2_a", "DOWN2_b")]
    others = [i for i in range(len(genes)) if i not in silenced]
    # Each gene is silenced by one of the two perturbations: on average about halfway down.
    assert np.all(means["average"][silenced] < 0.8 * means["control"][silenced])
    assert np.all(means["average"][silenced] > 0.1 * means["control"][silenced])
    ratio = means["average"][others].sum() / means["control"][others].sum()
    assert 0.9 < ratio < 1.1
    with pytest.raises(ValueError, match="unseen must be one of"):
        predict(out, request, unseen="mean", progress=False)


def test_the_average_shift_needs_a_model_with_the_shift_prior(tmp_path):
    from tests.conftest import make_perturbation_adata

    out = tmp_path / "no_shift_prior"
    train(
        make_perturbation_adata(n_per_group=8),
        out,
        preset="tiny",
        model_overrides={"perturbation_prior": False},
        train_overrides={"max_steps": 1, "batch_size": 8},
        progress=False,
        condition_keys={"source": "cell_line", "perturbation": "perturbation"},
        control_label="control",
    )
    with pytest.raises(ValueError, match="needs a model with the perturbation shift prior"):
        predict(out, [Request("ctxA", "NEWGENE", 2)], unseen="average", progress=False)
    assert predict(out, [Request("ctxA", "NEWGENE", 2)], unseen="control", progress=False).n_obs == 2


def test_a_depth_model_predicts_each_cell_at_a_drawn_depth(tmp_path):
    """Depth bins with a perturbation condition: the bins' priors are measured on controls, each
    predicted cell gets a bin (its context's, for a pair never seen), and one training step (the
    priors alone) already makes the deepest bin's cells deeper than the shallowest's."""
    from lingshu.data.depth import DEPTH_KEY
    from tests.conftest import make_perturbation_adata

    adata = make_perturbation_adata(n_per_group=40)
    adata = adata[(adata.obs["perturbation"] != "KO1+KO2").to_numpy()].copy()
    out = tmp_path / "ckpt"
    _train_perturbation_model(adata, out, max_steps=1, batch_size=8, depth_bins=2)
    cells = predict(
        out, [Request("ctxA", "control", 300), Request("ctxB", "KO1+KO2", 20)], n_steps=2, progress=False
    )
    requests = cells.uns["lingshu"]["requests"]
    assert requests["0"]["seen_in_training"] and not requests["1"]["seen_in_training"]
    assert set(cells.obs[DEPTH_KEY]) == {"1/2", "2/2"}
    sizes = np.asarray(cells.X[:300].sum(1)).ravel()
    by_bin = {b: sizes[(cells.obs[DEPTH_KEY].to_numpy()[:300] == b)].mean() for b in ("1/2", "2/2")}
    assert by_bin["2/2"] > 1.1 * by_bin["1/2"], by_bin
