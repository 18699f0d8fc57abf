"""`longvos app`: serve the web page: upload a video, mark objects on its first frame (a box, clicks or a mask
file), segment it with a progress bar and a live preview, watch the overlay and download the masks as a zip.

The server binds to 127.0.0.1 (this machine only) unless --host says otherwise; it needs no extra packages and
never contacts the network. Uploads and results live in a temporary folder (or --workdir) while it runs.
"""
from __future__ import annotations

import argparse
import signal
import sys
import warnings
from pathlib import Path

from longvos.cli.main import CommandError
from longvos.cli.options import add_compute_options, add_model_options, apply_threads


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (0: any free port)")
    add_model_options(parser, memory=False)
    add_compute_options(parser)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for uploads and results (default: a temporary folder, deleted on exit)")
    parser.add_argument("--max-jobs", type=int, default=20, help="finished videos kept before the oldest is deleted")
    parser.add_argument("--verbose", action="store_true", help="log every request")


def run(args: argparse.Namespace) -> int:

    from longvos.app.server import AppServer
    from longvos.cli.segment import one_line
    from longvos.engine.pipeline import DEFAULT_MODEL
    from longvos.engine.segmenter import load_model

    apply_threads(args.threads)
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_args, **_kwargs: print(
            f"longvos app: warning: {message}", file=sys.stderr)
        try:
            segmenter = load_model(args.model or DEFAULT_MODEL, args.checkpoint, args.device, args.dtype)
        except (ValueError, OSError, RuntimeError) as err:
            raise CommandError(one_line(err)) from None
    try:
        server = AppServer(segmenter, host=args.host, port=args.port, max_size=args.max_size,
                           workdir=args.workdir, max_jobs=args.max_jobs, verbose=args.verbose)
    except OSError as err:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
    print(f"longvos app: serving {server.url} with {segmenter.name} on {segmenter.device} (Ctrl+C to stop)",
          flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl+C (the work folder goes)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("longvos app: stopped", file=sys.stderr)
    finally:
        server.close()
    return 0


def _interrupt(*_args: object) -> None:
    raise KeyboardInterrupt
