"""Generation metrics (DESIGN.md section 3; method notes section 9.2) and their registry.

Every metric takes the real and the generated log1p(CP10k) matrices over the same genes, plus a
:class:`MetricContext` holding what some metrics also need (labels, training cells, seeds) and
caching what several share (the joint PCA, the cell-type classifier). Metrics are looked up in
:data:`GENERATION_METRICS`; a metric whose requirement is missing is skipped (NaN) with a note.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from scipy import stats

from lingshu.evaluation.celltypes import CellTypeClassifier, assigned_mask, total_variation
from lingshu.evaluation.embedding import (
    JointEmbedding,
    joint_pca,
    nearest_distances,
    subsample_index,
)
from lingshu.evaluation.lisi import scaled_ilisi

MMD_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
MEMORISATION_THRESHOLD = 0.5
MMD_PERMUTATIONS = 200
REQUIREMENT_NOTES = {
    "real_labels": "needs obs['cell_type'] on the real cells",
    "generated_labels": "needs obs['cell_type'] on the generated cells (conditional generation)",
    "train": "needs the training cells (--train)",
}


@dataclass
class MetricContext:
    """Inputs beyond the two matrices, and caches shared by metrics.

    A context belongs to one (real, generated) pair. ``reference_cache`` only holds things that
    depend on the real cells, their labels and the training cells (classifier, held-out to
    training distances), so it may be shared by the contexts of several generated sets scored
    against the same real cells.
    """

    real_labels: np.ndarray | None = None
    generated_labels: np.ndarray | None = None
    train: np.ndarray | None = None
    seed: int = 0
    n_pcs: int = 50
    max_cells: int | None = 5000
    lisi_n_pcs: int = 20
    lisi_perplexity: float = 30.0
    memorisation_threshold: float = MEMORISATION_THRESHOLD
    mmd_permutations: int = MMD_PERMUTATIONS
    reference_cache: dict[str, Any] = field(default_factory=dict, repr=False)
    pair_cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def has(self, requirement: str) -> bool:
        """Whether the input named by ``requirement`` (see ``REQUIREMENT_NOTES``) is present."""
        if requirement == "train":
            return self.train is not None and self.train.shape[0] > 0
        labels = {"real_labels": self.real_labels, "generated_labels": self.generated_labels}
        if requirement not in labels:
            raise KeyError(f"unknown requirement {requirement!r}")
        value = labels[requirement]
        return value is not None and bool(assigned_mask(value).any())

    def rng(self, stream: int) -> np.random.Generator:
        """A generator per use, so that one metric's draws do not shift another's."""
        return np.random.default_rng([self.seed, stream])

    def joint_embedding(self, real: np.ndarray, generated: np.ndarray) -> JointEmbedding:
        """Joint PCA of real and generated cells (computed once per context)."""
        if "joint_pca" not in self.pair_cache:
            self.pair_cache["joint_pca"] = joint_pca(real, generated, self.n_pcs, self.max_cells, self.seed)
        return self.pair_cache["joint_pca"]

    def classifier(self, real: np.ndarray) -> CellTypeClassifier:
        """Cell-type classifier trained on the real cells (computed once per reference)."""
        if "classifier" not in self.reference_cache:
            self.require("real_labels")
            self.reference_cache["classifier"] = CellTypeClassifier.fit(
                real, self.real_labels, self.n_pcs, self.seed
            )
        return self.reference_cache["classifier"]

    def predicted_labels(self, real: np.ndarray, generated: np.ndarray) -> np.ndarray:
        """Cell types the real-trained classifier assigns to the generated cells."""
        if "predicted_labels" not in self.pair_cache:
            self.pair_cache["predicted_labels"] = self.classifier(real).predict(generated)
        return self.pair_cache["predicted_labels"]

    def mmd_permutation_test(self, real: np.ndarray, generated: np.ndarray) -> MMDPermutationTest:
        """Unbiased MMD^2 and its permutation p-value on the joint PCA (computed once per context)."""
        if "mmd_permutation" not in self.pair_cache:
            embedding = self.joint_embedding(real, generated)
            self.pair_cache["mmd_permutation"] = mmd_permutation_pvalue(
                embedding.real, embedding.generated, self.mmd_permutations, self.seed
            )
        return self.pair_cache["mmd_permutation"]

    def heldout_to_train(self, real: np.ndarray) -> np.ndarray:
        """Distance from each (subsampled) real cell to its nearest training cell."""
        if "heldout_to_train" not in self.reference_cache:
            self.require("train")
            index = subsample_index(real.shape[0], self.max_cells, self.rng(1))
            self.reference_cache["heldout_to_train"] = nearest_distances(real[index], self.train)
        return self.reference_cache["heldout_to_train"]

    def require(self, requirement: str) -> None:
        """Raise ``ValueError`` naming the missing input unless ``requirement`` is present."""
        if not self.has(requirement):
            raise ValueError(f"this metric {REQUIREMENT_NOTES[requirement]}")


MetricFn = Callable[[np.ndarray, np.ndarray, MetricContext], float]


@dataclass(frozen=True)
class Metric:
    """A named metric: its function, which direction is better, and what it needs.

    ``target`` is set for metrics whose ideal is a value rather than an extreme (the
    memorisation ratio should be about 1; ``higher_is_better`` then says which side is safer).
    """

    name: str
    higher_is_better: bool
    fn: MetricFn
    description: str
    requires: tuple[str, ...] = ()
    target: float | None = None

    @property
    def direction(self) -> str:
        """Arrow for tables: up, down, or approximately the target value."""
        if self.target is not None:
            return f"≈{self.target:g}"
        return "↑" if self.higher_is_better else "↓"


# --- pure computations (no context) -------------------------------------------------------


def _mmd_bandwidths(pooled: np.ndarray) -> np.ndarray | None:
    """The five Gaussian bandwidths sigma0 * {1/4, 1/2, 1, 2, 4} of the pooled sample.

    sigma0 is the mean squared distance between distinct points, sum / (n^2 - n), as in the
    paper's code. ``None`` when every point is identical (sigma0 = 0).
    """
    n = pooled.shape[0]
    # sum_ij ||a_i - a_j||^2 = 2 n sum_i ||a_i||^2 - 2 ||sum_i a_i||^2 (no n x n matrix needed)
    total_sq = 2 * n * np.einsum("ij,ij->", pooled, pooled) - 2 * np.sum(pooled.sum(axis=0) ** 2)
    sigma0 = max(total_sq, 0.0) / (n * n - n)
    if sigma0 <= 0:
        return None
    return sigma0 * np.asarray(MMD_SCALES)


def _kernel_block(block: np.ndarray, b: np.ndarray, b_sq: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Summed Gaussian kernels between the rows of ``block`` and of ``b`` (``b_sq``: row norms^2)."""
    sq = np.einsum("ij,ij->i", block, block)[:, None] + b_sq[None, :] - 2 * block @ b.T
    sq = np.maximum(sq, 0.0)
    return sum(np.exp(-sq / s) for s in sigmas)


