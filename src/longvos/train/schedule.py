"""Learning-rate schedule (linear warm-up, then poly decay) and an exponential moving average of the weights."""
from __future__ import annotations

import copy

import torch
from torch import nn


def learning_rate_at(
    step: int, total_steps: int, peak: float, minimum: float, warmup_fraction: float, power: float
) -> float:
    """``minimum -> peak`` linearly over the warm-up, then ``minimum + (peak - minimum) * (1 - p) ** power`` where
    ``p`` is the progress through the remaining steps (mavos-spec §5: warm-up 5 %, poly 0.9)."""
    warmup_steps = int(round(warmup_fraction * total_steps))
    if step < warmup_steps:
        return minimum + (peak - minimum) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return minimum + (peak - minimum) * (1.0 - progress) ** power


def encoder_learning_rate(lr: float, minimum: float, ratio: float) -> float:
    """The encoder moves slower: ``minimum + ratio * (lr - minimum)`` (ImageNet features are worth keeping)."""
    return minimum + ratio * (lr - minimum)


def default_ema_decay(total_steps: int) -> float:
    """The official rule: the EMA averages over about a tenth of training, ``1 - 1 / (0.1 * steps)``."""
    return 1.0 - 1.0 / max(0.1 * total_steps, 1.0)


class EMA:
    """Exponential moving average of a model's parameters and float buffers.

    The effective decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the average follows the model
    closely at first instead of remembering its random initialisation for thousands of steps.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = copy.deepcopy(model).eval()
        for parameter in self.shadow.parameters():
            parameter.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.updates += 1
        source = model.state_dict()
        for name, average in self.shadow.state_dict().items():
            value = source[name].detach()
            if average.dtype.is_floating_point:
                average.lerp_(value.to(average.dtype), 1.0 - decay)
            else:  # integer buffers (counters, indices) are copied, not averaged
                average.copy_(value)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "weights": self.shadow.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """The saved average, update count and decay. The saved decay wins over the one this EMA was built with, so
        that a resume continues the average exactly as it was: a resume refuses a changed ``optim.ema_decay``
        (:data:`longvos.train.config.RESUME_MAY_CHANGE`), and with the default rule (``optim.ema_decay = 0``) a
        ``--resume optim.steps=N`` stretches the learning-rate schedules but keeps the decay the run started with."""
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.shadow.load_state_dict(state["weights"])
