"""Fine-tuning from a pretrained checkpoint: genes aligned by symbol, new labels, real data."""

import numpy as np
import pytest
import torch

from lingshu.data.conditions import ConditionMap
from lingshu.data.io import read_counts
from lingshu.data.paths import dataset_path
from lingshu.training.run import train
from tests.conftest import make_counts_adata

# Training that leaves every weight where it started: what a fine-tuned model starts from.
FROZEN = {"max_steps": 1, "batch_size": 8, "peak_lr": 0.0, "min_lr": 0.0, "val_fraction": 0.0}
GENE_ROWS = ("gene_embedding", "gene_read_in", "gene_readout", "gene_exponents")


def _pretrained(tmp_path):
    """A cpu-preset model on GENE0..GENE39 with cell types type0..type2, a few steps trained."""
    adata = make_counts_adata(n_cells=96, n_genes=40, seed=1)
    return train(
        adata,
        tmp_path / "pretrained",
        preset="cpu",
        train_overrides={"max_steps": 6, "batch_size": 16, "val_fraction": 0.0},
        progress=False,
        condition_keys={"source": "cell_type"},
    )


def _new_file():
    """Another file: GENE20..GENE39 (in another order) plus NEW0..NEW9; type1, type2 and typeX."""
    adata = make_counts_adata(n_cells=80, n_genes=30, seed=2)
    adata.var_names = [f"GENE{j}" for j in range(39, 19, -1)] + [f"NEW{j}" for j in range(10)]
    labels = adata.obs["cell_type"].astype(str).replace({"type0": "typeX"})
    adata.obs["cell_type"] = labels.astype("category")
    return adata


def test_weights_follow_gene_symbols_and_labels_and_new_ones_start_fresh(tmp_path, capsys):
    pretrained = _pretrained(tmp_path)
    old = pretrained.build_model().state_dict()
    tuned = train(
        _new_file(),
        tmp_path / "tuned",
        preset="small",  # the schedule only: the architecture is the pretrained one's
        train_overrides=FROZEN,
        progress=False,
        condition_keys={"source": "cell_type"},
        init_from=tmp_path / "pretrained",
    )
    fresh = train(  # the same genes and labels, no pretraining
        _new_file(),
        tmp_path / "fresh",
        preset="cpu",
        train_overrides=FROZEN,
        progress=False,
        condition_keys={"source": "cell_type"},
        vocabulary=tuned.vocabulary,
    )
    assert tuned.model_config.encoder == "cell_mlp" and tuned.model_config.d_model == 128
    state, fresh_state = tuned.model_state, fresh.model_state
    genes = tuned.vocabulary.genes
    old_genes = pretrained.vocabulary.genes
    for name in GENE_ROWS:
        for i, gene in enumerate(genes):
            expected = old[name][old_genes.index(gene)] if gene in old_genes else fresh_state[name][i]
            torch.testing.assert_close(state[name][i], expected, rtol=0, atol=0)
    # Condition tokens by label: type1/type2 carry over, typeX is a fresh token.
    new_map, old_map = ConditionMap.from_dict(tuned.conditions), ConditionMap.from_dict(pretrained.conditions)
    new_labels, old_labels = new_map.slot("source").labels, old_map.slot("source").labels
    for i, label in enumerate(new_labels):
        row = state["condition_read_in.weight"][new_map.offsets[0] + i]
        expected = (
            old["condition_read_in.weight"][old_map.offsets[0] + old_labels.index(label)]
            if label in old_labels
            else fresh_state["condition_read_in.weight"][new_map.offsets[0] + i]
        )
        torch.testing.assert_close(row, expected, rtol=0, atol=0)
    # The shared network is the pretrained one; the priors are this file's.
    torch.testing.assert_close(state["cell_encoder.1.weight"], old["cell_encoder.1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(state["token_prior"], fresh_state["token_prior"], rtol=0, atol=0)
    # The pretrained genes this file does not measure stay in the model, unobserved.
    assert genes == old_genes + [f"NEW{j}" for j in range(10)]
    report = capsys.readouterr().out
    assert "init-from: 40 of this model's 50 genes carry the pretrained model's weights" in report
    assert "(10 genes this file adds start fresh)" in report
    assert "20 missing (treated as unobserved, not zero)" in report
    assert "condition 'source': 2 labels matched, 1 new tokens (typeX)" in report


def test_an_architecture_that_cannot_take_the_weights_is_a_clear_error(tmp_path):
    _pretrained(tmp_path)
    with pytest.raises(ValueError, match="architectures differ|is .* there"):
        train(
            _new_file(),
            tmp_path / "tuned",
            preset="cpu",
            model_overrides={"encoder_width": 64},
            train_overrides=FROZEN,
            progress=False,
            init_from=tmp_path / "pretrained",
        )
    with pytest.raises(ValueError, match="give one of them"):
        train(_new_file(), tmp_path / "pretrained", resume=True, init_from=tmp_path / "pretrained")
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        train(_new_file(), tmp_path / "other", init_from=tmp_path / "missing", progress=False)


def _kang_controls():
    try:
        path = dataset_path("kang2018", download=False)
    except FileNotFoundError as error:
        pytest.skip(f"real Kang data not found: {error}")
    adata = read_counts(path)
    return adata[adata.obs["condition"].astype(str) == "control"].copy()


def test_a_model_pretrained_on_pbmc3k_starts_below_a_fresh_one_on_kangs_controls(pbmc3k_path, tmp_path):
    """Real data, real gene symbols: pbmc3k (hg19, 10x v1) -> Kang's control PBMCs (another lab,
    another gene panel). The validation NLL before any fine-tuning step must already be lower
    than a fresh model's over the same genes (the same vocabulary: the pretrained one's)."""
    kang = _kang_controls()
    pbmc = read_counts(pbmc3k_path)
    train(
        pbmc,
        tmp_path / "pbmc",
        preset="cpu",
        train_overrides={"max_steps": 150, "val_fraction": 0.0, "state_prior_components": 0},
        progress=False,
    )
    start = {**FROZEN, "val_fraction": 0.2, "val_every": 1, "batch_size": 32}
    scores, vocabularies = {}, {}
    for name, init_from in (("tuned", tmp_path / "pbmc"), ("fresh", None)):
        run = train(
            kang,
            tmp_path / name,
            preset="cpu",
            train_overrides={**start, "state_prior_components": 0},
            progress=False,
            init_from=init_from,
            vocabulary=vocabularies.get("tuned"),
        )
        scores[name], vocabularies[name] = run.validation_log[0]["val_nll"], run.vocabulary
    assert vocabularies["fresh"].genes == vocabularies["tuned"].genes
    assert scores["tuned"] < scores["fresh"], scores
    assert np.isfinite(list(scores.values())).all()