def _as_pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def mmd_multiscale(x: np.ndarray, y: np.ndarray, block_size: int = 2048) -> float:
    """Biased MMD^2 with a sum of five Gaussian kernels exp(-||a-b||^2 / sigma).

    sigma = sigma0 * {1/4, 1/2, 1, 2, 4} and sigma0 is the mean squared distance between distinct
    points of the pooled sample, sum / (n^2 - n), as in the paper's code. The kernel means are
    accumulated in row blocks so memory stays O(block_size * n).
    """
    x, y = _as_pair(x, y)
    sigmas = _mmd_bandwidths(np.vstack([x, y]))
    if sigmas is None:
        return 0.0  # every point identical: both samples are the same point mass

    def kernel_mean(a: np.ndarray, b: np.ndarray) -> float:
        b_sq = np.einsum("ij,ij->i", b, b)
        total = 0.0
        for start in range(0, a.shape[0], block_size):
            total += _kernel_block(a[start : start + block_size], b, b_sq, sigmas).sum()
        return total / (a.shape[0] * b.shape[0])

    return float(kernel_mean(x, x) + kernel_mean(y, y) - 2 * kernel_mean(x, y))


def _unbiased_from_products(
    in_x: np.ndarray, kernel_z: np.ndarray, row_sums: np.ndarray, n_x: int, n_y: int
) -> np.ndarray:
    """Unbiased MMD^2 of every labelling (column of ``in_x``) from K0 @ in_x and K0's row sums.

    K0 is the pooled kernel matrix with a zero diagonal, so z' K0 z sums x-x pairs with i != j.
    The cross pairs never touch the diagonal, and the y-y sum follows from the grand total.
    """
    sum_xx = np.einsum("ij,ij->j", in_x, kernel_z)
    sum_xy = row_sums @ in_x - sum_xx
    sum_yy = row_sums.sum() - sum_xx - 2 * sum_xy
    return sum_xx / (n_x * (n_x - 1)) + sum_yy / (n_y * (n_y - 1)) - 2 * sum_xy / (n_x * n_y)


