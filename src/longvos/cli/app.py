"""`longvos app`: serve the web page (Gradio, the `app` extra): upload a video, mark objects on its first frame
(boxes, clicks or a mask file), segment it with a progress bar, watch the overlay and download the masks as a zip.

The server binds to 127.0.0.1 (this machine only) unless --host says otherwise, and never contacts the network
(no telemetry, no fonts or scripts from a CDN). Uploads and results live in a temporary folder (in --workdir if
given) while it runs, deleted on exit. The app has no login: anyone who can reach its port can upload videos, run
them and download every result, so a --host other than a loopback address is refused unless --allow-remote.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path

from longvos.app.workspace import MAX_VIDEO_FRAMES
from longvos.cli.main import CommandError
from longvos.cli.options import add_compute_options, add_model_options, apply_threads, segment_options

#: How long Ctrl+C or SIGTERM waits for the running job to stop (it is cancelled after the frame it is on); a second
#: Ctrl+C or SIGTERM exits at once.
STOP_TIMEOUT = 30.0

REMOTE_WARNING = ("The app has no login: anyone who can reach the port can upload videos, run them on this "
                  "machine and download every result. It listens on 127.0.0.1 (this machine only) by default; "
                  "any other --host needs --allow-remote.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = REMOTE_WARNING
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface, "
                             "which needs --allow-remote)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (0: any free port)")
    add_model_options(parser, memory=False)
    add_compute_options(parser)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to make the work folder for uploads and results (default: the system's "
                             "temporary folder); the work folder is deleted on exit")
    parser.add_argument("--max-jobs", type=int, default=20, help="videos kept before the oldest is deleted")
    parser.add_argument("--max-disk", type=float, default=20.0, metavar="GIB",
                        help="disk quota of the work folder, all uploads and results together, in GiB (default 20); "
                             "the oldest idle videos are deleted to make room")
    parser.add_argument("--max-upload", type=float, default=4096.0, metavar="MIB",
                        help="largest file one upload may be, in MiB (default 4096)")
    parser.add_argument("--max-queue", type=int, default=16,
                        help="requests waiting for their turn (segmentations, prompts) before more are refused "
                             "(default 16); videos are segmented one at a time")
    parser.add_argument("--max-minutes", type=float, default=60.0,
                        help="a segmentation running longer is stopped (default 60; 0: no limit)")
    parser.add_argument("--max-frames", type=int, default=MAX_VIDEO_FRAMES,
                        help=f"longest video accepted, in frames (default {MAX_VIDEO_FRAMES})")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a --host that other machines can reach: ANYONE who can reach the port can use "
                             "the app (upload, run, download every result); there is no login")
    parser.add_argument("--public-name", action="append", default=[], metavar="NAME",
                        help="with --allow-remote: a host name or address users reach the app by (repeatable); "
                             "requests addressed to any other name than these, --host and localhost are refused")
    parser.add_argument("--verbose", action="store_true", help="log every request")


def run(args: argparse.Namespace) -> int:
    from longvos.app.guard import is_loopback  # no Gradio, no torch: checked before the (slow) model load

    if importlib.util.find_spec("gradio") is None:
        raise CommandError("longvos app needs Gradio: pip install 'longvos[app]'")
    if not args.allow_remote and not is_loopback(args.host):
        raise CommandError(f"--host {args.host or '(every interface)'} is reachable from other machines and the app "
                           f"has no login: anyone reaching the port could use it; add --allow-remote to allow that")
    if args.public_name and not args.allow_remote:
        raise CommandError("--public-name needs --allow-remote (without it, only localhost is answered)")
    for name in ("max_disk", "max_upload", "max_queue", "max_jobs", "max_frames"):
        if getattr(args, name) <= 0:
            raise CommandError(f"--{name.replace('_', '-')} must be a positive number")
    if args.max_minutes < 0:
        raise CommandError("--max-minutes must be 0 (no limit) or a positive number of minutes")
    threads = apply_threads(args.threads)
    options = segment_options(args)
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_args, **_kwargs: print(
            f"longvos app: warning: {message}", file=sys.stderr)
        segmenter = options.load_segmenter()

    from longvos.app.server import LongvosApp

    app = LongvosApp(options.replace(model=segmenter, checkpoint=None), host=args.host, port=args.port,
                     workdir=args.workdir, max_jobs=args.max_jobs, quota_bytes=int(args.max_disk * 2**30),
                     max_upload_bytes=int(args.max_upload * 2**20), max_queue=args.max_queue,
                     max_minutes=args.max_minutes or None, max_frames=args.max_frames,
                     allow_remote=args.allow_remote, public_names=args.public_name, verbose=args.verbose)
    try:  # from here on, a Ctrl+C or SIGTERM always ends in the clean-up below
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl+C (the work folder goes)
        url = app.launch()
        print(f"longvos app: serving {url} with {segmenter.name} on {segmenter.device}, {threads} CPU "
              f"thread{'s' if threads != 1 else ''} (Ctrl+C to stop)", flush=True)
        if args.allow_remote and not is_loopback(args.host):
            print(f"longvos app: warning: listening on {args.host}: anyone who can reach the port can use the app",
                  file=sys.stderr, flush=True)
            if args.host.strip("[]") in ("", "0.0.0.0", "::") and not args.public_name:
                print("longvos app: warning: only requests addressed to localhost are answered; name the address "
                      "users reach the app by with --public-name", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    except OSError as err:
        raise CommandError(str(err)) from None
    finally:
        # The first Ctrl+C or SIGTERM started this graceful stop: the running job is cancelled after the frame it is
        # on (waited for at most STOP_TIMEOUT), then the work folder is deleted (whether the job stopped or not). A
        # second one exits at once.
        exit_now = _exit_now_handler(app.workspace.root)
        signal.signal(signal.SIGINT, exit_now)
        signal.signal(signal.SIGTERM, exit_now)
        app.close(timeout=STOP_TIMEOUT)
    print("longvos app: stopped", file=sys.stderr)
    return 0


def _interrupt(*_args: object) -> None:
    raise KeyboardInterrupt


def _exit_now_handler(workdir: Path):
    """The handler of a second Ctrl+C or SIGTERM while the app stops: remove the work folder (best effort: a job
    that has not stopped may still write into it), then exit at once with 128 + the signal number (``os._exit``:
    no waiting for the job's thread)."""

    def exit_now(signum: int, _frame: object) -> None:
        print("longvos app: stopping now, without waiting for the running job", file=sys.stderr, flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
        os._exit(128 + signum)

    return exit_now
