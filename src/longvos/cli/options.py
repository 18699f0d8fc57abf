"""The options several commands share (model, weights, memory design, device, dtype, size, threads): one wording,
one validation."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from longvos.cli.main import CommandError
from longvos.models.registry import DEFAULT_MODEL  # no torch import


def add_model_options(parser: argparse.ArgumentParser, *, prefix: str = "", model: bool = True,
                      memory: bool = True, random_weights: bool = True) -> None:
    """``--model`` (unless the command defines its own), ``--checkpoint``, ``--allow-random-weights`` (unless the
    command always allows them), and the memory overrides.

    ``prefix`` starts every help text, for options that only apply in one mode (``"with --model: "``).
    """
    if model:
        parser.add_argument("--model", default=None,
                            help=f"{prefix}model name (see `longvos models`; default: {DEFAULT_MODEL})")
    parser.add_argument("--checkpoint", type=Path,
                        help=f"{prefix}longvos or official checkpoint (default: bundled weights)")
    if random_weights:
        parser.add_argument("--allow-random-weights", action="store_true",
                            help=f"{prefix}run a model that ships no weights without --checkpoint, with random "
                                 "weights (meaningless masks; for tests and speed measurements)")
    if memory:
        parser.add_argument("--memory", default=None,
                            help=f"{prefix}long-term memory design override (mca, ref+prev, growing)")
        parser.add_argument("--mem-gap", type=int, default=None,
                            help=f"{prefix}frames between long-term memory updates (default: the model's)")


def add_compute_options(parser: argparse.ArgumentParser, *, prefix: str = "", device: bool = True,
                        dtype: bool = True, threads: bool = True, max_size: bool = True,
                        max_size_default: int | str = "auto", part_distance: bool = True) -> None:
    """Where and how the network runs and what is kept of its masks: ``--device``, ``--dtype``, ``--max-size``,
    ``--max-part-distance``, ``--threads``."""
    if device:
        parser.add_argument("--device", default="auto", help=f"{prefix}auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    if dtype:
        parser.add_argument("--dtype", default="auto",
                            help=f"{prefix}autocast compute dtype: auto (default: bf16 where the device computes it "
                                 "natively -- CUDA with bf16, a CPU with AVX-512 BF16 or AMX -- else fp32), fp32, "
                                 "bf16, fp16")
    if max_size:
        parser.add_argument("--max-size", "--size", dest="max_size", type=parse_max_size, default=max_size_default,
                            help=f"{prefix}short side the network sees, in pixels, 0 for the native size, or auto: "
                                 "the size the model's weights were trained for (`longvos models` lists it); "
                                 f"default {max_size_default}. Outputs keep the original size")
    if part_distance:
        parser.add_argument("--max-part-distance", type=parse_part_distance, default="auto",
                            help=f"{prefix}drop a piece of an object's mask that lies farther than this many object "
                                 "sizes (square root of its area) from the object's mask on the frame before; none "
                                 "keeps every piece; auto (default): the model's own (mavos-lite 0.5, the official "
                                 "models none)")
    if threads:
        parser.add_argument("--threads", type=int, default=None,
                            help=f"{prefix}torch CPU threads (default: the free cores: the cores this process may "
                                 "use less the load average, at least 1; reported)")


def parse_max_size(text: str) -> int | str | None:
    """``--max-size``: ``auto``, 0 (native: ``None``) or a positive number of pixels, by the engine's one rule
    (:func:`longvos.engine.frames.check_max_size`)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        pixels = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels, 0 (native) or auto, got {text!r}") from None
    from longvos.engine.frames import check_max_size

    try:
        return check_max_size(pixels)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_part_distance(text: str) -> float | str | None:
    """``--max-part-distance``: ``auto``, ``none`` (keep every piece) or a positive number of object sizes, by the
    engine's one rule (:func:`longvos.engine.parts.check_part_distance`)."""
    from longvos.engine.parts import check_part_distance

    try:
        return check_part_distance(text if text.strip().lower() in ("auto", "none") else float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of object sizes, none or auto, got "
                                         f"{text!r}") from None


def segment_options(args: argparse.Namespace, cls: type | None = None, **more: Any):
    """The :class:`~longvos.engine.options.SegmentOptions` (or ``cls``, e.g. ``BatchOptions``) of the model and
    compute options above, as far as the command has them, plus ``more``."""
    from longvos.engine.options import SegmentOptions

    given = {"model": getattr(args, "model", None) or DEFAULT_MODEL}
    for name in ("checkpoint", "device", "dtype", "memory", "mem_gap", "allow_random_weights", "max_size",
                 "max_part_distance", "threads"):
        if hasattr(args, name):
            given[name] = getattr(args, name)
    return (cls or SegmentOptions)(**{**given, **more})


def apply_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count from ``--threads`` (None: the free cores, which do not oversubscribe a
    loaded machine: :func:`longvos.engine.threads.default_threads`); returns the count."""
    if threads is not None and threads < 1:
        raise CommandError(f"--threads must be at least 1, got {threads}")
    from longvos.engine import threads as thread_policy

    return thread_policy.set_threads(threads)