def _unbiased_mmd_of_labellings(
    pooled: np.ndarray, in_x: np.ndarray, n_x: int, block_size: int
) -> np.ndarray | None:
    """Unbiased MMD^2 for each labelling of the pooled cells (columns of the 0/1 ``in_x``).

    One blocked pass over the pooled kernel matrix serves every labelling (K0 @ in_x), so the
    kernels are computed once however many permutations there are; memory stays
    O(block_size * n + n * labellings). ``None`` when every point is identical.
    """
    sigmas = _mmd_bandwidths(pooled)
    if sigmas is None:
        return None
    n = pooled.shape[0]
    pooled_sq = np.einsum("ij,ij->i", pooled, pooled)
    kernel_z = np.empty((n, in_x.shape[1]))
    row_sums = np.empty(n)
    for start in range(0, n, block_size):
        block = _kernel_block(pooled[start : start + block_size], pooled, pooled_sq, sigmas)
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = 0.0  # drop the i == j terms: this is what removes the bias
        kernel_z[start : start + block.shape[0]] = block @ in_x
        row_sums[start : start + block.shape[0]] = block.sum(axis=1)
    return _unbiased_from_products(in_x, kernel_z, row_sums, n_x, n - n_x)


def _check_unbiased_sizes(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"unbiased MMD needs at least 2 cells per side, got {x.shape[0]} and {y.shape[0]}")


def mmd_unbiased(x: np.ndarray, y: np.ndarray, block_size: int = 1024) -> float:
    """Unbiased MMD^2 with the kernels and sigma0 of :func:`mmd_multiscale`.

    The x-x and y-y kernel means leave out the i == j terms (sum over i != j over n(n-1)); the
    cross term is the mean over all pairs. An unbiased estimate of a distance that may be 0, so
    it scatters around 0 for two samples of one distribution and can be negative. 0 when
    every point is identical.
    """
    x, y = _as_pair(x, y)
    _check_unbiased_sizes(x, y)
    in_x = np.r_[np.ones(x.shape[0]), np.zeros(y.shape[0])][:, None]
    values = _unbiased_mmd_of_labellings(np.vstack([x, y]), in_x, x.shape[0], block_size)
    return 0.0 if values is None else float(values[0])


class MMDPermutationTest(NamedTuple):
    """Unbiased MMD^2, its permutation p-value and the sd of the permutation null."""

    statistic: float
    p_value: float
    null_sd: float


def mmd_permutation_pvalue(
    x: np.ndarray,
    y: np.ndarray,
    n_permutations: int = MMD_PERMUTATIONS,
    seed: int = 0,
    block_size: int = 1024,
) -> MMDPermutationTest:
    """Permutation test of "x and y come from one distribution" with the unbiased MMD^2.

    The null is the unbiased MMD^2 of random relabellings of the pooled cells (same group
    sizes). p = (1 + #{null >= observed}) / (1 + n_permutations), so it is never 0. The kernel
    matrix is computed once and shared by the observed labelling and all permutations.
    Returns ``(statistic, p_value, null_sd)``.
    """
    if n_permutations < 2:
        raise ValueError(f"n_permutations must be >= 2, got {n_permutations}")
    x, y = _as_pair(x, y)
    _check_unbiased_sizes(x, y)
    observed = np.r_[np.ones(x.shape[0]), np.zeros(y.shape[0])]
    rng = np.random.default_rng(seed)
    shuffled = rng.permuted(np.tile(observed, (n_permutations, 1)), axis=1)
    in_x = np.vstack([observed, shuffled]).T
    values = _unbiased_mmd_of_labellings(np.vstack([x, y]), in_x, x.shape[0], block_size)
    if values is None:
        return MMDPermutationTest(0.0, 1.0, 0.0)  # one point mass: nothing to tell apart
    statistic, null = values[0], values[1:]
    p_value = (1 + np.count_nonzero(null >= statistic)) / (1 + n_permutations)
    return MMDPermutationTest(float(statistic), float(p_value), float(np.std(null, ddof=1)))


