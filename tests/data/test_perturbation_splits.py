import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lingshu.data.io import read_counts
from lingshu.data.paths import dataset_path
from lingshu.data.perturbation_splits import (
    apply_perturbation_split,
    load_perturbation_split,
    shipped_perturbation_splits,
    split_data_path,
    split_from_dict,
)

TASKS = ("kang2018", "norman2019", "papalexi2021")


def synthetic_adata() -> ad.AnnData:
    """Two contexts x {control, A, B}, 5 cells each, plus 3 unassigned cells."""
    contexts, perts = [], []
    for context in ("c1", "c2"):
        for pert in ("control", "A", "B"):
            contexts += [context] * 5
            perts += [pert] * 5
    contexts += ["c1"] * 3
    perts += ["unassigned"] * 3
    obs = pd.DataFrame({"line": contexts, "pert": perts, "extra": np.arange(len(perts))})
    obs.index = [f"cell{i}" for i in range(len(perts))]
    counts = sp.csr_matrix(np.ones((len(perts), 4), dtype=np.int32))
    return ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(4)]))


def split_record(**changes) -> dict:
    record = {
        "dataset": "toy",
        "context_key": "line",
        "perturbation_key": "pert",
        "control_label": "control",
        "drop_labels": ["unassigned"],
        "held_out": [{"context": "c2", "perturbation": "A"}, {"context": "c1", "perturbation": "B"}],
    }
    record.update(changes)
    return record


def test_apply_removes_held_out_pairs_and_drops_labels():
    train, held = apply_perturbation_split(synthetic_adata(), split_from_dict(split_record()))
    assert held.n_obs == 10 and train.n_obs == 20
    assert set(zip(held.obs["line"], held.obs["pert"], strict=True)) == {("c2", "A"), ("c1", "B")}
    assert "unassigned" not in set(train.obs["pert"])
    assert {"control", "A", "B"} <= set(train.obs["pert"])  # B seen in c2, A seen in c1
    assert "extra" in train.obs and "extra" in held.obs


def test_constant_context_is_written_when_the_column_is_missing():
    adata = synthetic_adata()
    del adata.obs["line"]
    record = split_record(
        context_key="cell_line", constant_context="X", held_out=[{"context": "X", "perturbation": "A"}]
    )
    train, held = apply_perturbation_split(adata, split_from_dict(record))
    assert set(train.obs["cell_line"]) == {"X"} and held.n_obs == 10


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"held_out": [{"context": "c9", "perturbation": "A"}]}, "unknown context 'c9'"),
        ({"held_out": [{"context": "c1", "perturbation": "Z"}]}, "unknown perturbation 'Z'"),
        ({"context_key": "nope"}, "context column 'nope'"),
        ({"perturbation_key": "nope"}, "perturbation column 'nope'"),
        ({"control_label": "ctrl"}, "control label 'ctrl'"),
        ({"held_out": [{"context": "c1", "perturbation": "unassigned"}]}, "unknown perturbation"),
    ],
)
def test_bad_splits_are_rejected_with_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        apply_perturbation_split(synthetic_adata(), split_from_dict(split_record(**changes)))


def test_pair_with_no_cells_is_rejected():
    adata = synthetic_adata()
    adata = adata[~((adata.obs["line"] == "c2") & (adata.obs["pert"] == "A"))].copy()
    with pytest.raises(ValueError, match=r"\('c2', 'A'\) has no cells"):
        apply_perturbation_split(adata, split_from_dict(split_record()))


def test_malformed_records_are_rejected():
    with pytest.raises(ValueError, match="lacks the field"):
        split_from_dict({"dataset": "x"})
    with pytest.raises(ValueError, match="twice"):
        split_from_dict(split_record(held_out=[{"context": "c1", "perturbation": "A"}] * 2))
    with pytest.raises(ValueError, match="control label"):
        split_from_dict(split_record(held_out=[{"context": "c1", "perturbation": "control"}]))


def test_user_split_file_round_trips(tmp_path):
    split = split_from_dict(split_record(rationale="mine"))
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(split.to_dict()))
    loaded = load_perturbation_split(path)
    assert loaded.held_out == split.held_out and loaded.rationale == "mine" and loaded.name == "mine"


def test_unknown_split_lists_shipped_ones():
    assert set(TASKS) <= set(shipped_perturbation_splits())
    with pytest.raises(FileNotFoundError, match="kang2018"):
        load_perturbation_split("nope")


@pytest.fixture(scope="module", params=TASKS)
def real_task(request):
    try:
        dataset_path(request.param, download=False)
    except FileNotFoundError as error:
        pytest.skip(f"real {request.param} data not found: {error}")
    split = load_perturbation_split(request.param)
    train, held = apply_perturbation_split(read_counts(split_data_path(split)), split)
    return split, train, held


def test_shipped_split_holds_out_exactly_its_pairs(real_task):
    split, train, held = real_task
    key = (split.context_key, split.perturbation_key)
    held_pairs = set(zip(*(held.obs[k].astype(str) for k in key), strict=True))
    train_pairs = set(zip(*(train.obs[k].astype(str) for k in key), strict=True))
    assert held_pairs == {(p.context, p.perturbation) for p in split.held_out}
    assert not held_pairs & train_pairs
    assert not set(split.drop_labels) & set(train.obs[split.perturbation_key])
    for context in split.contexts:  # every context keeps its controls in training
        assert (context, split.control_label) in train_pairs


def test_shipped_split_targets_are_learnable_where_the_task_says_so(real_task):
    split, train, held = real_task
    train_pairs = set(
        zip(train.obs[split.context_key].astype(str), train.obs[split.perturbation_key].astype(str))
    )
    if split.dataset == "kang2018":
        assert held.n_obs == 83 + 112 + 356 and len(split.held_out) == 3
        assert ("CD8T", "stimulated") in train_pairs  # the sibling type's response is learnable
    elif split.dataset == "norman2019":
        for pair in split.held_out:
            parts = pair.perturbation.split("+")
            if len(parts) == 1:  # the target is seen in other contexts
                assert {c for c, p in train_pairs if p == pair.perturbation} >= {"k562"}
            else:  # both singles of a double are seen in the same context
                assert all((pair.context, single) in train_pairs for single in parts)
        assert split.blocks == ["glioma lines (null effect)", "K562 doubles"]
    else:
        held_targets = {p.perturbation for p in split.held_out}
        assert {"JAK2", "IRF1"} <= held_targets
        assert not held_targets & {p for _, p in train_pairs}  # unseen entirely
        assert train.n_obs + held.n_obs == 20_729 - 4_537
