"""`longvos convert SRC DST --model NAME`: official checkpoint -> longvos checkpoint, with a strict key check."""
from __future__ import annotations

import argparse

from longvos.cli.main import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from longvos.checkpoints import official_families

    parser.add_argument("src", metavar="SRC",
                        help="official checkpoint (.pth): {'state_dict': ...}, {'model': ...} or a raw state_dict")
    parser.add_argument("dst", metavar="DST", help="where to write the longvos checkpoint")
    parser.add_argument("--model", required=True, metavar="NAME",
                        help="registry name, e.g. mavos-r50 (see `longvos models`)")
    parser.add_argument("--from", dest="family", choices=official_families(), default=None,
                        help="code base the checkpoint comes from (default: the model's family)")
    parser.add_argument("--half", action="store_true", help="store the weights in float16 (half the file size)")


def run(args: argparse.Namespace) -> int:
    from longvos.checkpoints import CheckpointError, convert_to_file
    from longvos.models.registry import model_entry

    try:
        family = model_entry(args.model).family
        if args.family is not None and args.family != family:
            raise CommandError(f"--from {args.family} does not fit {args.model}, a {family} model")
        report = convert_to_file(args.src, args.dst, args.model, family=family, half=args.half)
    except (CheckpointError, ValueError) as err:
        # A key report lists one problem key a line; any other refusal is one line, and stays one.
        raise CommandError(f"{err}\nnothing written" if "\n" in str(err) else f"{err}; nothing written") from None
    print(f"{args.model}: {report} -> {args.dst}")
    return 0