def wasserstein_per_gene(real: np.ndarray, generated: np.ndarray, block_size: int = 1024) -> np.ndarray:
    """1-D Wasserstein-1 distance between real and generated values of every gene (column).

    Equal to ``scipy.stats.wasserstein_distance`` per column, vectorised through the quantile
    functions: W1 = integral over t in (0,1) of |F_real^-1(t) - F_gen^-1(t)|. Both empirical
    quantile functions are step functions with steps at multiples of 1/n and 1/m, so on the
    merged grid (integers over n*m, hence exact) they are constant and the integral is a sum.
    """
    n, m = real.shape[0], generated.shape[0]
    if n == 0 or m == 0:
        raise ValueError("both sets need at least one cell")
    grid = np.union1d(np.arange(n + 1, dtype=np.int64) * m, np.arange(m + 1, dtype=np.int64) * n)
    widths = np.diff(grid) / (n * m)
    real_rank = grid[:-1] // m  # order statistic of real in force on each interval
    generated_rank = grid[:-1] // n
    out = np.empty(real.shape[1])
    for start in range(0, real.shape[1], block_size):
        cols = slice(start, start + block_size)
        u = np.sort(real[:, cols], axis=0)
        v = np.sort(generated[:, cols], axis=0)
        out[cols] = widths @ np.abs(u[real_rank].astype(np.float64) - v[generated_rank])
    return out


@dataclass(frozen=True)
class MemorisationResult:
    """Nearest-training-cell distances of generated and held-out real cells."""

    median_generated: float
    median_heldout: float
    ratio: float
    flagged: bool


def memorisation_ratio_from_distances(
    generated_to_train: np.ndarray,
    heldout_to_train: np.ndarray,
    threshold: float = MEMORISATION_THRESHOLD,
) -> MemorisationResult:
    """median(generated -> train) / median(held-out -> train), flagged below ``threshold``.

    A faithful generator sits about as far from the training cells as new real cells do
    (ratio ~1); copies of training cells give ~0. The default threshold 0.5 means "generated
    cells are typically less than half as far from a training cell as genuinely new cells",
    which no independent sample of the same distribution does (see the real-vs-real ceiling).
    """
    median_generated = float(np.median(generated_to_train))
    median_heldout = float(np.median(heldout_to_train))
    if median_heldout > 0:
        ratio = median_generated / median_heldout
    else:
        ratio = 0.0 if median_generated == 0 else np.inf
    return MemorisationResult(median_generated, median_heldout, ratio, ratio < threshold)


def memorisation(
    generated: np.ndarray, heldout: np.ndarray, train: np.ndarray, threshold: float = 0.5
) -> MemorisationResult:
    """Memorisation check in log-normalised space; see :func:`memorisation_ratio_from_distances`."""
    return memorisation_ratio_from_distances(
        nearest_distances(generated, train), nearest_distances(heldout, train), threshold
    )


# --- registered metrics -------------------------------------------------------------------


def _context(context: MetricContext | None) -> MetricContext:
    return context if context is not None else MetricContext()


def pearson_mean(real: np.ndarray, generated: np.ndarray, context: MetricContext | None = None) -> float:
    """Pearson correlation of the per-gene mean vectors."""
    a, b = real.mean(axis=0), generated.mean(axis=0)
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman_mean(real: np.ndarray, generated: np.ndarray, context: MetricContext | None = None) -> float:
    """Spearman correlation of the per-gene mean vectors."""
    a, b = real.mean(axis=0), generated.mean(axis=0)
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def mmd(real: np.ndarray, generated: np.ndarray, context: MetricContext | None = None) -> float:
    """Multi-scale Gaussian MMD^2 on the joint PCA of real and generated cells."""
    embedding = _context(context).joint_embedding(real, generated)
    return mmd_multiscale(embedding.real, embedding.generated)


