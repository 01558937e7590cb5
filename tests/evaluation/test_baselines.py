import sys

import numpy as np
import pytest
import scipy.sparse as sp

from lingshu.evaluation.baselines import (
    GENERATION_BASELINES,
    celltype_negative_binomial,
    celltype_poisson,
    copy_training,
    independent_genes,
    independent_genes_by_group,
    library_size_bins,
    negative_binomial_moments,
    run_baselines,
    scvi,
)

CHEAP = [
    "independent_genes",
    "independent_genes_by_group",
    "celltype_poisson",
    "celltype_negative_binomial",
    "copy_training",
]


@pytest.fixture(scope="module")
def train(counts_factory):
    return counts_factory(400, n_genes=80, seed=5)


@pytest.mark.parametrize("name", CHEAP)
def test_baselines_return_seeded_integer_cells_over_the_training_genes(train, name):
    baseline = GENERATION_BASELINES[name]
    a, b, c = baseline(train, 150, 0), baseline(train, 150, 0), baseline(train, 150, 1)
    assert a.shape == (150, train.n_vars)
    assert list(a.var_names) == list(train.var_names)
    assert sp.isspmatrix_csr(a.X) and np.issubdtype(a.X.dtype, np.integer)
    assert a.X.min() >= 0 and a.X.sum() > 0
    assert (a.X != b.X).nnz == 0, "same seed must give the same cells"
    assert (a.X != c.X).nnz > 0, "another seed must give other cells"
    assert a.uns["lingshu_baseline"]["name"] == name


def _dense(adata):
    return adata.X.toarray().astype(float)


def test_independent_genes_keeps_marginals_and_destroys_correlation(train):
    generated = _dense(independent_genes(train, 4000, 0))
    real = _dense(train)
    np.testing.assert_allclose(generated.mean(0), real.mean(0), rtol=0.15, atol=0.05)
    # zero fractions per gene match too
    np.testing.assert_allclose((generated == 0).mean(0), (real == 0).mean(0), atol=0.05)
    # the most correlated gene pair in training (markers of one type) becomes uncorrelated
    corr = np.nan_to_num(np.corrcoef(np.log1p(real).T))
    np.fill_diagonal(corr, 0)
    i, j = np.unravel_index(np.argmax(corr), corr.shape)
    assert corr[i, j] > 0.5
    assert abs(np.corrcoef(np.log1p(generated[:, i]), np.log1p(generated[:, j]))[0, 1]) < 0.1


def test_library_size_bins_are_equal_count_quantiles_within_each_type():
    library = np.array([50, 10, 40, 20, 30, 60, 7, 5, 9])
    labels = np.array(["a"] * 6 + ["b"] * 3)
    # a: 6 cells -> 3 bins of 2 by size; b: 3 cells -> 1 bin (fewer than 2 cells per bin)
    np.testing.assert_array_equal(library_size_bins(library, labels, 8), [2, 0, 1, 0, 1, 2, 0, 0, 0])
    np.testing.assert_array_equal(library_size_bins(library, labels, 2), [1, 0, 1, 0, 0, 1, 0, 0, 0])


@pytest.fixture(scope="module")
def by_group(train):
    """Training cells with their (type, bin) groups, and 4,000 cells generated from them."""
    counts = _dense(train)
    labels = train.obs["cell_type"].astype(str).to_numpy()
    bins = library_size_bins(counts.sum(1), labels)
    generated = independent_genes_by_group(train, 4000, 0)
    gen_labels = generated.obs["cell_type"].astype(str).to_numpy()
    gen_bins = generated.obs["depth_bin"].to_numpy()
    groups = sorted(set(zip(labels, bins, strict=True)))
    return counts, labels, bins, _dense(generated), gen_labels, gen_bins, groups


