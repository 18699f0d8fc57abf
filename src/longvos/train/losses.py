"""Per-frame segmentation loss: bootstrapped cross-entropy + soft Jaccard (mavos-spec §5, "Loss").

Logits carry ``1 + max_objects`` channels but a sample uses only some of them (its objects sit in randomly drawn
slots, see :mod:`longvos.train.unroll`); ``live_BK`` says which. The others are masked out before any softmax, so an
empty slot can neither win pixels nor leak probability. Void pixels (255) count in neither term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from longvos.io.masks import VOID

#: Logit given to slots a sample does not use (finite, so that 0 * it stays 0 in the gradients).
MASKED_LOGIT = -1e4


def mask_unused_slots(logits_BKHW: torch.Tensor, live_BK: torch.Tensor) -> torch.Tensor:
    return logits_BKHW.masked_fill(~live_BK[:, :, None, None], MASKED_LOGIT)


def bootstrapped_cross_entropy(
    logits_BKHW: torch.Tensor, labels_BHW: torch.Tensor, top_k_fraction: float
) -> torch.Tensor:
    """Mean cross-entropy of the hardest ``top_k_fraction`` of each sample's valid pixels (1.0 = plain CE)."""
    if not 0.0 < top_k_fraction <= 1.0:
        raise ValueError(f"top_k_fraction must be in (0, 1], got {top_k_fraction}")
    pixel_loss_BN = F.cross_entropy(logits_BKHW.float(), labels_BHW, ignore_index=VOID, reduction="none").flatten(1)
    valid_BN = labels_BHW.flatten(1) != VOID
    losses = []
    for loss_N, valid_N in zip(pixel_loss_BN, valid_BN):
        values = loss_N[valid_N]
        if values.numel() == 0:
            losses.append(loss_N.sum() * 0.0)  # keeps the graph; a fully void frame teaches nothing
            continue
        k = max(1, int(round(values.numel() * top_k_fraction)))
        losses.append(values.topk(k, sorted=False).values.mean() if k < values.numel() else values.mean())
    return torch.stack(losses).mean()


def soft_jaccard_loss(logits_BKHW: torch.Tensor, labels_BHW: torch.Tensor, live_BK: torch.Tensor) -> torch.Tensor:
    """1 - soft IoU between the softmax and the one-hot labels, averaged over the classes a sample uses
    (background and its objects), then over the batch. Expects unused slots already masked."""
    probs_BKHW = logits_BKHW.float().softmax(dim=1)
    valid_B1HW = (labels_BHW != VOID)[:, None]
    target_BKHW = F.one_hot(labels_BHW.clamp(max=probs_BKHW.shape[1] - 1).masked_fill(labels_BHW == VOID, 0),
                            probs_BKHW.shape[1]).permute(0, 3, 1, 2).float()
    probs_BKHW = probs_BKHW * valid_B1HW
    target_BKHW = target_BKHW * valid_B1HW
    intersection_BK = (probs_BKHW * target_BKHW).sum(dim=(2, 3))
    union_BK = (probs_BKHW + target_BKHW).sum(dim=(2, 3)) - intersection_BK
    jaccard_BK = (intersection_BK + 1.0) / (union_BK + 1.0)  # +1 smooths classes absent from the frame
    used_BK = live_BK.float()
    per_sample_B = ((1.0 - jaccard_BK) * used_BK).sum(dim=1) / used_BK.sum(dim=1)
    return per_sample_B.mean()


def segmentation_loss(
    logits_BKHW: torch.Tensor,
    labels_BHW: torch.Tensor,
    live_BK: torch.Tensor,
    top_k_fraction: float,
    ce_weight: float = 0.5,
    jaccard_weight: float = 0.5,
) -> torch.Tensor:
    """The loss of one frame. Logits at any resolution are upsampled (bilinear) to the label size first."""
    if logits_BKHW.shape[-2:] != labels_BHW.shape[-2:]:
        logits_BKHW = F.interpolate(logits_BKHW, size=labels_BHW.shape[-2:], mode="bilinear", align_corners=False)
    logits_BKHW = mask_unused_slots(logits_BKHW, live_BK)
    return (ce_weight * bootstrapped_cross_entropy(logits_BKHW, labels_BHW, top_k_fraction)
            + jaccard_weight * soft_jaccard_loss(logits_BKHW, labels_BHW, live_BK))


def top_k_fraction_at(step: int, total_steps: int, final: float, anneal_fraction: float) -> float:
    """Hard-pixel fraction: 1.0 at step 0, linearly down to ``final`` at ``anneal_fraction`` of training, then flat."""
    anneal_steps = anneal_fraction * total_steps
    if anneal_steps <= 0:
        return final
    progress = min(step / anneal_steps, 1.0)
    return 1.0 + (final - 1.0) * progress


def reference_loss_weight(step: int, total_steps: int, weight: float, fraction: float) -> float:
    """Weight of the auxiliary reference-frame loss: ``weight`` at step 0, linearly to 0 at ``fraction`` of training."""
    if fraction <= 0:
        return 0.0
    return weight * max(1.0 - step / (fraction * total_steps), 0.0)