def mmd_unbiased_metric(
    real: np.ndarray, generated: np.ndarray, context: MetricContext | None = None
) -> float:
    """Unbiased multi-scale Gaussian MMD^2 on the joint PCA of real and generated cells."""
    return _context(context).mmd_permutation_test(real, generated).statistic


def mmd_pvalue(real: np.ndarray, generated: np.ndarray, context: MetricContext | None = None) -> float:
    """Permutation p-value of the unbiased MMD^2 (high: indistinguishable from the real cells)."""
    return _context(context).mmd_permutation_test(real, generated).p_value


def wasserstein_1(real: np.ndarray, generated: np.ndarray, context: MetricContext | None = None) -> float:
    """Mean over genes of the 1-D Wasserstein-1 distance of the per-gene marginals."""
    ctx = _context(context)
    real_index = subsample_index(real.shape[0], ctx.max_cells, ctx.rng(2))
    generated_index = subsample_index(generated.shape[0], ctx.max_cells, ctx.rng(3))
    return float(wasserstein_per_gene(real[real_index], generated[generated_index]).mean())


def ilisi(real: np.ndarray, generated: np.ndarray, context: MetricContext | None = None) -> float:
    """Scaled iLISI of real vs generated on the joint PCA, equal numbers of cells per side.

    An independent sample of the real distribution scores close to 1. A literal copy of the
    real cells scores lower (about 0.75 on small data): each cell's exact twin, at distance 0,
    takes a large share of its perplexity-calibrated neighbour weights. Generators never see
    the held-out cells, so such twins do not arise in practice.
    """
    ctx = _context(context)
    embedding = ctx.joint_embedding(real, generated)
    # equal sizes: with unbalanced batches the perfect score of 1 is unreachable
    n = min(embedding.real.shape[0], embedding.generated.shape[0])
    rng = ctx.rng(4)
    a = embedding.real[subsample_index(embedding.real.shape[0], n, rng), : ctx.lisi_n_pcs]
    b = embedding.generated[subsample_index(embedding.generated.shape[0], n, rng), : ctx.lisi_n_pcs]
    batches = np.repeat(np.array(["real", "generated"]), n)
    return scaled_ilisi(np.vstack([a, b]), batches, ctx.lisi_perplexity)


def celltype_tvd(real: np.ndarray, generated: np.ndarray, context: MetricContext | None = None) -> float:
    """TVD between real cell-type proportions and the classifier-predicted generated ones."""
    ctx = _context(context)
    ctx.require("real_labels")
    return total_variation(ctx.real_labels, ctx.predicted_labels(real, generated))


def celltype_accuracy(real: np.ndarray, generated: np.ndarray, context: MetricContext | None = None) -> float:
    """Fraction of labelled generated cells that the real-trained classifier calls their label.

    Measures whether conditionally generated cells look like the type they were asked for.
    Labels the classifier never saw are left out.
    """
    ctx = _context(context)
    ctx.require("real_labels")
    ctx.require("generated_labels")
    labels = np.asarray(ctx.generated_labels, dtype=object)
    known = assigned_mask(labels) & np.isin(labels.astype(str), ctx.classifier(real).classes)
    if not known.any():
        return float("nan")
    predicted = ctx.predicted_labels(real, generated)
    return float(np.mean(predicted[known].astype(str) == labels[known].astype(str)))


def memorisation_result(
    real: np.ndarray, generated: np.ndarray, context: MetricContext | None = None
) -> MemorisationResult:
    """Full memorisation result (medians, ratio, flag) for a context with training cells."""
    ctx = _context(context)
    ctx.require("train")
    index = subsample_index(generated.shape[0], ctx.max_cells, ctx.rng(5))
    return memorisation_ratio_from_distances(
        nearest_distances(generated[index], ctx.train),
        ctx.heldout_to_train(real),
        ctx.memorisation_threshold,
    )


