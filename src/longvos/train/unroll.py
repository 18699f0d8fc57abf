"""The unrolled training forward of one batch of clips (mavos-spec §5, "Unrolled forward").

Frame 0 is the reference: its mask is embedded and the frame propagates against itself, which starts the memory
(and gives an auxiliary reconstruction loss). Frames 1..T-1 are then predicted one by one, each reading the memory
and being written to it afterwards -- short-term every frame, long-term every δ frames (δ = 2 in training, so the
MCA fuses memories within the clip and learns). The mask written is the ground truth while ``teacher_forcing`` is on,
and the model's own (detached) prediction later in training, which is what the model meets at test time.

It is an ``nn.Module`` so that DistributedDataParallel can wrap it: DDP only synchronises gradients of work done
inside a wrapped module's ``forward``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from longvos.io.masks import VOID
from longvos.models.aot.identity import labels_to_one_hot
from longvos.models.aot.model import AOTModel, ImageFeatures

from .losses import mask_unused_slots, segmentation_loss


@dataclass
class UnrollSettings:
    """What changes over training: the loss schedule and the switch from teacher forcing to own predictions."""

    teacher_forcing: bool
    top_k_fraction: float
    reference_weight: float
    ce_weight: float = 0.5
    jaccard_weight: float = 0.5


class ClipUnroll(nn.Module):
    """``forward(images_BT3HW, labels_BTHW, num_objects_B, settings) -> (loss, stats)`` for an AOT-family model."""

    def __init__(self, model: AOTModel):
        super().__init__()
        self.model = model

    def forward(self, images_BT3HW: torch.Tensor, labels_BTHW: torch.Tensor, num_objects_B: torch.Tensor,
                settings: UnrollSettings) -> tuple[torch.Tensor, dict[str, float]]:
        model = self.model
        batch, frames = images_BT3HW.shape[:2]
        if frames < 2:
            raise ValueError(f"a training clip needs a reference and at least one more frame, got {frames}")
        num_classes = model.config.num_classes
        slot_labels_BTHW, live_BK = assign_random_slots(labels_BTHW, num_objects_B, num_classes)

        # One encoder call for all frames of all clips: larger matrix products, same numbers.
        features = split_features(model.encode_image(images_BT3HW.flatten(0, 1)), batch, frames)

        reference = model.propagate(features[0], id_emb_BNC=model.encode_mask(
            labels_to_one_hot(slot_labels_BTHW[:, 0], num_classes)))
        memory = model.start_memory(reference)
        reference_loss = self._frame_loss(features[0], reference.output_BNC, slot_labels_BTHW[:, 0], live_BK, settings)

        frame_losses, ious = [], []
        for t in range(1, frames):
            propagation = model.propagate(features[t], memory)
            logits_BKhw = model.decode(features[t], propagation.output_BNC)
            labels_BHW = slot_labels_BTHW[:, t]
            frame_losses.append(segmentation_loss(logits_BKhw, labels_BHW, live_BK, settings.top_k_fraction,
                                                  settings.ce_weight, settings.jaccard_weight))
            predicted_BHW = predict_labels(logits_BKhw, live_BK, labels_BHW.shape[-2:], model.config.align_corners)
            ious.append(mean_object_iou(predicted_BHW, labels_BHW, live_BK))
            if t < frames - 1:  # the last frame's memory would never be read
                written_BHW = labels_BHW if settings.teacher_forcing else predicted_BHW
                memory = model.write_memory(memory, propagation, labels_to_one_hot(written_BHW, num_classes))

        loss = torch.stack(frame_losses).mean() + settings.reference_weight * reference_loss
        stats = {"frame_loss": float(torch.stack(frame_losses).detach().mean()),
                 "reference_loss": float(reference_loss.detach()),
                 "iou": float(sum(ious) / len(ious))}
        return loss, stats

    def _frame_loss(self, features: ImageFeatures, output_BNC: torch.Tensor, labels_BHW: torch.Tensor,
                    live_BK: torch.Tensor, settings: UnrollSettings) -> torch.Tensor:
        logits_BKhw = self.model.decode(features, output_BNC)
        return segmentation_loss(logits_BKhw, labels_BHW, live_BK, settings.top_k_fraction,
                                 settings.ce_weight, settings.jaccard_weight)


def assign_random_slots(
    labels_BTHW: torch.Tensor, num_objects_B: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put each sample's objects ``1..n`` into ``n`` random slots of ``1..num_classes-1`` (background stays 0, void
    stays void). Every identity vector is then trained, not just the first few, which matters for videos with many
    objects (the official training permutes the slots the same way). Returns the relabelled maps and the ``(B, K)``
    live-slot mask."""
    batch = labels_BTHW.shape[0]
    if int(num_objects_B.max()) > num_classes - 1:
        raise ValueError(f"a clip has {int(num_objects_B.max())} objects but the model has {num_classes - 1} slots")
    table_BL = torch.zeros(batch, 256, dtype=torch.long, device=labels_BTHW.device)
    table_BL[:, VOID] = VOID
    live_BK = torch.zeros(batch, num_classes, dtype=torch.bool, device=labels_BTHW.device)
    live_BK[:, 0] = True
    for b in range(batch):
        n = int(num_objects_B[b])
        slots = torch.randperm(num_classes - 1, device=labels_BTHW.device)[:n] + 1
        table_BL[b, 1:n + 1] = slots
        live_BK[b, slots] = True
    relabelled_BTHW = torch.stack([table_BL[b][labels_BTHW[b]] for b in range(batch)])
    return relabelled_BTHW, live_BK


def split_features(features: ImageFeatures, batch: int, frames: int) -> list[ImageFeatures]:
    """Features of ``batch * frames`` images (clip-major) -> one :class:`ImageFeatures` per frame index."""
    def per_frame(x: torch.Tensor) -> list[torch.Tensor]:
        return list(x.unflatten(0, (batch, frames)).unbind(dim=1))

    parts = [per_frame(features.s4_BCHW), per_frame(features.s8_BCHW), per_frame(features.s16_BCHW),
             per_frame(features.embedding_BCHW)]
    return [ImageFeatures(*frame_parts) for frame_parts in zip(*parts)]


@torch.no_grad()
def predict_labels(logits_BKhw: torch.Tensor, live_BK: torch.Tensor, size_hw: torch.Size, align_corners: bool
                   ) -> torch.Tensor:
    """The model's own segmentation at the label size (argmax over live slots), as inference would produce it."""
    logits_BKHW = F.interpolate(logits_BKhw.float(), size=size_hw, mode="bilinear", align_corners=align_corners)
    return mask_unused_slots(logits_BKHW, live_BK).argmax(dim=1)


@torch.no_grad()
def mean_object_iou(predicted_BHW: torch.Tensor, labels_BHW: torch.Tensor, live_BK: torch.Tensor) -> float:
    """Mean IoU over the objects of the batch (void pixels excluded): a cheap progress signal for the logs."""
    valid_BHW = labels_BHW != VOID
    ious = []
    for b, k in live_BK[:, 1:].nonzero().tolist():
        slot = k + 1
        pred, true = (predicted_BHW[b] == slot) & valid_BHW[b], labels_BHW[b] == slot
        union = int((pred | true).sum())
        ious.append(int((pred & true).sum()) / union if union else 1.0)
    return sum(ious) / len(ious) if ious else 1.0
