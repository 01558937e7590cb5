import numpy as np
import pytest
from scipy import stats
from sklearn.neighbors import NearestNeighbors

from lingshu.evaluation.celltypes import proportion_table, total_variation
from lingshu.evaluation.lisi import compute_lisi, scaled_ilisi
from lingshu.evaluation.metrics import (
    GENERATION_METRICS,
    MetricContext,
    celltype_accuracy,
    celltype_tvd,
    ilisi,
    memorisation,
    memorisation_result,
    mmd,
    mmd_multiscale,
    mmd_permutation_pvalue,
    mmd_pvalue,
    mmd_unbiased,
    pearson_mean,
    score_generation,
    spearman_mean,
    wasserstein_1,
    wasserstein_per_gene,
)
from lingshu.evaluation.preprocess import preprocess


def _normalised(**adatas):
    matrices, _ = preprocess(adatas)
    return matrices


@pytest.fixture(scope="module")
def shifted_sets(counts_factory):
    """Real cells and generated sets shifted by a growing log-fold change."""
    adatas = {"real": counts_factory(250, seed=1)}
    for shift in (0.0, 0.5, 1.0, 2.0):
        adatas[f"s{shift}"] = counts_factory(250, seed=2, shift=shift)
    return _normalised(**adatas)


# --- exact cases --------------------------------------------------------------------------


def test_wasserstein_equals_scipy_per_gene():
    rng = np.random.default_rng(0)
    # unequal sizes, ties and many zeros, as in log-normalised counts
    real = np.round(rng.exponential(1.0, size=(37, 6)) * (rng.random((37, 6)) > 0.4), 1)
    generated = np.round(rng.exponential(1.3, size=(23, 6)) * (rng.random((23, 6)) > 0.5), 1)
    expected = [stats.wasserstein_distance(real[:, g], generated[:, g]) for g in range(6)]
    np.testing.assert_allclose(wasserstein_per_gene(real, generated, block_size=4), expected)


