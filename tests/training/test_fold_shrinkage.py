"""Shrinking measured log fold changes by their sampling noise."""

import numpy as np
import pytest

from lingshu.training.fold_shrinkage import log_fold_variance, shrink_log_folds


def _noisy_folds(seed: int = 0, n_genes: int = 4000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mostly null genes, a tenth with real effects, each measured with its own noise."""
    rng = np.random.default_rng(seed)
    truth = np.where(rng.random(n_genes) < 0.1, rng.normal(0.0, 2.0, n_genes), 0.0)
    variances = np.exp(rng.uniform(np.log(0.005), np.log(1.0), n_genes))
    return truth, truth + rng.normal(0.0, np.sqrt(variances)), variances


def test_shrinkage_lowers_the_error_mostly_on_noisy_null_genes_and_keeps_well_measured_effects():
    truth, measured, variances = _noisy_folds()
    shrunk = shrink_log_folds(measured, variances)
    assert np.mean((shrunk - truth) ** 2) < 0.5 * np.mean((measured - truth) ** 2)
    null = truth == 0
    assert np.abs(shrunk[null]).mean() < 0.4 * np.abs(measured[null]).mean()
    clear = (np.abs(truth) > 2) & (variances < 0.02)
    assert clear.sum() > 10
    np.testing.assert_allclose(shrunk[clear], measured[clear], rtol=0.05)
    # Shrinkage never flips a sign or grows a fold.
    assert (np.sign(shrunk) * np.sign(measured) >= 0).all() and (
        np.abs(shrunk) <= np.abs(measured) + 1e-12
    ).all()


def test_an_exactly_measured_fold_is_kept_and_pure_noise_vanishes():
    rng = np.random.default_rng(1)
    noise = rng.normal(0.0, 0.5, 500)
    shrunk = shrink_log_folds(noise, np.full(500, 0.25))
    assert np.abs(shrunk).max() < 0.1 * np.abs(noise).max()
    exact = shrink_log_folds(np.r_[3.0, noise], np.r_[0.0, np.full(500, 0.25)])
    assert exact[0] == pytest.approx(3.0, rel=1e-3)


def test_the_delta_method_variance_matches_repeated_measurements():
    rng = np.random.default_rng(2)
    n_perturbed, n_control, pseudo = 60, 80, 0.1
    mean_perturbed, mean_control = np.array([0.5, 3.0, 20.0]), np.array([1.0, 2.0, 20.0])
    folds, predicted = [], []
    for _ in range(2000):
        perturbed = rng.poisson(mean_perturbed, (n_perturbed, 3)).astype(float)
        control = rng.poisson(mean_control, (n_control, 3)).astype(float)
        m_p, m_c = perturbed.mean(0), control.mean(0)
        folds.append(np.log((m_p + pseudo) / (m_c + pseudo)))
        predicted.append(
            log_fold_variance(
                m_p, perturbed.var(0, ddof=1), n_perturbed, m_c, control.var(0, ddof=1), n_control, pseudo
            )
        )
    np.testing.assert_allclose(np.mean(predicted, 0), np.var(folds, 0), rtol=0.15)
