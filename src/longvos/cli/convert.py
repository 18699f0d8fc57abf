"""`longvos convert SRC DST --model NAME`: official checkpoint -> longvos checkpoint, with a strict key check."""
from __future__ import annotations

import argparse

from longvos.cli.main import CommandError
from longvos.convert import OFFICIAL_KEY_MAPS, CheckpointError, convert_checkpoint, save_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="official checkpoint (.pth): {'state_dict': ...}, "
                                                   "{'model': ...} or a raw state_dict")
    parser.add_argument("dst", metavar="DST", help="where to write the longvos checkpoint")
    parser.add_argument("--model", required=True, metavar="NAME", help="registry name, e.g. mavos-r50 "
                                                                       "(see `longvos models`)")
    parser.add_argument("--from", dest="family", choices=sorted(OFFICIAL_KEY_MAPS), default=None,
                        help="official code base the checkpoint comes from (default: the model's family)")
    parser.add_argument("--half", action="store_true", help="store weights in float16 (half the file size)")


def run(args: argparse.Namespace) -> int:
    from longvos.models.registry import model_entry

    try:
        family = model_entry(args.model).family
    except ValueError as err:
        raise CommandError(str(err)) from None
    if args.family is not None and args.family != family:
        raise CommandError(f"--from {args.family} does not fit {args.model}, a {family} model")
    try:
        state_dict, report = convert_checkpoint(args.src, args.model, family=family, strict=False)
    except CheckpointError as err:
        raise CommandError(str(err)) from None
    if not report.ok:
        raise CommandError(f"{args.src} does not match {args.model}; nothing written:\n{report}")
    from longvos.models.registry import create_model

    with __import__("torch").device("meta"):
        config = getattr(create_model(args.model), "config", None)
    save_checkpoint(args.dst, state_dict, args.model, config.to_dict() if config is not None else None,
                    half=args.half)
    params = sum(t.numel() for t in state_dict.values())
    print(f"{args.model}: {report} ({params / 1e6:.2f} M numbers) -> {args.dst}")
    return 0
