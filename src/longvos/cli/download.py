"""`longvos download NAME [--url URL] [--sha256 HEX]`: an official checkpoint, fetched, verified (SHA-256, then the
converter's strict key report), converted and cached, so that `--model NAME` then runs without `--checkpoint`."""
from __future__ import annotations

import argparse

from longvos.cli.main import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", nargs="?",
                        help="model whose official checkpoint to fetch (`longvos download --list` lists them)")
    parser.add_argument("--url", metavar="URL",
                        help="where to fetch it from: http(s)://, file:// or a local path (the official files sit "
                             "on Google Drive, which has no direct URL: save the file, then pass its path)")
    parser.add_argument("--sha256", metavar="HEX", help="refuse the file unless its SHA-256 is this")
    parser.add_argument("--max-mb", type=int, default=2048, metavar="MB",
                        help="refuse a file larger than this (default 2048)")
    parser.add_argument("--list", action="store_true",
                        help="list the official checkpoints, where each is published and whether it is cached")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from http.client import HTTPException  # a connection cut short (download_checkpoint names its URL)

    from longvos.download import (OFFICIAL_CHECKPOINTS, DownloadError, cache_dir, cached_checkpoint,
                                  download_checkpoint)

    if args.list:
        for name, entry in OFFICIAL_CHECKPOINTS.items():
            state = "cached" if cached_checkpoint(name) else "not cached"
            print(f"{name:<12} {state:<10} {entry.weights}: {entry.link}")
        print(f"cache: {cache_dir()}")
        return 0
    if not args.name:
        raise CommandError("name a model (`longvos download --list` lists those with official checkpoints)")
    if args.max_mb < 1:
        raise CommandError("--max-mb must be at least 1")
    try:
        result = download_checkpoint(args.name, args.url, args.sha256, max_bytes=args.max_mb * 1024 * 1024,
                                     progress=not args.quiet)
    except DownloadError as err:  # one line, or the converter's key report (one line per problem key)
        raise CommandError(str(err)) from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, HTTPException) as err:  # never a traceback
        from longvos.io.errors import one_line

        raise CommandError(f"{args.name}: download failed: {one_line(err)}") from None
    check = "SHA-256 verified" if result.verified else f"SHA-256 {result.sha256} (none published to check against)"
    print(f"{args.name}: {result.size} bytes, {check}; {result.report} -> {result.path}")
    print(f"`longvos segment ... --model {args.name}` now uses it without --checkpoint")
    return 0
