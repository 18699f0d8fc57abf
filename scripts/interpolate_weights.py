"""Interpolate two longvos weight files of the same model: ``(1 - alpha) * A + alpha * B``, written in fp16.

The bundled mavos-lite weights are such an interpolation (WiSE-FT, Wortsman et al. 2022): v3 and its fine-tune v8,
which tracks one object among look-alikes better but lost some single-object accuracy, averaged halfway; ``alpha``
was chosen on the validation split (docs/model-card.md, "v3 + v8").

    python scripts/interpolate_weights.py runs/v3-400.pt runs/v8-500.pt 0.5 mavos-lite.pt
"""
from __future__ import annotations

import argparse
import sys

import torch

from longvos.checkpoints import CheckpointError, read_checkpoint, save_checkpoint


def interpolated(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], alpha: float
                 ) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * first + alpha * second`` for every floating tensor (in fp32); other tensors (counters) are
    ``first``'s. Both must hold the same keys and shapes."""
    if first.keys() != second.keys():
        raise CheckpointError(f"the weights hold different tensors: {sorted(first.keys() ^ second.keys())[:5]}")
    mixed = {}
    for key, a in first.items():
        b = second[key]
        if a.shape != b.shape:
            raise CheckpointError(f"{key}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
        mixed[key] = torch.lerp(a.float(), b.float(), alpha) if a.is_floating_point() else a
    return mixed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", help="longvos weights A")
    parser.add_argument("second", help="longvos weights B, of the same model")
    parser.add_argument("alpha", type=float, help="0 gives A, 1 gives B")
    parser.add_argument("out", help="where the interpolated weights go (fp16)")
    args = parser.parse_args()
    try:
        first, second = read_checkpoint(args.first), read_checkpoint(args.second)
        if first.get("model") != second.get("model"):
            raise CheckpointError(f"weights of {first.get('model')!r} and {second.get('model')!r}")
        save_checkpoint(args.out, interpolated(first["state_dict"], second["state_dict"], args.alpha),
                        first["model"], first.get("config"), half=True)
    except (CheckpointError, OSError, KeyError) as err:
        sys.exit(f"interpolate_weights: {err}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
