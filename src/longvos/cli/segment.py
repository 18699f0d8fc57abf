"""`longvos segment VIDEO --mask PATH --out DIR`: segment objects through a video, one palette PNG per frame.

VIDEO is a video file, a folder of jpg/png frames or a quoted glob. `--mask PATH` gives the first frame's mask;
`--mask PATH@N` gives frame N's (for objects that appear later). `--box x0,y0,x1,y1` (repeatable) makes the first
mask with GrabCut instead. Masks are written as they are computed, named after the source frames; `--resume`
continues an interrupted run from its last complete frame.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from longvos.cli.main import CommandError
from longvos.cli.options import add_compute_options, add_model_options, apply_threads, segment_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="video file (mp4/mov/mkv/webm), folder of jpg/png frames, or a quoted glob")
    parser.add_argument("--mask", action="append", default=[], metavar="PATH[@FRAME]",
                        help="index-mask PNG for the first frame processed, or for frame index FRAME (repeatable)")
    parser.add_argument("--box", action="append", default=[], metavar="x0,y0,x1,y1",
                        help="make the first frame's mask with GrabCut, one object per box (repeatable)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for the per-frame PNGs")
    parser.add_argument("--overlay", type=Path, help="also write an overlay video (mp4/mov/mkv/webm)")
    add_model_options(parser)
    add_compute_options(parser)
    parser.add_argument("--start", type=int, default=0, help="first frame index to process (default 0)")
    parser.add_argument("--end", type=int, default=None, help="frame index to stop before (default: the end)")
    parser.add_argument("--reverse", action="store_true", help="process from the last frame back to the first")
    parser.add_argument("--per-object", action="store_true", help="also write objects/<id>/<frame>.png (0/255)")
    parser.add_argument("--probs", action="store_true", help="also write probs/<frame>.npz (float16 probabilities)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run into the same --out (with the CPU thread count it "
                             "recorded, unless --threads is given)")
    parser.add_argument("--snapshot-every", type=int, default=None, metavar="N",
                        help="save the model state every N frames, which --resume restores so that a resumed run "
                             "writes the same bytes as an uninterrupted one (default 25; 0: never; never for a memory "
                             "that grows with the video, such as DeAOT's growing: resume then recomputes)")
    parser.add_argument("--overwrite", action="store_true",
                        help="reuse a non-empty --out: first delete the files an earlier longvos run wrote there "
                             "(masks, per-object masks, probs, overlay, records), leaving anything else; refused if "
                             "other files remain there")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_mask_argument(text: str) -> tuple[int | None, Path]:
    """``PATH`` -> (None, PATH); ``PATH@FRAME`` -> (FRAME, PATH). A path that itself contains '@' still works."""
    path, at, frame = text.rpartition("@")
    if at and frame.isdigit():
        return int(frame), Path(path)
    return None, Path(text)


def run(args: argparse.Namespace) -> int:
    # Heavy imports (torch, PyAV) happen only when the command actually runs.
    from longvos.engine.outputs import check_output_folder
    from longvos.engine.pipeline import segment_video
    from longvos.prompts import parse_box

    masks: dict[int | None, Path] = {}
    for text in args.mask:
        frame, path = parse_mask_argument(text)
        if frame in masks:
            raise CommandError(f"two masks for {'the first frame' if frame is None else f'frame {frame}'}")
        masks[frame] = path
    # Checked here only to name the flag; segment_video checks the folder (and the overlay path) before the model
    # loads as well, so a run that could not write its outputs never fails after segmenting the whole video.
    check_output_folder(args.out, "--out")
    apply_threads(args.threads)
    snapshot = {} if args.snapshot_every is None else {"snapshot_every": args.snapshot_every}
    options = segment_options(args, start=args.start, end=args.end, reverse=args.reverse, per_object=args.per_object,
                              save_probs=args.probs, progress=not args.quiet, **snapshot)  # threads: None on resume
    with warnings.catch_warnings():
        # Warnings (e.g. random weights) as one readable line instead of a source location.
        warnings.showwarning = lambda message, *_args, **_kwargs: print(
            f"longvos segment: warning: {message}", file=sys.stderr)
        summary = segment_video(str(args.video), masks, args.out, options,
                                boxes=[parse_box(text) for text in args.box] or None, overlay=args.overlay,
                                resume=args.resume, overwrite=args.overwrite)
    if summary.notes:
        print(f"{args.out}: {'; '.join(summary.notes)}")
    else:
        print(f"segmented {summary}")
    return 0
