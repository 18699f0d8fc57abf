"""`longvos app`: serve the web page: upload a video, mark objects on its first frame (a box, clicks or a mask
file), segment it with a progress bar and a live preview, watch the overlay and download the masks as a zip.

The server binds to 127.0.0.1 (this machine only) unless --host says otherwise; it needs no extra packages and
never contacts the network. Uploads and results live in a temporary folder (or --workdir) while it runs.
The app has no login: anyone who can reach its port can upload videos, run them and download every result, so a
--host other than a loopback address is refused unless --allow-remote says so.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import warnings
from pathlib import Path

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
                        help="folder for uploads and results (default: a temporary folder, deleted on exit)")
    parser.add_argument("--max-jobs", type=int, default=20, help="finished videos kept before the oldest is deleted")
    parser.add_argument("--max-disk", type=float, default=20.0, metavar="GIB",
                        help="disk quota of the work folder, all uploads and results together, in GiB (default 20); "
                             "the oldest idle videos are deleted to make room")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a --host that other machines can reach: ANYONE who can reach the port can use "
                             "the app (upload, run, download every result); there is no login")
    parser.add_argument("--verbose", action="store_true", help="log every request")


def run(args: argparse.Namespace) -> int:

    from longvos.app.server import AppServer

    from longvos.app.server import is_loopback

    if not args.allow_remote and not is_loopback(args.host):  # before the (slow) model load
        raise CommandError(f"--host {args.host or '(every interface)'} is reachable from other machines and the app "
                           f"has no login: anyone reaching the port could use it; add --allow-remote to allow that")
    if args.max_disk <= 0:
        raise CommandError("--max-disk must be a positive number of GiB")
    threads = apply_threads(args.threads)
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_args, **_kwargs: print(
            f"longvos app: warning: {message}", file=sys.stderr)
        segmenter = segment_options(args).load_model()
    try:
        server = AppServer(segmenter, host=args.host, port=args.port, max_size=args.max_size,
                           workdir=args.workdir, max_jobs=args.max_jobs, verbose=args.verbose,
                           allow_remote=args.allow_remote, quota_bytes=int(args.max_disk * 2**30))
    except OSError as err:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
    try:  # from here on, a Ctrl+C or SIGTERM always ends in the clean-up below
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl+C (the work folder goes)
        print(f"longvos app: serving {server.url} with {segmenter.name} on {segmenter.device}, {threads} CPU "
              f"thread{'s' if threads != 1 else ''} (Ctrl+C to stop)",
              flush=True)
        if args.allow_remote and not is_loopback(args.host):
            print(f"longvos app: warning: listening on {args.host}: anyone who can reach port "
                  f"{server.server_address[1]} can use the app", file=sys.stderr, flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        # The first Ctrl+C or SIGTERM started this graceful stop: the running job is cancelled after the frame it is
        # on (waited for at most STOP_TIMEOUT), then the work folder is deleted. A second one exits at once.
        exit_now = _exit_now_handler(server)
        signal.signal(signal.SIGINT, exit_now)
        signal.signal(signal.SIGTERM, exit_now)
        server.close(timeout=STOP_TIMEOUT)
    print("longvos app: stopped", file=sys.stderr)
    return 0


def _interrupt(*_args: object) -> None:
    raise KeyboardInterrupt


def _exit_now_handler(server, exit=os._exit):
    """The handler of a second Ctrl+C or SIGTERM while the app stops: remove the work folder the server made (best
    effort: a job that has not stopped may still write into it), then exit at once with 128 + the signal number
    (``os._exit``: no waiting for the job's thread)."""

    def exit_now(signum: int, _frame: object) -> None:
        print("longvos app: stopping now, without waiting for the running job", file=sys.stderr, flush=True)
        if getattr(server, "_own_workdir", False):
            shutil.rmtree(server.workdir, ignore_errors=True)
        exit(128 + signum)

    return exit_now