def test_independent_genes_by_group_keeps_type_and_group_proportions(by_group):
    counts, labels, bins, generated, gen_labels, gen_bins, groups = by_group
    assert len(groups) == 3 * 8  # 3 types of well over 16 cells: 8 bins each
    for cell_type in np.unique(labels):
        assert np.mean(gen_labels == cell_type) == pytest.approx(np.mean(labels == cell_type), abs=0.03)
    for cell_type, depth_bin in groups:
        share = np.mean((labels == cell_type) & (bins == depth_bin))
        drawn = np.mean((gen_labels == cell_type) & (gen_bins == depth_bin))
        # binomial sampling error of 4,000 draws, with room
        assert drawn == pytest.approx(share, abs=4 * np.sqrt(share * (1 - share) / 4000))


def test_independent_genes_by_group_resamples_each_gene_within_its_group(by_group):
    counts, labels, bins, generated, gen_labels, gen_bins, groups = by_group
    z_scores = []
    for cell_type, depth_bin in groups:
        source = counts[(labels == cell_type) & (bins == depth_bin)]
        drawn = generated[(gen_labels == cell_type) & (gen_bins == depth_bin)]
        for gene in range(counts.shape[1]):
            assert np.isin(drawn[:, gene], source[:, gene]).all(), (cell_type, depth_bin, gene)
        # each value a uniform draw from the group: mean = group mean, sd = group sd / sqrt(n)
        spread = source.std(0) / np.sqrt(drawn.shape[0])
        varies = spread > 0
        np.testing.assert_array_equal(drawn.mean(0)[~varies], source.mean(0)[~varies])
        z_scores.append((drawn.mean(0)[varies] - source.mean(0)[varies]) / spread[varies])
    z_scores = np.concatenate(z_scores)
    # genes come from different training cells: no generated cell is a whole training cell
    training_rows = {tuple(row) for row in counts}
    assert sum(tuple(row) in training_rows for row in generated) == 0
    assert np.abs(z_scores).max() < 6
    assert np.mean(z_scores**2) == pytest.approx(1.0, abs=0.2)


def test_independent_genes_by_group_tracks_each_groups_depth(by_group):
    counts, labels, bins, generated, gen_labels, gen_bins, groups = by_group
    train_depth, gen_depth = [], []
    for cell_type, depth_bin in groups:
        train_depth.append(counts[(labels == cell_type) & (bins == depth_bin)].sum(1).mean())
        gen_depth.append(generated[(gen_labels == cell_type) & (gen_bins == depth_bin)].sum(1).mean())
    train_depth, gen_depth = np.array(train_depth), np.array(gen_depth)
    assert np.corrcoef(train_depth, gen_depth)[0, 1] > 0.95
    np.testing.assert_allclose(gen_depth, train_depth, rtol=0.15)
    for cell_type in np.unique(labels):
        deepest = generated[(gen_labels == cell_type) & (gen_bins == 7)].sum(1)
        shallowest = generated[(gen_labels == cell_type) & (gen_bins == 0)].sum(1)
        assert deepest.mean() > 1.5 * shallowest.mean()
    # so the overall spread of library sizes is the training one
    assert generated.sum(1).std() == pytest.approx(counts.sum(1).std(), rel=0.1)


def test_negative_binomial_moments_recover_mean_and_dispersion():
    rng = np.random.default_rng(0)
    mu, phi = np.array([2.0, 5.0, 50.0]), np.array([0.2, 0.5, 1.0])
    theta = 1 / phi
    counts = rng.negative_binomial(theta, theta / (theta + mu), size=(20000, 3))
    mean, dispersion = negative_binomial_moments(sp.csr_matrix(counts))
    np.testing.assert_allclose(mean, mu, rtol=0.05)
    np.testing.assert_allclose(dispersion, phi, rtol=0.15)
    # Poisson data (var == mean) hits the floor instead of a zero dispersion
    poisson = rng.poisson(3.0, size=(5000, 1))
    assert negative_binomial_moments(sp.csr_matrix(poisson), 0.01)[1][0] == 0.01


