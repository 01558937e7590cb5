import math

import pytest
import torch

from lingshu.training.ema import PowerEMA, sigma_rel_to_gamma
from lingshu.training.schedule import learning_rate


def test_gamma_matches_edm2_relation():
    gamma = sigma_rel_to_gamma(0.05)
    assert gamma == pytest.approx(16.97, abs=0.01)  # EDM2: sigma_rel 0.05 <-> gamma 16.97
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    assert math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))) == pytest.approx(0.05, rel=1e-6)


def test_power_ema_first_update_copies_and_later_averages():
    model = torch.nn.Linear(2, 1, bias=False)
    ema = PowerEMA(model, 0.05)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # beta = 0 at the first update: the EMA equals the model
    assert torch.equal(ema.model.weight, model.weight)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    assert 1.0 < ema.model.weight[0, 0].item() < 3.0


def test_learning_rate_warms_up_then_decays_to_the_floor():
    lrs = [learning_rate(s, 1e-3, 1e-5, 10, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert learning_rate(100, 1e-3, 1e-5, 10, 100) == pytest.approx(1e-5)