def test_mmd_matches_the_direct_formula():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 3)), rng.normal(0.5, 1.0, size=(15, 3))
    pooled = np.vstack([x, y])
    sq = ((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(-1)
    sigma0 = sq.sum() / (len(pooled) ** 2 - len(pooled))
    kernel = sum(np.exp(-sq / (sigma0 * s)) for s in (0.25, 0.5, 1, 2, 4))
    kxx, kyy, kxy = kernel[:20, :20], kernel[20:, 20:], kernel[:20, 20:]
    expected = kxx.mean() + kyy.mean() - 2 * kxy.mean()
    assert mmd_multiscale(x, y, block_size=7) == pytest.approx(expected, rel=1e-10)


def _gaussian_mixture(rng, n, shift=0.0, dims=20):
    """Two equally likely Gaussian components 3 apart along the first axis, plus ``shift``."""
    centres = np.zeros((2, dims))
    centres[1, 0] = 3.0
    return centres[rng.integers(0, 2, size=n)] + rng.normal(size=(n, dims)) + shift


def test_unbiased_mmd_is_noise_for_one_distribution_and_significant_for_two():
    rng = np.random.default_rng(5)
    a, b = _gaussian_mixture(rng, 300), _gaussian_mixture(rng, 300)
    same = mmd_permutation_pvalue(a, b, seed=0)
    assert same.statistic == pytest.approx(mmd_unbiased(a, b), rel=1e-9, abs=1e-12)
    assert abs(same.statistic) < 3 * same.null_sd
    assert same.p_value > 0.01
    # the biased estimate sits far above 0 for the same pair: its diagonal terms
    assert mmd_multiscale(a, b) > 5 * same.null_sd
    shifted = mmd_permutation_pvalue(a, _gaussian_mixture(rng, 300, shift=0.3), seed=0)
    assert shifted.p_value <= 0.01
    assert shifted.statistic > 10 * shifted.null_sd


def test_unbiased_mmd_is_the_biased_one_without_the_diagonal_by_hand():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(5, 3)), rng.normal(0.8, 1.0, size=(4, 3))
    pooled = np.vstack([x, y])
    sq = ((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(-1)
    sigma0 = sq.sum() / (9 * 9 - 9)
    kernel = sum(np.exp(-sq / (sigma0 * s)) for s in (0.25, 0.5, 1, 2, 4))
    kxx, kyy, kxy = kernel[:5, :5], kernel[5:, 5:], kernel[:5, 5:]
    within_x = (kxx.sum() - np.trace(kxx)) / (5 * 4)
    within_y = (kyy.sum() - np.trace(kyy)) / (4 * 3)
    expected = within_x + within_y - 2 * kxy.mean()
    assert mmd_unbiased(x, y, block_size=2) == pytest.approx(expected, rel=1e-10)
    # the same number as the biased MMD^2 with its x-x and y-y means corrected by hand
    correction = (within_x - kxx.mean()) + (within_y - kyy.mean())
    assert mmd_unbiased(x, y) == pytest.approx(mmd_multiscale(x, y) + correction, rel=1e-10)
    # and the permutation test reports that same statistic
    assert mmd_permutation_pvalue(x, y, n_permutations=20).statistic == pytest.approx(expected, rel=1e-10)


def test_permutation_pvalue_is_seeded():
    rng = np.random.default_rng(7)
    a, b = _gaussian_mixture(rng, 120), _gaussian_mixture(rng, 100, shift=0.05)
    first = mmd_permutation_pvalue(a, b, n_permutations=100, seed=3)
    assert first == mmd_permutation_pvalue(a, b, n_permutations=100, seed=3)
    other = mmd_permutation_pvalue(a, b, n_permutations=100, seed=4)
    assert other.statistic == first.statistic and other.null_sd != first.null_sd
    # p is (1 + #null >= observed) / (1 + n): a multiple of 1/101 in (0, 1]
    assert 0 < first.p_value <= 1 and (first.p_value * 101) == pytest.approx(round(first.p_value * 101))


def test_unbiased_mmd_needs_two_cells_per_side():
    with pytest.raises(ValueError, match="at least 2 cells"):
        mmd_unbiased(np.zeros((1, 3)), np.ones((5, 3)))


def _harmony_lisi(coords, labels, perplexity):
    """Per-cell loop of the published LISI algorithm (harmony's compute_simpson)."""
    k = int(perplexity * 3)
    distances, indices = NearestNeighbors(n_neighbors=k + 1).fit(coords).kneighbors(coords)
    distances, indices = distances[:, 1:], indices[:, 1:]
    out = np.zeros(len(coords))
    for i in range(len(coords)):
        d, beta, lo, hi = distances[i], 1.0, -np.inf, np.inf
        for _ in range(51):
            p = np.exp(-d * beta)
            h = np.log(p.sum()) + beta * (d * p).sum() / p.sum()
            p = p / p.sum()
            diff = h - np.log(perplexity)
            if abs(diff) < 1e-5:
                break
            if diff > 0:
                lo = beta
                beta = beta * 2 if np.isinf(hi) else (beta + hi) / 2
            else:
                hi = beta
                beta = beta / 2 if np.isinf(lo) else (beta + lo) / 2
        out[i] = 1 / sum(p[labels[indices[i]] == c].sum() ** 2 for c in np.unique(labels))
    return out


def test_lisi_matches_the_per_cell_reference():
    rng = np.random.default_rng(2)
    coords = np.vstack([rng.normal(size=(60, 4)), rng.normal(0.7, 1.0, size=(60, 4))])
    labels = np.repeat(["a", "b"], 60)
    np.testing.assert_allclose(compute_lisi(coords, labels, 10), _harmony_lisi(coords, labels, 10), rtol=1e-6)


def test_ilisi_is_zero_for_separate_batches_and_near_one_when_mixed():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(100, 5))
    separate = np.vstack([a, a + 100.0])
    mixed = np.vstack([a, rng.normal(size=(100, 5))])
    batches = np.repeat(["real", "generated"], 100)
    assert scaled_ilisi(separate, batches, 30) == pytest.approx(0.0, abs=1e-6)
    assert scaled_ilisi(mixed, batches, 30) > 0.85


def test_total_variation_on_known_proportions():
    real = np.array(["a"] * 6 + ["b"] * 4 + ["unassigned"] * 5)
    generated = np.array(["a"] * 3 + ["c"] * 1)
    # real: a .6, b .4; generated: a .75, c .25 -> 0.5 * (.15 + .4 + .25)
    assert total_variation(real, generated) == pytest.approx(0.4)
    table = proportion_table(real, generated)
    assert table.loc["c", "real_fraction"] == 0 and table.loc["b", "generated_fraction"] == 0


# --- identical, same-distribution and shifted sets ------------------------------------------


def test_identical_sets_score_perfectly(shifted_sets):
    real = shifted_sets["real"]
    ctx = MetricContext(seed=0)
    assert pearson_mean(real, real) == pytest.approx(1.0)
    assert spearman_mean(real, real) == pytest.approx(1.0)
    assert mmd(real, real.copy(), ctx) == pytest.approx(0.0, abs=1e-12)
    assert wasserstein_1(real, real.copy()) == 0.0
    # exact twins: each cell's copy at distance 0 takes a large share of its perplexity-
    # calibrated weights, so a literal copy mixes well but not perfectly (LISI property)
    assert ilisi(real, real.copy(), MetricContext(seed=0)) > 0.7


def test_a_new_sample_of_the_same_distribution_scores_well(shifted_sets):
    real, same = shifted_sets["real"], shifted_sets["s0.0"]
    assert pearson_mean(real, same) > 0.98
    assert ilisi(real, same, MetricContext()) > 0.9


@pytest.mark.parametrize(
    ("name", "worse_when"),
    [
        ("pearson_mean", "smaller"),
        ("spearman_mean", "smaller"),
        ("mmd", "larger"),
        ("mmd_unbiased", "larger"),
        ("wasserstein_1", "larger"),
        ("ilisi", "smaller"),
    ],
)
def test_metrics_get_monotonically_worse_with_the_shift(shifted_sets, name, worse_when):
    real = shifted_sets["real"]
    metric = GENERATION_METRICS[name]
    values = [metric.fn(real, shifted_sets[f"s{s}"], MetricContext()) for s in (0.0, 0.5, 1.0, 2.0)]
    diffs = np.diff(values)
    assert np.all(diffs > 0) if worse_when == "larger" else np.all(diffs < 0), values
    assert metric.higher_is_better == (worse_when == "smaller")


def test_registered_mmd_pvalue_separates_a_new_sample_from_a_shifted_one(shifted_sets):
    real = shifted_sets["real"]
    values, _ = score_generation(real, shifted_sets["s0.0"], MetricContext(seed=0))
    shifted, _ = score_generation(real, shifted_sets["s1.0"], MetricContext(seed=0))
    assert values["mmd_pvalue"] > 0.01 and shifted["mmd_pvalue"] <= 0.01
    assert abs(values["mmd_unbiased"]) < values["mmd"] < shifted["mmd"]
    # the registered value is the pure estimator on the joint PCA
    embedding = MetricContext(seed=0).joint_embedding(real, shifted_sets["s1.0"])
    assert shifted["mmd_unbiased"] == pytest.approx(mmd_unbiased(embedding.real, embedding.generated))
    assert mmd_pvalue(real, shifted_sets["s1.0"], MetricContext(seed=0)) == shifted["mmd_pvalue"]


def test_mmd_subsampling_is_seeded(shifted_sets):
    real, gen = shifted_sets["real"], shifted_sets["s0.5"]
    a = mmd(real, gen, MetricContext(seed=3, max_cells=100))
    assert a == mmd(real, gen, MetricContext(seed=3, max_cells=100))
    assert a != mmd(real, gen, MetricContext(seed=4, max_cells=100))


# --- cell types ---------------------------------------------------------------------------


def test_celltype_tvd_is_small_for_the_same_mix_and_large_for_one_type(counts_factory):
    real_ad = counts_factory(300, seed=1)
    same_ad = counts_factory(300, seed=2)
    only_type0 = counts_factory(300, seed=3, type_weights=(1.0, 0.0, 0.0))
    m = _normalised(real=real_ad, same=same_ad, only=only_type0)
    labels = real_ad.obs["cell_type"].to_numpy()
    ctx = MetricContext(real_labels=labels)
    assert celltype_tvd(m["real"], m["same"], ctx) < 0.08
    real_type0 = np.mean(labels == "type0")
    only_ctx = MetricContext(real_labels=labels)
    assert celltype_tvd(m["real"], m["only"], only_ctx) == pytest.approx(1 - real_type0, abs=0.02)


def test_celltype_accuracy_checks_requested_types(counts_factory):
    real_ad, gen_ad = counts_factory(300, seed=1), counts_factory(200, seed=2)
    m = _normalised(real=real_ad, gen=gen_ad)
    real_labels = real_ad.obs["cell_type"].to_numpy()
    right = gen_ad.obs["cell_type"].to_numpy()
    wrong = np.random.default_rng(0).permutation(right)
    good = celltype_accuracy(m["real"], m["gen"], MetricContext(real_labels, right))
    bad = celltype_accuracy(m["real"], m["gen"], MetricContext(real_labels, wrong))
    assert good > 0.95 and bad < 0.7


# --- memorisation -------------------------------------------------------------------------


def test_copied_training_cells_trip_the_memorisation_flag(counts_factory):
    m = _normalised(
        train=counts_factory(300, seed=1),
        heldout=counts_factory(150, seed=2),
        new=counts_factory(150, seed=3),
    )
    copies = m["train"][np.random.default_rng(0).choice(300, 150)]
    copied = memorisation(copies, m["heldout"], m["train"])
    honest = memorisation(m["new"], m["heldout"], m["train"])
    assert copied.ratio == 0.0 and copied.flagged
    assert 0.8 < honest.ratio < 1.25 and not honest.flagged
    # through the registered metric and its context too
    ctx = MetricContext(train=m["train"])
    assert memorisation_result(m["heldout"], copies, ctx).flagged


def test_metrics_needing_missing_inputs_are_skipped_with_a_note(shifted_sets):
    values, notes = score_generation(shifted_sets["real"], shifted_sets["s0.0"], MetricContext())
    assert set(values) == set(GENERATION_METRICS)
    for name in ("memorisation_ratio", "celltype_tvd", "celltype_accuracy"):
        assert np.isnan(values[name])
        assert notes[name].startswith("skipped")
    assert "--train" in notes["memorisation_ratio"]
    assert np.isfinite(values["mmd"]) and "mmd" not in notes


def test_calling_a_metric_without_its_input_raises():
    x = np.ones((10, 3))
    with pytest.raises(ValueError, match="training cells"):
        memorisation_result(x, x, MetricContext())


def test_registry_entries_are_consistent():
    for name, metric in GENERATION_METRICS.items():
        assert metric.name == name
        assert metric.description
        assert metric.direction in ("↑", "↓") or metric.target is not None