def memorisation_ratio(
    real: np.ndarray, generated: np.ndarray, context: MetricContext | None = None
) -> float:
    """median(generated -> nearest training cell) / median(held-out real -> nearest training)."""
    return memorisation_result(real, generated, context).ratio


GENERATION_METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric(
            "pearson_mean",
            True,
            pearson_mean,
            "Pearson r of per-gene mean log expression, real vs generated (1 = same means)",
        ),
        Metric(
            "spearman_mean",
            True,
            spearman_mean,
            "Spearman rho of per-gene mean log expression, real vs generated",
        ),
        Metric(
            "mmd",
            False,
            mmd,
            "biased MMD^2, 5 Gaussian kernels (sigma0 x 1/4..4) on a joint 50-PC PCA (0 = same)",
        ),
        Metric(
            "mmd_unbiased",
            False,
            mmd_unbiased_metric,
            "unbiased MMD^2 (i == j kernel terms left out), same kernels and PCA as mmd; "
            "about 0 for a sample of the real distribution, small negative values are noise",
        ),
        Metric(
            "mmd_pvalue",
            True,
            mmd_pvalue,
            f"permutation p-value of mmd_unbiased ({MMD_PERMUTATIONS} relabellings of the "
            "pooled cells); <= 0.01 means clearly distinguishable from the real cells",
        ),
        Metric(
            "wasserstein_1",
            False,
            wasserstein_1,
            "mean over genes of the 1-D Wasserstein-1 distance of log expression (0 = same)",
        ),
        Metric(
            "ilisi",
            True,
            ilisi,
            "median iLISI of real vs generated on a joint-PCA kNN graph, scaled to [0,1] "
            "(1 = perfectly mixed)",
        ),
        Metric(
            "celltype_tvd",
            False,
            celltype_tvd,
            "total-variation distance between real cell-type proportions and those a "
            "classifier trained on real cells assigns to generated cells (0 = same)",
            ("real_labels",),
        ),
        Metric(
            "celltype_accuracy",
            True,
            celltype_accuracy,
            "fraction of generated cells whose requested cell type the real-trained "
            "classifier recognises (conditional generation only)",
            ("real_labels", "generated_labels"),
        ),
        Metric(
            "memorisation_ratio",
            True,
            memorisation_ratio,
            "median distance of generated cells to their nearest training cell over the same "
            "for held-out real cells (~1 = as novel as real cells; < 0.5 flags copying)",
            ("train",),
            target=1.0,
        ),
    )
}


def missing_requirements(metric: Metric, context: MetricContext) -> list[str]:
    """Requirements of ``metric`` the context lacks (empty when it can run)."""
    return [req for req in metric.requires if not context.has(req)]


def score_generation(
    real: np.ndarray,
    generated: np.ndarray,
    context: MetricContext | None = None,
    metrics: Mapping[str, Metric] | Iterable[str] | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Run metrics on one generated set.

    Returns the values (NaN for skipped metrics) and a note per skipped metric saying why.
    ``metrics`` may be a registry or metric names (default: every registered metric).
    """
    ctx = _context(context)
    if real.shape[1] != generated.shape[1]:
        raise ValueError(
            f"real and generated matrices have different gene counts "
            f"({real.shape[1]} vs {generated.shape[1]}); align them with preprocess() first"
        )
    if metrics is None:
        selected = GENERATION_METRICS
    elif isinstance(metrics, Mapping):
        selected = metrics
    else:
        unknown = [name for name in metrics if name not in GENERATION_METRICS]
        if unknown:
            raise KeyError(f"unknown metrics {unknown}; known: {sorted(GENERATION_METRICS)}")
        selected = {name: GENERATION_METRICS[name] for name in metrics}
    values: dict[str, float] = {}
    notes: dict[str, str] = {}
    for name, metric in selected.items():
        missing = missing_requirements(metric, ctx)
        if missing:
            values[name] = float("nan")
            notes[name] = "skipped: " + "; ".join(REQUIREMENT_NOTES[m] for m in missing)
            continue
        values[name] = float(metric.fn(real, generated, ctx))
    return values, notes