def test_celltype_negative_binomial_is_overdispersed_per_type(train):
    generated = celltype_negative_binomial(train, 3000, 0)
    labels = train.obs["cell_type"].astype(str).to_numpy()
    gen_labels = generated.obs["cell_type"].astype(str).to_numpy()
    for cell_type in np.unique(labels):
        real_fraction, gen_fraction = np.mean(labels == cell_type), np.mean(gen_labels == cell_type)
        assert gen_fraction == pytest.approx(real_fraction, abs=0.04)
        cells = _dense(generated)[gen_labels == cell_type]
        real_cells = _dense(train)[labels == cell_type]
        expressed = real_cells.mean(0) > 2
        np.testing.assert_allclose(cells.mean(0)[expressed], real_cells.mean(0)[expressed], rtol=0.2)
        # variance well above the mean (a Poisson generator would give var == mean)
        assert np.median(cells.var(0)[expressed] / cells.mean(0)[expressed]) > 1.5


def test_celltype_poisson_matches_each_types_means_with_variance_equal_to_the_mean(train):
    generated = celltype_poisson(train, 3000, 0)
    labels = train.obs["cell_type"].astype(str).to_numpy()
    gen_labels = generated.obs["cell_type"].astype(str).to_numpy()
    for cell_type in np.unique(labels):
        assert np.mean(gen_labels == cell_type) == pytest.approx(np.mean(labels == cell_type), abs=0.04)
        cells = _dense(generated)[gen_labels == cell_type]
        real_mean = _dense(train)[labels == cell_type].mean(0)
        expressed = real_mean > 2
        np.testing.assert_allclose(cells.mean(0)[expressed], real_mean[expressed], rtol=0.2)
        assert np.median(cells.var(0)[expressed] / cells.mean(0)[expressed]) == pytest.approx(1.0, abs=0.2)
        assert (cells[:, real_mean == 0] == 0).all()


def test_copy_training_returns_training_cells_with_their_labels(train):
    generated = copy_training(train, 100, 0)
    real = {tuple(row) for row in _dense(train)}
    assert all(tuple(row) in real for row in _dense(generated))
    assert set(generated.obs["cell_type"].astype(str)) <= set(train.obs["cell_type"].astype(str))


@pytest.mark.parametrize(
    "baseline", [celltype_negative_binomial, celltype_poisson, independent_genes_by_group]
)
def test_celltype_baselines_need_labels(train, baseline):
    unlabelled = train.copy()
    del unlabelled.obs["cell_type"]
    with pytest.raises(ValueError, match="cell_type"):
        baseline(unlabelled, 10, 0)


def test_run_baselines_rejects_unknown_names(train):
    with pytest.raises(KeyError, match="unknown baselines"):
        run_baselines(train, ["independent_genes", "gan"], 10)
    assert set(run_baselines(train, CHEAP, 5)) == set(CHEAP)


def test_scvi_without_scvi_tools_says_how_to_install(train, monkeypatch):
    monkeypatch.setitem(sys.modules, "scvi", None)  # makes `import scvi` fail
    with pytest.raises(ImportError, match=r"lingshu-cell\[baselines\]"):
        scvi(train, 10, 0)


def test_scvi_generates_new_cells_from_its_prior(train):
    pytest.importorskip("scvi")
    small = train[:200].copy()
    generated = scvi(small, 120, seed=0, max_epochs=2)
    assert generated.uns["lingshu_baseline"]["epochs_trained"] == 2
    assert generated.shape == (120, small.n_vars)
    assert np.issubdtype(generated.X.dtype, np.integer) and generated.X.sum() > 0
    # sampled, not reconstructed: no generated cell is a copy of a training cell
    real = {tuple(row) for row in _dense(small)}
    assert not any(tuple(row) in real for row in _dense(generated))
    # library sizes are drawn from the training ones: same order of magnitude
    ratio = generated.X.sum(1).mean() / small.X.sum(1).mean()
    assert 0.3 < ratio < 3
