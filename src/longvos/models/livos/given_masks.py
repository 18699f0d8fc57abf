"""Merging user-given masks (new or re-anchored objects) into a predicted probability map."""
from __future__ import annotations

import torch


def merge_given_masks(
    prob_BKHW: torch.Tensor, object_ids: list[int], given: dict[int, torch.Tensor]
) -> tuple[torch.Tensor, list[int]]:
    """Let the given masks win where they are set; the prediction fills in the rest.

    ``prob_BKHW``: ``(1, 1 + N, H, W)`` probabilities, channel 0 background then ``object_ids``.
    ``given``: object id -> ``(H, W)`` mask in [0, 1]. A given id already in ``object_ids`` is *re-anchored*
    (its channel becomes the given mask); any other id is new and gets a channel appended, in ``given`` order.

    The channels that were not given share ``1 - union(given)`` in proportion to their predicted probabilities.
    With only new objects this is a plain scaling by ``1 - union``, which for binary masks is exactly the official
    LiVOS rule for objects added mid-video (zero every channel under the new mask, then append it). Re-anchored
    objects first give their predicted mass back to the others (renormalised). The channels sum to one when the
    given masks do not overlap.

    Returns the merged ``(1, 1 + N', H, W)`` map and the ids that were new, in channel order.
    """
    masks_MHW = torch.stack([mask.to(prob_BKHW) for mask in given.values()])
    keep_HW = 1 - masks_MHW.sum(dim=0).clamp(0, 1)
    reanchored = [1 + object_ids.index(object_id) for object_id in given if object_id in object_ids]
    if reanchored:
        rest_BKHW = prob_BKHW.clone()
        rest_BKHW[:, reanchored] = 0
        total_B1HW = rest_BKHW.sum(dim=1, keepdim=True)
        # Where the re-anchored objects held all the mass, what remains goes to the background.
        background_BKHW = torch.zeros_like(rest_BKHW)
        background_BKHW[:, 0] = 1
        prob_BKHW = torch.where(total_B1HW > 0, rest_BKHW / total_B1HW.clamp_min(1e-12), background_BKHW)
    merged_BKHW = prob_BKHW * keep_HW
    appended, new_ids = [], []
    for object_id, mask_HW in zip(given, masks_MHW):
        if object_id in object_ids:
            merged_BKHW[:, 1 + object_ids.index(object_id)] = mask_HW
        else:
            appended.append(mask_HW[None, None])
            new_ids.append(object_id)
    return torch.cat([merged_BKHW, *appended], dim=1), new_ids
