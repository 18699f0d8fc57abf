"""`longvos batch MANIFEST --out DIR`: segment many videos, each in isolation, resumable, locally or on Ray.

MANIFEST is a CSV or JSONL file of (video, mask[, frame][, name]) rows, or a DAVIS-layout folder (JPEGImages/,
Annotations/); CSV lines starting with an unquoted # are comments (skipped, with a note). Every video goes to
DIR/<name>/; a video that fails is reported with its reason and the others go on. `--resume` skips videos that are
complete and continues interrupted ones. Ends with a summary table (also written to DIR/batch-summary.csv); the exit
code is 1 if any video failed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from longvos.cli.main import CommandError
from longvos.cli.options import add_compute_options, add_model_options, segment_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="CSV/JSONL manifest of video,mask[,frame][,name] rows, or a "
                                                    "DAVIS-layout folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder: one sub-folder per video")
    parser.add_argument("--backend", default="local", choices=("local", "ray"),
                        help="local: worker processes on this machine (default); ray: Ray actors on a cluster")
    parser.add_argument("--devices", default=None, metavar="LIST",
                        help="local backend: comma-separated devices, e.g. cuda:0,cuda:1 or cpu "
                             "(default: every GPU, else the CPU)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes/actors in all (default: one per device; ray: one per GPU, else per "
                             "--threads CPUs)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per worker, the same for every backend (default: the free cores "
                             "-- the cores less the load average -- shared among the workers)")
    parser.add_argument("--ray-address", default=None,
                        help="ray backend: cluster to join (auto, ray://host:10001); default: a local Ray instance")
    parser.add_argument("--resume", action="store_true", help="skip complete videos, continue interrupted ones")
    parser.add_argument("--overwrite", action="store_true",
                        help="reuse a non-empty --out: first delete the files an earlier longvos batch wrote there "
                             "(video folders' masks, overlays and records, the summary), leaving anything else; a video "
                             "whose folder still holds other files is refused; a --out holding files beside its video "
                             "folders and summary (a segment run's, say) is refused even with --overwrite")
    parser.add_argument("--overlay", choices=("mp4", "webm"), default=None,
                        help="also write DIR/<name>/overlay.<format>")
    add_model_options(parser)
    add_compute_options(parser, device=False, threads=False)  # batch has --devices and per-worker --threads
    parser.add_argument("--per-object", action="store_true", help="also write objects/<id>/<frame>.png (0/255)")
    parser.add_argument("--probs", action="store_true", help="also write probs/<frame>.npz (float16 probabilities)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from longvos.batch import BatchOptions, run_batch

    options = segment_options(args, BatchOptions, checkpoint=None if args.checkpoint is None else str(args.checkpoint),
                              overlay=args.overlay, per_object=args.per_object, save_probs=args.probs)
    devices = [device.strip() for device in args.devices.split(",") if device.strip()] if args.devices else None
    if devices and args.backend == "ray":
        raise CommandError("--devices is for the local backend; Ray places workers on the cluster's GPUs or CPUs")
    if args.workers is not None and args.workers < 1:
        raise CommandError(f"--workers must be >= 1, got {args.workers}")
    summary = run_batch(args.manifest, args.out, options, backend=args.backend, devices=devices,
                        workers=args.workers, ray_address=args.ray_address, resume=args.resume,
                        overwrite=args.overwrite, progress=not args.quiet)
    print(summary.table(), flush=True)
    threads = sorted({result.threads for result in summary.results if result.threads})
    if threads:
        print(f"workers ran with {'/'.join(map(str, threads))} CPU thread{'s' if threads != [1] else ''} each",
              file=sys.stderr)
    print(f"summary written to {summary.csv_path}", file=sys.stderr)
    return 0 if summary.ok else 1
