"""`longvos eval DATA_ROOT --pred DIR | --model NAME`: DAVIS-exact J&F of predictions, or of a model's run.

DATA_ROOT is in the DAVIS layout (`JPEGImages/<seq>/`, `Annotations/<seq>/`; sparse annotations are fine). With
`--pred`, the PNGs in `DIR/<seq>/` are scored. With `--model`, the model first runs over every sequence (given the
first annotated frame's objects, and with `--objects all` also each later object on the frame it appears), its
masks are written to `OUT/predictions/<seq>/` (each sequence's folder replaced as a whole once every sequence is
done, so that it never mixes two runs' masks; a folder holding files longvos did not write, or an OUT holding
anything but eval's outputs, is refused, never cleared), and its speed and peak memory are measured with the papers'
protocol. Prints a table and writes `global_results.csv`, `per-sequence_results.csv` (one row per object) and
`summary.json` into OUT.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from longvos.cli.main import CommandError
from longvos.cli.options import add_compute_options, add_model_options, apply_threads, segment_options

if TYPE_CHECKING:  # only for annotations: the CLI imports its heavy modules when a command runs
    from longvos.eval.runner import RunReport
    from longvos.io.davis import DavisLayout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_root", type=Path, help="dataset in the DAVIS layout (Annotations/<seq>/*.png), or a "
                                                     "folder holding one such dataset")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred", type=Path, help="folder of predictions, <seq>/<frame>.png, to score")
    source.add_argument("--model", help="run this model first (see `longvos models`), then score its masks")
    add_model_options(parser, prefix="with --model: ", model=False)
    parser.add_argument("--out", type=Path, help="where reports (and --model predictions) go; default: the --pred "
                                                 "folder, or runs/eval/<model> with --model")
    parser.add_argument("--sequences", help="comma-separated sequence names, or a text file with one per line "
                                            "(default: every sequence in Annotations/)")
    parser.add_argument("--objects", choices=("first-frame", "all"), default="first-frame",
                        help="first-frame: objects of the first annotated frame, as the official DAVIS evaluator "
                             "(default); all: also objects that appear later (LVOS, YouTube-VOS)")
    parser.add_argument("--decay", choices=("int64", "official-uint8"), default="int64",
                        help="decay bin edges: int64 (correct, default) or official-uint8 (the official code's "
                             "numbers, wrong from 256 scored frames on; for comparison with published tables)")
    parser.add_argument("-j", "--workers", type=int, default=None, help="scoring processes (default: CPU cores)")
    add_compute_options(parser, prefix="with --model: ")
    parser.add_argument("--brief", action="store_true", help="print only the global row, not one row per object")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _sequence_names(text: str | None) -> list[str] | Path | None:
    if text is None:
        return None
    if Path(text).is_file():
        return Path(text)
    return [name.strip() for name in text.split(",") if name.strip()]


def run(args: argparse.Namespace) -> int:
    # Heavy imports only when the command runs (`longvos --help` stays fast).
    from longvos.device import DEFAULT_DTYPE
    from longvos.engine.outputs import check_output_folder, hold_output_folder
    from longvos.eval.dataset import find_sequences, resolve_sequence_names
    from longvos.eval.report import format_table, write_reports
    from longvos.eval.runner import check_eval_output_folder, check_report_folder, log_reports
    from longvos.eval.scoring import evaluate_sequences
    from longvos.io.davis import DavisLayout
    from longvos.io.errors import InputError

    if args.pred is not None:
        for option in ("checkpoint", "memory", "mem_gap", "dtype", "threads"):
            if getattr(args, option) not in (None, DEFAULT_DTYPE if option == "dtype" else None):
                raise CommandError(f"--{option.replace('_', '-')} only applies with --model")
        if args.allow_random_weights:
            raise CommandError("--allow-random-weights only applies with --model")
        for option in ("max_size", "max_part_distance"):
            if getattr(args, option) != "auto":
                raise CommandError(f"--{option.replace('_', '-')} only applies with --model (the predictions are "
                                   f"scored as they are)")
    progress = not args.quiet
    layout = DavisLayout.at(args.data_root)
    if layout.root != args.data_root:
        print(f"dataset: {layout.root}")
    names = resolve_sequence_names(layout.annotations_root, _sequence_names(args.sequences))
    extra = {}
    if args.model is not None:
        out_dir, pred_root = args.out or Path("runs") / "eval" / args.model, None
    else:
        out_dir, pred_root, run_report = args.out or args.pred, args.pred, None
        if not pred_root.is_dir():  # before the lock below makes it
            raise InputError(f"{pred_root}: prediction folder does not exist")
    # Held from before the folder is judged to the last report: a second eval into it (the default --out is shared
    # by every run of a model) is refused at once instead of mixing its masks with this one's.
    check_output_folder(out_dir, "--out")  # a file in its place: said as such, before the lock would try to make it
    with hold_output_folder(out_dir):
        if args.model is not None:
            check_eval_output_folder(out_dir)  # never beside (or over) files longvos did not write
            pred_root = out_dir / "predictions"
            run_report = _run_model(args, layout, names, pred_root, progress)
            extra = {"run": run_report.to_dict()}
        else:
            check_report_folder(out_dir, pred_root)
        sequences = find_sequences(layout.annotations_root, pred_root, names)
        result = evaluate_sequences(sequences, objects=args.objects, decay=args.decay, workers=args.workers,
                                    progress=progress)
        log_reports(out_dir)  # before they are written
        paths = write_reports(result, out_dir, extra)

    print(format_table(result, per_object=not args.brief))
    print(f"J&F-Mean {result.summary['J&F-Mean']:.4f} over {len(result.objects)} objects in "
          f"{len(result.sequences)} sequences (objects: {result.object_policy}, decay: {result.decay_mode})")
    if result.unscored_objects:
        print(f"not scored (no annotated frame after they appear): {', '.join(result.unscored_objects)}")
    if run_report is not None:
        print(run_report.describe())
    print(f"wrote {paths['summary']}, {paths['per_sequence'].name}, {paths['global'].name}"
          + (f"; predictions in {pred_root}" if run_report is not None else ""))
    return 0


def _run_model(args: argparse.Namespace, layout: DavisLayout, names: list[str], pred_root: Path,
               progress: bool) -> RunReport:
    import torch

    from longvos.eval.runner import run_model

    apply_threads(args.threads)
    torch.manual_seed(0)  # models without a checkpoint get random weights: make them the same on every run
    return run_model(segment_options(args, progress=progress), layout, names, pred_root,
                     late_objects=args.objects == "all")
