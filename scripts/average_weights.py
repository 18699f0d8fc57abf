"""Average longvos weight files of the same model, tensor by tensor, written in fp16 (a "model soup").

Fine-tunes of one model stay close enough in weight space that their average is a model too, and often a better
one than each (Wortsman et al. 2022: WiSE-FT for a model and its fine-tune, model soups for several fine-tunes).
The bundled mavos-lite weights are this script's halfway average of v3 and its fine-tune v8 (bit for bit the file
the model card scored), with the object logits then shifted by 0.25 (``scripts/shift_object_logits.py``); the
average was chosen on the validation split (docs/model-card.md, "v3 + v8"). A soup of v3 and five of its
descendants was tried there too and not shipped ("Tried after the threshold").

    python scripts/average_weights.py runs/v3-400.pt runs/v8-500.pt --out v3-v8.pt           # halfway
    python scripts/average_weights.py runs/v3-400.pt runs/v8-500.pt --mix 0.7 0.3 --out w.pt  # 0.7 v3 + 0.3 v8
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import torch

from longvos.checkpoints import CheckpointError, read_weights_file, save_checkpoint


def averaged(state_dicts: Sequence[dict[str, torch.Tensor]], mix: Sequence[float] | None = None
             ) -> dict[str, torch.Tensor]:
    """The ``mix``-weighted mean (uniform when None; the weights are normalised to sum 1) of every floating tensor,
    in fp32; other tensors (counters) are the first's. All must hold the same keys and shapes."""
    if not state_dicts:
        raise CheckpointError("no weights to average")
    mix = [1.0] * len(state_dicts) if mix is None else list(mix)
    if len(mix) != len(state_dicts) or not all(math.isfinite(share) and share >= 0 for share in mix) or sum(mix) <= 0:
        raise CheckpointError(f"the mix needs {len(state_dicts)} finite non-negative shares, not all 0; got {mix}")
    first = state_dicts[0]
    for other in state_dicts[1:]:
        if other.keys() != first.keys():
            raise CheckpointError(f"the weights hold different tensors: {sorted(first.keys() ^ other.keys())[:5]}")
    total = sum(mix)
    mean = {}
    for key, tensor in first.items():
        for other in state_dicts[1:]:
            if other[key].shape != tensor.shape:
                raise CheckpointError(f"{key}: shape {tuple(tensor.shape)} vs {tuple(other[key].shape)}")
        if tensor.is_floating_point():
            mean[key] = sum(share / total * sd[key].float() for share, sd in zip(mix, state_dicts))
        else:
            mean[key] = tensor
    return mean


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", nargs="+", help="longvos weight files of one model")
    parser.add_argument("--mix", type=float, nargs="+", default=None,
                        help="one share per weight file (normalised to sum 1; default: equal shares)")
    parser.add_argument("--out", required=True, help="where the averaged weights go (fp16)")
    args = parser.parse_args()
    try:
        checkpoints = [read_weights_file(path) for path in args.weights]
        models = {checkpoint.get("model") for checkpoint in checkpoints}
        if len(models) != 1:
            raise CheckpointError(f"weights of different models: {sorted(map(str, models))}")
        first = checkpoints[0]
        save_checkpoint(args.out, averaged([c["state_dict"] for c in checkpoints], args.mix), first["model"],
                        first.get("config"), half=True)
    except (CheckpointError, OSError, KeyError) as err:
        sys.exit(f"average_weights: {err}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
