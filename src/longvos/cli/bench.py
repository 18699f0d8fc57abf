"""`longvos bench --model NAME --clip DATA_ROOT`: speed and memory against video length for each memory design.

A real clip (a DAVIS-layout sequence) is streamed looped forwards and backwards to each length in `--frames`.
Prints per design and length the median and p95 per-frame latency, FPS (model step + memory update, reference
frame excluded), the per-video model state and peak memory, then the MAVOS paper's ratios (speed-up and memory
saving of `mca` over `growing`). `--json` saves everything, `--plot` draws the paper's two curves.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from longvos.cli.main import CommandError


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name (see `longvos models`)")
    parser.add_argument("--checkpoint", type=Path, help="longvos or official checkpoint (default: bundled weights; "
                                                        "random weights time the same)")
    parser.add_argument("--memory", help="comma-separated memory designs, e.g. mca,growing,ref+prev "
                                         "(default: the model's own)")
    parser.add_argument("--frames", type=_int_list, default=[100, 500, 2000], help="video lengths (default "
                                                                                   "100,500,2000)")
    parser.add_argument("--size", "--max-size", dest="size", type=int, default=480,
                        help="short side of the frames the network sees (default 480; 0 = the clip's own)")
    parser.add_argument("--clip", type=Path, required=True,
                        help="dataset in the DAVIS layout holding the clip (e.g. a DAVIS-2016 dev set)")
    parser.add_argument("--sequence", help="which sequence of --clip (default: the first by name)")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default=None, help="autocast compute dtype: fp32 (default), bf16 or fp16")
    parser.add_argument("--mem-gap", type=int, help="frames between long-term memory updates (default: model's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; always reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed warm-up frames per design (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed set before each model is built (default 0)")
    parser.add_argument("--time-budget", type=float, help="seconds per design; lengths not reached in time are "
                                                          "left out and noted")
    parser.add_argument("--json", type=Path, help="write the full report as JSON")
    parser.add_argument("--plot", type=Path, help="draw FPS and memory against length (PNG, needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import torch

    from longvos.eval.bench import Clip, plot_curves, run_benchmark
    from longvos.io.errors import InputError

    if args.threads is not None:
        if args.threads < 1:
            raise CommandError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    memories = [m.strip() for m in args.memory.split(",") if m.strip()] if args.memory else [None]
    try:
        clip = Clip.from_dataset(args.clip, args.sequence, args.size or None)
        report = run_benchmark(
            args.model, clip, memories=memories, lengths=args.frames, checkpoint=args.checkpoint,
            device=args.device, dtype=args.dtype, mem_gap=args.mem_gap, size=args.size or None,
            warmup=args.warmup, seed=args.seed, time_budget_s=args.time_budget,
            progress=not args.quiet and sys.stderr.isatty(),
        )
        if args.plot:
            plot_curves(report, args.plot)
    except (InputError, OSError) as err:
        raise CommandError(str(err)) from None
    except (KeyError, ValueError) as err:  # unknown model or memory design, bad dtype
        raise CommandError(str(err).strip("'\"")) from None

    env = report.environment
    height, width = clip.frames[0].shape[:2]
    print(f"{report.model} on clip {clip.name} ({len(clip.frames)} frames, looped; {width}x{height}), "
          f"{env['device']}, {env['dtype']}, {env['torch_threads']} threads, warm-up {report.warmup} frames, "
          f"seed {report.seed}")
    print(report.format_table())
    for note in report.notes:
        print(f"note: {note}")
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0
