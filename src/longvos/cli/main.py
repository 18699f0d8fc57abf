"""`longvos <command>`: one module per subcommand, imported only when that command runs (fast `--help`)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# command name -> (module under longvos.cli, one-line help). Each module defines
# `add_arguments(parser)` and `run(args) -> int` (the process exit code).
COMMANDS = {
    "segment": ("segment", "segment objects through a video from first-frame masks or boxes"),
    "batch": ("batch", "segment many videos from a manifest, resumable, on local workers or Ray"),
    "app": ("app", "serve a web page: upload a video, mark objects, watch and download the result"),
    "convert": ("convert", "convert an official MAVOS/DeAOT/LiVOS checkpoint to longvos"),
    "download": ("download", "fetch, verify, convert and cache an official checkpoint (then --model NAME just works)"),
    "eval": ("evaluate", "DAVIS-exact J&F of predictions, or of a model run over a dataset"),
    "bench": ("bench", "speed and memory against video length"),
    "train": ("train", "train a model from a config"),
    "demo": ("demo", "segment the bundled sample clip with the bundled default model"),
    "models": ("models", "list the available models"),
}


class CommandError(Exception):
    """A failure the user can act on: printed as one line, exit code 1 (or ``code``)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longvos", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        build_parser().parse_args(argv or ["--help"])  # prints help / the unknown-command error and exits
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(f"longvos.cli.{COMMANDS[name][0]}")
    parser = argparse.ArgumentParser(prog=f"longvos {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"longvos {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every failure is one line; LONGVOS_DEBUG=1 shows the traceback
        if os.environ.get("LONGVOS_DEBUG") and not isinstance(err, CommandError):
            raise
        print(f"longvos {name}: error: {error_message(err)}", file=sys.stderr)
        return exit_code(err)


def error_message(err: BaseException) -> str:
    """The one line a command prints for ``err``: the message of a library error (:class:`LongvosError`), a
    :class:`CommandError` or a file / value error; for anything else (a bug, a device torch cannot use) the
    message after the error's type."""
    from longvos.io.errors import LongvosError, one_line, printable

    if isinstance(err, CommandError):
        return printable(str(err))  # may quote a server or a file (a download's key report): no terminal codes
    if isinstance(err, KeyError) and len(err.args) == 1:  # str() would quote it
        return one_line(str(err.args[0]))
    if isinstance(err, (LongvosError, OSError, ValueError)):
        return one_line(err)
    return f"{type(err).__name__}: {one_line(err)}"


def exit_code(err: BaseException) -> int:
    """130 for a run stopped by an interrupt (a :class:`~longvos.engine.pipeline.SegmentationError` says so), a
    :class:`CommandError`'s own code, else 1."""
    if isinstance(err, CommandError):
        return err.code
    return 130 if getattr(err, "interrupted", False) else 1


if __name__ == "__main__":
    sys.exit(main())
