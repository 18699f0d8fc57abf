"""`longvos train CONFIG [--resume] [key=value ...]`: train a model from a preset, with overrides.

Examples::

    longvos train configs/mavos-lite.toml run.out_dir=/work/runs/mavos-lite
    longvos train configs/mavos-lite.toml --resume run.out_dir=/work/runs/mavos-lite optim.steps=20000
    torchrun --nproc_per_node=4 -m longvos train configs/mavos-lite-gpu.toml
    longvos train configs/mavos-lite.toml --export src/longvos/weights/mavos-lite.pt run.out_dir=/work/runs/mavos-lite

Overrides use dotted keys (``optim.lr=1e-4``); ``--show-config`` prints every key with its value and exits.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from longvos.cli.main import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("config", help="preset file (.toml or .json), e.g. configs/mavos-lite.toml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-4")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in run.out_dir")
    parser.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--export", metavar="PATH", default=None,
                        help="do not train: write the newest checkpoint's EMA weights (fp16) to PATH")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads per process: the same as the override run.threads=N (default: the "
                             "config's run.threads; 0 there leaves PyTorch's default)")
    # `longvos train CONFIG --resume key=value` puts overrides after an option; plain parse_args stops collecting
    # positionals at the first option, the intermixed parser does not.
    parser.parse_args = parser.parse_intermixed_args  # type: ignore[method-assign]


def run(args: argparse.Namespace) -> int:
    from longvos.checkpoints import export_weights, latest_checkpoint
    from longvos.train.config import describe_config, load_config

    overrides = list(args.overrides)
    if args.threads is not None:
        if args.threads < 1:
            raise CommandError(f"--threads must be at least 1, got {args.threads}")
        overrides.append(f"run.threads={args.threads}")  # after the key=value overrides: --threads wins
    config = load_config(args.config, overrides)  # a ConfigError is a LongvosError: cli.main prints its one line
    if args.show_config:
        print(describe_config(config))
        return 0
    if args.export:
        checkpoint = latest_checkpoint(Path(config.run.out_dir))
        if checkpoint is None:
            raise CommandError(f"no checkpoint to export in {config.run.out_dir}/checkpoints")
        written = export_weights(checkpoint, Path(args.export))
        print(f"wrote {written} ({written.stat().st_size / 2**20:.1f} MiB) from {checkpoint}")
        return 0

    from longvos.train.loop import train

    train(config, resume=args.resume)
    return 0
