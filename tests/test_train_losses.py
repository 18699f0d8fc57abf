"""Loss values on hand-made cases, and the schedules of the loss terms."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longvos.train.losses import (bootstrapped_cross_entropy, mask_unused_slots, reference_loss_weight,
                                  segmentation_loss, soft_jaccard_loss, top_k_fraction_at)


def live_slots_first(num_objects_B: torch.Tensor, num_channels: int) -> torch.Tensor:
    """``(B, K)`` bool for samples whose objects use slots ``1..n`` (background, channel 0, is always live)."""
    slots_K = torch.arange(num_channels, device=num_objects_B.device)
    return slots_K[None, :] <= num_objects_B[:, None]


def logits_from_probs(probs_KN: list[list[float]], height: int, width: int) -> torch.Tensor:
    return torch.tensor(probs_KN).log().reshape(1, len(probs_KN), height, width)


def test_bootstrapped_ce_keeps_the_hardest_pixels():
    # Four pixels, true class 0 with probabilities 0.9, 0.6, 0.3, 0.1 -> per-pixel CE = -log p.
    p_true = [0.9, 0.6, 0.3, 0.1]
    logits = logits_from_probs([p_true, [1 - p for p in p_true]], 2, 2)
    labels = torch.zeros(1, 2, 2, dtype=torch.long)
    ce = [-math.log(p) for p in p_true]
    assert bootstrapped_cross_entropy(logits, labels, 1.0).item() == pytest.approx(sum(ce) / 4, rel=1e-5)
    assert bootstrapped_cross_entropy(logits, labels, 0.5).item() == pytest.approx((ce[2] + ce[3]) / 2, rel=1e-5)
    assert bootstrapped_cross_entropy(logits, labels, 0.25).item() == pytest.approx(ce[3], rel=1e-5)
    with pytest.raises(ValueError):
        bootstrapped_cross_entropy(logits, labels, 0.0)


def test_void_pixels_count_nowhere():
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[:, 0] = 255
    changed = logits.clone()
    changed[:, :, 0] = torch.randn(2, 3, 4) * 10
    n = live_slots_first(torch.tensor([2, 2]), 3)
    for fn in (lambda x: bootstrapped_cross_entropy(x, labels, 0.3), lambda x: soft_jaccard_loss(x, labels, n)):
        assert fn(logits).item() == pytest.approx(fn(changed).item(), abs=1e-6)
    all_void = torch.full((1, 4, 4), 255)
    assert bootstrapped_cross_entropy(logits[:1], all_void, 1.0).item() == 0.0


def test_soft_jaccard_by_hand():
    labels = torch.tensor([[[0, 0, 1, 1]]])
    uniform = torch.zeros(1, 2, 1, 4)
    # class c: I = 1, U = 2 + 2 - 1 = 3, smoothed J = (1 + 1) / (3 + 1) = 0.5 -> loss 0.5
    assert soft_jaccard_loss(uniform, labels, live_slots_first(torch.tensor([1]), 2)).item() == pytest.approx(0.5)
    perfect = F.one_hot(labels, 2).permute(0, 3, 1, 2).float() * 100
    one_object = live_slots_first(torch.tensor([1]), 2)
    assert soft_jaccard_loss(perfect, labels, one_object).item() == pytest.approx(0.0, abs=1e-6)


def test_unused_slots_are_masked_before_the_softmax():
    labels = torch.tensor([[[0, 1], [1, 0]]])
    two = torch.randn(1, 2, 2, 2)
    with_junk_slot = torch.cat([two, torch.full((1, 1, 2, 2), 50.0)], dim=1)  # slot 2 unused but screaming
    n = live_slots_first(torch.tensor([1]), 3)
    assert mask_unused_slots(with_junk_slot, n)[0, 2].max().item() < -1e3
    expected = segmentation_loss(two, labels, n[:, :2], 1.0).item()
    assert segmentation_loss(with_junk_slot, labels, n, 1.0).item() == pytest.approx(expected, rel=1e-5)


def test_segmentation_loss_upsamples_and_weights_terms():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 8, 8))
    n = live_slots_first(torch.tensor([2, 2]), 3)
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    expected = 0.3 * bootstrapped_cross_entropy(up, labels, 0.5) + 0.7 * soft_jaccard_loss(up, labels, n)
    loss = segmentation_loss(logits, labels, n, 0.5, ce_weight=0.3, jaccard_weight=0.7)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_live_slots_need_not_be_the_first():
    """Objects in slots 3 and 1 of 4: the unused slot 2 is masked, and Jaccard averages over 3 classes."""
    labels = torch.tensor([[[0, 3], [1, 0]]])
    live = torch.tensor([[True, True, False, True]])
    logits = torch.randn(1, 4, 2, 2)
    probs = mask_unused_slots(logits, live).softmax(dim=1)
    assert probs[0, 2].max().item() < 1e-6
    manual = sum(1 - ((probs[0, c] * (labels[0] == c)).sum() + 1) /
                 ((probs[0, c] + (labels[0] == c).float()).sum() - (probs[0, c] * (labels[0] == c)).sum() + 1)
                 for c in (0, 1, 3)) / 3
    loss = soft_jaccard_loss(mask_unused_slots(logits, live), labels, live)
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)


def test_loss_schedules():
    assert top_k_fraction_at(0, 1000, 0.15, 0.5) == 1.0
    assert top_k_fraction_at(250, 1000, 0.15, 0.5) == pytest.approx(0.575)
    assert top_k_fraction_at(500, 1000, 0.15, 0.5) == pytest.approx(0.15)
    assert top_k_fraction_at(900, 1000, 0.15, 0.5) == pytest.approx(0.15)
    assert reference_loss_weight(0, 1000, 1.0, 1.0) == 1.0
    assert reference_loss_weight(500, 1000, 1.0, 1.0) == pytest.approx(0.5)
    assert reference_loss_weight(200, 1000, 1.0, 0.1) == 0.0
