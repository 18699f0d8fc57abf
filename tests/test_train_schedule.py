"""Learning-rate warm-up/poly decay, encoder learning rate, EMA."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from longvos.train.schedule import EMA, default_ema_decay, encoder_learning_rate, learning_rate_at


def test_warmup_then_poly_decay():
    lr = lambda step: learning_rate_at(step, 1000, peak=1e-3, minimum=1e-5, warmup_fraction=0.05, power=0.9)
    assert lr(0) == pytest.approx(1e-5)
    assert lr(25) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert lr(50) == pytest.approx(1e-3)
    assert lr(525) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 ** 0.9)
    assert lr(1000) == pytest.approx(1e-5) and lr(5000) == pytest.approx(1e-5)
    decay = [lr(s) for s in range(50, 1001)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert learning_rate_at(0, 100, 1e-3, 1e-5, 0.0, 0.9) == pytest.approx(1e-3)  # no warm-up


def test_encoder_learning_rate_and_default_decay():
    assert encoder_learning_rate(2e-4, 2e-5, 0.1) == pytest.approx(2e-5 + 0.1 * 1.8e-4)
    assert default_ema_decay(100_000) == pytest.approx(0.9999)


def test_ema_warms_up_then_averages():
    model = nn.Linear(1, 1, bias=False)
    model.register_buffer("count", torch.tensor(3))
    nn.init.constant_(model.weight, 0.0)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.count.fill_(7)
    ema.update(model)  # effective decay min(0.5, 1/10) = 0.1 -> 0.1 * 0 + 0.9 * 1
    assert ema.shadow.weight.item() == pytest.approx(0.9)
    assert ema.shadow.count.item() == 7  # integer buffers are copied
    for _ in range(20):
        ema.update(model)
    assert ema.current_decay() == 0.5
    with torch.no_grad():
        model.weight.fill_(3.0)
    before = ema.shadow.weight.item()
    ema.update(model)
    assert ema.shadow.weight.item() == pytest.approx(0.5 * before + 0.5 * 3.0)
    assert not ema.shadow.weight.requires_grad


def test_ema_state_round_trip():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    ema.update(model)
    other = EMA(nn.Linear(2, 2), decay=0.1)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and other.decay == 0.9
    assert torch.equal(other.shadow.weight, ema.shadow.weight)
    with pytest.raises(ValueError):
        EMA(model, decay=1.0)
