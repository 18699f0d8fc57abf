"""The options several commands share (model, weights, memory design, device, dtype, size, threads): one wording,
one validation."""
from __future__ import annotations

import argparse
from pathlib import Path

from longvos.cli.main import CommandError


def add_model_options(parser: argparse.ArgumentParser, *, prefix: str = "", model: bool = True,
                      memory: bool = True) -> None:
    """``--model`` (unless the command defines its own), ``--checkpoint``, and the memory overrides.

    ``prefix`` starts every help text, for options that only apply in one mode (``"with --model: "``).
    """
    if model:
        parser.add_argument("--model", default=None,
                            help=f"{prefix}model name (see `longvos models`; default: mavos-lite)")
    parser.add_argument("--checkpoint", type=Path,
                        help=f"{prefix}longvos or official checkpoint (default: bundled weights)")
    if memory:
        parser.add_argument("--memory", default=None,
                            help=f"{prefix}long-term memory design override (mca, ref+prev, growing)")
        parser.add_argument("--mem-gap", type=int, default=None,
                            help=f"{prefix}frames between long-term memory updates (default: the model's)")


def add_compute_options(parser: argparse.ArgumentParser, *, prefix: str = "", device: bool = True,
                        dtype: bool = True, threads: bool = True, max_size: bool = True,
                        max_size_default: int | str = "auto") -> None:
    """Where and how the network runs: ``--device``, ``--dtype``, ``--max-size``, ``--threads``."""
    if device:
        parser.add_argument("--device", default="auto", help=f"{prefix}auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    if dtype:
        parser.add_argument("--dtype", default=None,
                            help=f"{prefix}autocast compute dtype: fp32 (default), bf16 or fp16")
    if max_size:
        parser.add_argument("--max-size", "--size", dest="max_size", type=parse_max_size, default=max_size_default,
                            help=f"{prefix}short side the network sees, in pixels, 0 for the native size, or auto: "
                                 "the size the model's weights were trained for (`longvos models` lists it); "
                                 f"default {max_size_default}. Outputs keep the original size")
    if threads:
        parser.add_argument("--threads", type=int, default=None,
                            help=f"{prefix}torch CPU threads (default: torch's choice; reported)")


def parse_max_size(text: str) -> int | str | None:
    """``--max-size``: ``auto``, 0 (native: ``None``) or a positive number of pixels."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        pixels = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels, 0 (native) or auto, got {text!r}") from None
    if pixels < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (native) or a positive number of pixels, got {pixels}")
    return pixels or None


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count from ``--threads`` (None: leave torch's choice)."""
    if threads is None:
        return
    if threads < 1:
        raise CommandError(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
