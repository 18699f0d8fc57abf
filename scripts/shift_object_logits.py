"""Shift an AOT-family model's object logits by a constant: ``OFFSET`` is added to the decoder classifier's bias of
every object slot (the background's is kept), written in fp16.

For two classes this moves the decision threshold: a pixel goes to the object where ``p_object > 1 / (1 + e^OFFSET)``
instead of 0.5 (0.438 for 0.25). The bundled mavos-lite weights are the v3 + v8 average shifted by 0.25, chosen on the
validation split (docs/model-card.md, "The object threshold"): the trained weights leave their masks a little short
of the objects (the bootstrapped cross-entropy of their training ends on the hardest pixels, which shrinks masks).

    python scripts/shift_object_logits.py runs/v3-v8-50.pt 0.25 mavos-lite.pt
"""
from __future__ import annotations

import argparse
import sys

import torch

from longvos.checkpoints import CheckpointError, read_weights_file, save_checkpoint

BIAS_KEY = "decoder.classifier.bias"  # (1 + max_objects,): background, then one per object slot


def shifted(state_dict: dict[str, torch.Tensor], offset: float) -> dict[str, torch.Tensor]:
    """``state_dict`` with ``offset`` added to the object slots' classifier bias (in fp32)."""
    if BIAS_KEY not in state_dict:
        raise CheckpointError(f"no {BIAS_KEY}: not the weights of an AOT-family model")
    bias = state_dict[BIAS_KEY].float().clone()
    bias[1:] += offset
    return {**state_dict, BIAS_KEY: bias}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", help="longvos weights of an AOT-family model")
    parser.add_argument("offset", type=float, help="added to every object slot's logit (0: unchanged)")
    parser.add_argument("out", help="where the shifted weights go (fp16)")
    args = parser.parse_args()
    try:
        checkpoint = read_weights_file(args.weights)
        save_checkpoint(args.out, shifted(checkpoint["state_dict"], args.offset), checkpoint["model"],
                        checkpoint.get("config"), half=True)
    except (CheckpointError, OSError, KeyError) as err:
        sys.exit(f"shift_object_logits: {err}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
