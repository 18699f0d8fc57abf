"""Does a model follow the objects it is given, or only what stands out? Two numbers per multi-object sequence.

Semi-supervised VOS means following *these* objects: each object's identity comes from the reference mask, and a
look-alike that is not in it is background. A model that has learnt foreground instead (what stands out) still
scores well on one-object sequences, but it cannot tell two given objects apart, and it marks look-alikes. This
script measures that directly, with the public session API, on a DAVIS-layout sequence with two or more objects:

- *swap following*: segment frame ``t`` from the reference frame's mask, then again from the same mask with the ids
  of the two largest objects exchanged. A model that uses the identities gives back the exchanged labels: the share
  of those objects' pixels (in the first run) whose label the exchange moved with them. 1.0 = identities followed,
  about 0 = the labels stay where they were (the identity given makes no difference).
- *object J*: the mean J of each object over the frames ``1..t`` (each object scored against its own ground truth).

A model run with one object per pass (``mavos-lite``'s default, ``objects_per_pass=1``) follows the exchange by
construction: each object is alone in its own pass. To see whether the *weights* tell objects apart, pack the
objects into one pass with ``--objects-per-pass 10`` (what the GPU run's weights are checked with).

    python scripts/identity_check.py ../shared/data/train/davis2017-multi-240p dogs-jump --model mavos-lite
    python scripts/identity_check.py DATA SEQ --model mavos-mnv2 --checkpoint mavos_mnv2.pth --frames 10
    python scripts/identity_check.py DATA SEQ --checkpoint runs/gpu10-1000.pt --objects-per-pass 10
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image

from longvos import load_segmenter
from longvos.engine.segmenter import Segmenter
from longvos.models.registry import create_model
from longvos.eval.masks import ground_truth_ids
from longvos.eval.metrics import region_similarity
from longvos.io.davis import DavisLayout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_root", help="dataset in the DAVIS layout")
    parser.add_argument("sequence", help="a sequence whose first annotated frame has two or more objects")
    parser.add_argument("--model", default="mavos-lite")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--frames", type=int, default=10, help="frames after the reference to segment (t)")
    parser.add_argument("--max-size", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--objects-per-pass", type=int, default=None,
                        help="AOT family: objects sharing one pass (default: the model's; 10 packs them as the "
                             "official engine does, which tests the weights' identities)")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="run a model that ships no weights with random ones (to see the check can move)")
    args = parser.parse_args()

    layout = DavisLayout.of(args.data_root)
    annotations = layout.annotations(args.sequence)  # in temporal order; the first one is the reference
    if not annotations:
        sys.exit(f"{args.sequence}: no annotations in {layout.annotations_root / args.sequence}")
    names = layout.frame_names(args.sequence)
    images = {path.stem: path for path in layout.frames_dir(args.sequence).iterdir()}
    start = annotations[0].stem
    if start not in images:
        sys.exit(f"{args.sequence}: the reference annotation {annotations[0].name} has no frame image")
    frame_paths = [images[name] for name in names[names.index(start):][: args.frames + 1]]
    reference = ground_truth_ids(annotations[0])
    ids, counts = np.unique(reference[reference > 0], return_counts=True)
    if len(ids) < 2:
        sys.exit(f"{args.sequence}: its first annotated frame has {len(ids)} object(s); this check needs two or more")
    first, second = (int(i) for i in ids[np.argsort(-counts)[:2]])
    exchanged = reference.copy()
    exchanged[reference == first], exchanged[reference == second] = second, first

    segmenter = load_segmenter(args.model, args.checkpoint, device=args.device,
                               allow_random_weights=args.allow_random_weights)
    if args.objects_per_pass is not None:  # the same weights, objects shared among passes otherwise
        if not hasattr(segmenter.model.config, "pass_capacity"):
            sys.exit(f"--objects-per-pass: {args.model} does not run its objects in passes (AOT-family models do)")
        try:
            packed = create_model(args.model, objects_per_pass=args.objects_per_pass)
        except ValueError as err:
            sys.exit(f"--objects-per-pass: {err}")
        packed.load_state_dict(segmenter.model.state_dict())
        segmenter = Segmenter(packed, device=segmenter.device, dtype=segmenter.dtype)
    max_size = args.max_size if args.max_size == "auto" else int(args.max_size)

    def masks_of(given: np.ndarray) -> list[np.ndarray]:
        # Far parts off: this measures what the network follows, not what the engine keeps of it.
        with segmenter.session(max_size=max_size, max_part_distance=None) as session:
            return [session.step(np.array(Image.open(path).convert("RGB")), mask=given if index == 0 else None).mask
                    for index, path in enumerate(frame_paths)]

    plain, swapped = masks_of(reference), masks_of(exchanged)
    last, last_swapped = plain[-1], swapped[-1]
    moved = [np.mean(last_swapped[last == own] == other) for own, other in ((first, second), (second, first))
             if (last == own).any()]
    scored = {path.stem for path in frame_paths[1:]}
    truths = {path.stem: ground_truth_ids(path) for path in annotations if path.stem in scored}
    scores = {int(obj): [] for obj in ids}
    for path, mask in zip(frame_paths[1:], plain[1:]):
        truth = truths.get(path.stem)
        if truth is None:
            continue
        for obj in scores:
            scores[obj].append(region_similarity(mask == obj, truth == obj))
    capacity = getattr(segmenter.model.config, "pass_capacity", None)
    packing = "" if capacity is None else f" ({capacity} object{'s' if capacity > 1 else ''} per pass)"
    print(f"{args.sequence}, {args.model}{packing}, frame {len(frame_paths) - 1}: swap following "
          f"{np.mean(moved) if moved else float('nan'):.3f} (objects {first} and {second}); object J "
          + ", ".join(f"{obj}: {np.mean(values):.3f}" for obj, values in scores.items() if values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
