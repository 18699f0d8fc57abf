"""`longvos models`: the registered model names."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--names", action="store_true", help="names only, one per line")


def run(args: argparse.Namespace) -> int:
    from longvos.models.registry import list_models, model_entry

    names = list_models()
    width = max(len(name) for name in names)
    for name in names:
        entry = model_entry(name)
        # the short side frames are shrunk to by default (--max-size auto)
        print(name if args.names else f"{name:<{width}}  {entry.family:<6}  {entry.max_size:>4}p  {entry.description}")
    return 0
