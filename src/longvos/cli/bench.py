"""`longvos bench --model NAME[:MEMORY],...`: speed and memory against video length for each design.

A real clip (by default the demo clip; or a DAVIS-layout sequence, or any video with its first mask) is streamed
looped forwards and backwards to each length in `--frames`. A design is a model with a memory design:
`--model mavos-mnv2 --memory mca,growing`, or several models side by side,
`--model livos-r50,mavos-r50:mca,deaot-r50:growing`.
Prints per design and length, as soon as it is reached, the median and p95 per-frame latency, FPS (model step +
memory update, reference frame excluded), the per-video model state and peak memory; then the table and the
papers' ratios (speed-up and memory saving of every design over the `growing` one). `--json` saves everything
(rewritten after every length, so a long run keeps what it measured), `--plot` draws the paper's two curves.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from longvos.cli.main import CommandError
from longvos.cli.options import add_compute_options, add_model_options, apply_threads

if TYPE_CHECKING:  # only for annotations: the CLI imports its heavy modules when a command runs
    from longvos.eval.bench import BenchReport
    from longvos.eval.clip import Clip


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="comma-separated models (see `longvos models`), each optionally with its memory design: "
                             "mavos-r50:mca,deaot-r50:growing,livos-r50")
    add_model_options(parser, model=False, memory=False, random_weights=False)  # benchmarks allow random weights
    parser.add_argument("--memory", help="comma-separated memory designs, e.g. mca,growing,ref+prev, for every model "
                                         "that names none (default: the model's own)")
    parser.add_argument("--frames", type=_int_list, default=[100, 500, 2000], help="video lengths (default "
                                                                                   "100,500,2000)")
    parser.add_argument("--clip", type=Path,
                        help="a DAVIS-layout dataset (JPEGImages/, Annotations/; pick with --sequence), or a video "
                             "file or frame folder (with --mask). Default: the demo clip (Big Buck Bunny, "
                             "needs longvos[demo]) and its bundled mask")
    parser.add_argument("--sequence", help="with a DAVIS-layout --clip: which sequence (default: the first by name)")
    parser.add_argument("--mask", type=Path, help="with a video --clip: the first frame's index-mask PNG")
    parser.add_argument("--mem-gap", type=int, help="frames between long-term memory updates (default: model's)")
    # One size for every design: the papers' 480p (models.base.PAPER_MAX_SIZE, not imported: the CLI loads no torch).
    add_compute_options(parser, max_size_default=480, part_distance=False)  # the model step alone
    parser.add_argument("--warmup", type=int, default=5, help="untimed warm-up frames per design (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed set before each model is built (default 0)")
    parser.add_argument("--interleave", action="store_true",
                        help="step the designs in lockstep, frame by frame: fair speed ratios on a machine whose "
                             "load changes (per-design process peak memory is then not measured)")
    parser.add_argument("--time-budget", type=float, help="seconds per design; lengths not reached in time are "
                                                          "left out and noted")
    parser.add_argument("--json", type=Path, help="write the full report as JSON")
    parser.add_argument("--plot", type=Path, help="draw FPS and memory against length (PNG, needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from longvos.eval.bench import Design, LengthPoint, format_point, run_benchmark
    from longvos.eval.plot import plot_curves

    apply_threads(args.threads)

    def save_so_far(report: BenchReport, point: LengthPoint) -> None:
        tqdm.write("reached: " + "  ".join(format_point(point)))
        if args.json:
            _write_json(report, args.json)

    designs = Design.parse_list(args.model, args.memory)
    clip = _load_clip(args)
    report = run_benchmark(
        designs, clip, lengths=args.frames, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype,
        mem_gap=args.mem_gap, warmup=args.warmup, seed=args.seed, interleave=args.interleave,
        time_budget_s=args.time_budget, progress=not args.quiet, on_point=save_so_far,
    )
    if args.plot:
        plot_curves(report, args.plot)

    env = report.environment
    width, height = report.frame_size
    gaps = ", ".join(f"{label} {gap}" for label, gap in report.mem_gaps.items())
    print(f"{report.models} (memory gap: {gaps}) on clip {clip.name} ({len(clip.frames)} frames looped "
          f"forwards and backwards, {width}x{height}); {env['device']}, {env['dtype']}, {env['torch_threads']} "
          f"threads, {report.warmup} warm-up frames, seed {report.seed}")
    print(report.format_table())
    for note in report.notes:
        print(f"note: {note}")
    if args.json:
        _write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def _write_json(report: BenchReport, path: Path) -> None:
    """Replace ``path`` whole (write then rename): a reader never sees a half-written report."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    partial.replace(path)


def _load_clip(args: argparse.Namespace) -> Clip:
    """The clip that --clip, --sequence and --mask name; without --clip, the demo clip and its bundled mask."""
    from longvos.eval.clip import Clip

    if args.max_size == "auto":
        raise CommandError("--size auto: bench feeds every design the same frames, so give a number of pixels "
                           "(or 0 for the clip's own size)")
    size = args.max_size
    if args.clip is None:
        from longvos.cli.demo import FIRST_FRAME_MASK, sample_video

        if args.sequence or args.mask:
            raise CommandError("--sequence and --mask need --clip")
        return Clip.from_video(sample_video(), FIRST_FRAME_MASK, size)
    if (args.clip / "Annotations").is_dir():
        if args.mask:
            raise CommandError("--mask is for a video --clip; a DAVIS-layout clip uses its own annotation")
        return Clip.from_dataset(args.clip, args.sequence, size)
    if args.mask is None:
        raise CommandError(f"{args.clip}: a video clip needs --mask (its first frame's mask); or pass a "
                           f"DAVIS-layout dataset")
    if args.sequence:
        raise CommandError("--sequence is for a DAVIS-layout --clip")
    return Clip.from_video(args.clip, args.mask, size)
