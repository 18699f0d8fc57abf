"""Checkpoints, in one place: longvos's own format, the conversion of official checkpoints, and training checkpoints.

**The longvos format** is ``{"longvos_checkpoint": 1, "model": name, "config": {...}, "state_dict": {...}}`` in our
key names (:func:`save_checkpoint`, :func:`save_model`, :func:`load_checkpoint`, :func:`model_from_checkpoint`).
Every file is read with ``torch.load(weights_only=True)`` on the CPU, and weights with NaN or infinite values are
refused (:func:`check_finite`). Every file is written through :func:`write_checkpoint_file` (a temporary name,
renamed when complete). A checkpoint's saved config must agree with the model it loads into, per-video fields
(memory design and interval) aside (:func:`config_differences`).

**Official checkpoints** are accepted as ``{'state_dict': ...}``, ``{'model': ...}``, ``{'weights': ...}`` (LiVOS
training checkpoints) or a raw state_dict, with or without a DataParallel ``module.`` prefix. The official loaders
are non-strict in both directions: unknown keys are dropped and missing weights silently keep their random init
(loading a DeAOT checkpoint into MAVOS leaves the MCA blocks random). Here every conversion produces a
:class:`KeyReport`, and nothing loads unless every model tensor is covered, every checkpoint tensor is used and every
shape matches. Each model family registers its key mapping (official name -> ours, and the official keys it
deliberately drops) from its own ``official.py`` with :func:`register_official_keys`; :func:`load_checkpoint` tells
the two kinds apart by the format marker.

**Training checkpoints** hold everything needed to continue bit-for-bit where a run stopped: the model, its EMA, the
optimiser and AMP scaler states, the step, the run's config and the random generators of every process (its CPU
generator, and the generator of its CUDA device when it computes on one: ``rng``, a list by rank, gathered on rank 0
in a distributed run; :func:`rng_state`, :func:`restore_rng`). Files are written to a temporary name and renamed
(:func:`write_checkpoint_file`), so a run killed mid-save (a session ending, an out-of-memory kill) never leaves a
truncated checkpoint behind; only the newest ``keep`` are kept. A resume is exact on the same device, dtype,
process count and thread count; a checkpoint from before ``rng`` was saved restores process 0's CPU generator
only. :func:`export_weights` turns one into a longvos checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Union

import torch
from torch import nn

from longvos.io.errors import InputError, LongvosError, one_line
from longvos.io.writer import atomic_write
from longvos.models.base import VOSModel
from longvos.models.registry import create_model, list_models, model_entry

if TYPE_CHECKING:
    from longvos.train.schedule import EMA

# =====================================================================================================================
# Section 1: the longvos checkpoint format
# =====================================================================================================================

FORMAT_MARKER = "longvos_checkpoint"
FORMAT_VERSION = 1

#: A checkpoint path, or a checkpoint object already loaded.
Source = Union[str, "os.PathLike[str]", Mapping[str, Any]]


class CheckpointError(LongvosError, ValueError):
    """A checkpoint that cannot be used: unreadable, or keys/shapes that do not match the model."""


def _torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` on the CPU: the one way any checkpoint file is read."""
    return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(source: Source) -> Mapping[str, Any]:
    """A checkpoint object from a path (``torch.load(weights_only=True)`` on the CPU) or an object already loaded.

    A file that cannot be read (empty, truncated, not a torch file), or that holds something other than a dictionary
    (a bare tensor, a list), is refused with one line naming it."""
    if isinstance(source, Mapping):
        return source
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty")
    try:
        checkpoint = _torch_load(path)
    except Exception as err:  # unpickling errors come in many types; the user needs the file name and the reason
        raise CheckpointError(f"cannot read checkpoint {path}: {one_line(err, 600)}") from err
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"not a checkpoint: {path} holds a {type(checkpoint).__name__}, not a dictionary of "
                              f"tensors")
    return checkpoint


def check_finite(state_dict: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Refuse weights with NaN or infinite values (a diverged training run, a corrupt file) with one line naming
    the first such tensors: they would load and run, and every mask would come out meaningless."""
    bad = [key for key, value in state_dict.items()
           if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointError(f"{what} holds non-finite weights (NaN or infinity) in {len(bad)} of "
                              f"{len(state_dict)} tensors ({shown}): it is corrupt or from a diverged training run")


def is_longvos_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    return FORMAT_MARKER in checkpoint


#: What every training checkpoint holds (:func:`save_training_checkpoint`).
TRAINING_CHECKPOINT_KEYS = frozenset({"step", "model", "ema", "optimizer", "scaler", "config"})


def is_training_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    return TRAINING_CHECKPOINT_KEYS <= set(checkpoint)


def read_weights_file(source: Source) -> Mapping[str, Any]:
    """A longvos weights file (:func:`save_checkpoint`'s layout: ``model``, ``state_dict``, ``config``), as the scripts
    that rewrite weights need it. A training checkpoint or an official one is refused with one line saying what to do
    (either would otherwise fail deep inside with a bare key or type error)."""
    checkpoint = read_checkpoint(source)
    what = _describe(source)
    if is_training_checkpoint(checkpoint):
        raise CheckpointError(f"{what} is a training checkpoint: export its EMA weights first "
                              f"(`longvos train CONFIG --export OUT`)")
    if not is_longvos_checkpoint(checkpoint):
        raise CheckpointError(f"{what} is not a longvos weights file (an official checkpoint? "
                              f"`longvos convert` makes one)")
    return checkpoint


def _describe(source: Source) -> str:
    """How messages name a checkpoint: its path, or "checkpoint" for an object already loaded."""
    return "checkpoint" if isinstance(source, Mapping) else os.fspath(source)


def _config_dict(model: torch.nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None


def write_checkpoint_file(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary name beside ``path``, renamed onto it when complete
    (:func:`longvos.io.writer.atomic_write`): the one way any checkpoint file is written, so that a process killed
    mid-save (a session ending, an out-of-memory kill, Ctrl-C in ``longvos convert``) never leaves a truncated file
    under the real name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: torch.save(obj, temporary))


def save_checkpoint(path: str | os.PathLike[str], state_dict: Mapping[str, torch.Tensor], model_name: str,
                    config: Mapping[str, Any] | None = None, half: bool = False) -> None:
    """Write a longvos checkpoint (atomically); ``half`` stores floating tensors in float16 (they load back as
    float32)."""
    tensors = {key: value.detach().to("cpu", torch.float16 if half and value.is_floating_point() else value.dtype)
               for key, value in state_dict.items()}
    check_finite(tensors, f"{path} (as it would be written)")  # after the cast: fp16 makes values past 65504 inf
    write_checkpoint_file({FORMAT_MARKER: FORMAT_VERSION, "model": model_name, "config": dict(config or {}),
                           "state_dict": tensors}, path)


def save_model(model: VOSModel, path: str | os.PathLike[str], half: bool = False) -> None:
    """Write a model's weights as a longvos checkpoint (name and config included)."""
    if not model.name:
        raise ValueError("the model has no registry name; build it with longvos.models.create_model")
    save_checkpoint(path, model.state_dict(), model.name, _config_dict(model), half=half)


#: Config fields that choose how the weights are run, not what they compute with: the long-term memory design and
#: interval (chosen per video: :meth:`longvos.engine.segmenter.Segmenter.session`) and how many objects share one
#: AOT pass (chosen per model: mavos-lite runs one, the official models ten). A checkpoint's saved values for them
#: are not binding.
RUN_CHOICE_FIELDS = frozenset({"memory", "mem_gap", "objects_per_pass"})


def config_differences(saved: Mapping[str, Any] | None, model: torch.nn.Module,
                       ignore: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """The fields in which a checkpoint's saved model config differs from ``model``'s, as ``"name: checkpoint X vs
    model Y"`` (empty: they agree, or either has no config). The one rule of every load, whichever way the model
    was built: fields that change no tensor shape (AOT's ``mca_heads``, LiVOS's ``num_heads`` or ``pe_scale``, the
    drop rates) would otherwise load silently into a model configured otherwise. :data:`RUN_CHOICE_FIELDS` and
    ``ignore`` are not compared; a field the checkpoint does not name (saved by an older version) keeps the model's
    value."""
    current = _config_dict(model)
    if not saved or current is None:
        return []
    skipped = RUN_CHOICE_FIELDS | set(ignore)
    return [f"{name}: checkpoint {value!r} vs model {current[name]!r}" if name in current
            else f"{name}: checkpoint {value!r} vs model (no such field)"
            for name, value in sorted(saved.items())
            if name not in skipped and (name not in current or _plain(value) != _plain(current[name]))]


def _plain(value: Any) -> Any:
    """Tuples as lists (a config's tuple may come back from a file as either)."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def load_checkpoint(model: VOSModel, source: Source) -> KeyReport:
    """Load a longvos checkpoint or an official one (auto-detected) into ``model``, strictly.

    Raises :class:`CheckpointError` naming every missing, unexpected or mis-shaped key, or, for a longvos
    checkpoint, every field in which its saved config differs from ``model.config`` (:func:`config_differences`);
    weights load only when both are clean. Half-precision checkpoints are cast to the model's parameter dtypes.
    """
    return _load(model, read_checkpoint(source), f"checkpoint {source}" if not isinstance(source, Mapping)
                 else "checkpoint")


def _load(model: VOSModel, checkpoint: Mapping[str, Any], what: str,
          chosen: frozenset[str] | set[str] = frozenset()) -> KeyReport:
    """:func:`load_checkpoint` of a checkpoint already read; ``chosen``: config fields the caller set on purpose."""
    expected = model_shapes(model)
    if is_longvos_checkpoint(checkpoint):
        state_dict = dict(checkpoint["state_dict"])
        report = check_keys(state_dict, expected)
        if not report.ok and checkpoint.get("model") != model.name:
            what += f" (saved from {checkpoint.get('model')!r}, loading into {model.name!r})"
        report.raise_if_incomplete(what)
        differences = config_differences(checkpoint.get("config"), model, chosen)
        if differences:
            raise CheckpointError(f"{what} was saved from a {checkpoint.get('model')!r} model configured otherwise "
                                  f"than this {model.name!r} model: {'; '.join(differences)} (build the model from "
                                  f"the checkpoint with longvos.checkpoints.model_from_checkpoint, or pass the "
                                  f"checkpoint of this configuration)")
    else:
        if not model.name:
            raise CheckpointError("an official checkpoint needs the model's registry name to pick the converter")
        state_dict, report = map_official_keys(official_state_dict(checkpoint, what), model_entry(model.name).family,
                                               expected)
        report.raise_if_incomplete(what)
    check_finite(state_dict, what)
    targets = model.state_dict()
    model.load_state_dict({key: value.to(targets[key].dtype) for key, value in state_dict.items()}, strict=True)
    return report


def model_from_checkpoint(source: Source, **overrides: Any) -> VOSModel:
    """Build the model a longvos checkpoint was saved from (registry name + saved config, with ``overrides`` of
    single fields) and load its weights."""
    checkpoint = read_checkpoint(source)
    if not is_longvos_checkpoint(checkpoint):
        raise CheckpointError("not a longvos checkpoint (no model name inside); use create_model(name) and "
                              "load_checkpoint(model, path), or convert it with `longvos convert`")
    model = create_model(checkpoint["model"], **{**checkpoint.get("config", {}), **overrides})
    _load(model, checkpoint, f"checkpoint {source}" if not isinstance(source, Mapping) else "checkpoint",
          set(overrides))
    return model


# =====================================================================================================================
# Section 2: official checkpoints, converted with a strict key report
# =====================================================================================================================

def weights_for(name: str, checkpoint: str | Path | None, allow_random_weights: bool = False) -> str | Path | None:
    """The checkpoint ``name`` loads: ``checkpoint``, else the bundled weights, else those ``longvos download``
    cached, else ``None`` (random weights), which is refused with one line unless ``allow_random_weights``. Unknown names are a ``ValueError``."""
    model_entry(name)  # an unknown model is reported as such, not as missing weights
    if checkpoint is not None:
        return checkpoint
    bundled = bundled_checkpoint(name) or downloaded_checkpoint(name)
    if bundled is None and not allow_random_weights:
        raise InputError(f"model {name!r} ships no weights and no checkpoint was given, so its masks would be "
                         f"meaningless: pass --checkpoint PATH (Python: checkpoint=...), or --allow-random-weights "
                         f"(Python: allow_random_weights=True) to run it with random weights on purpose"
                         + download_hint(name))
    return bundled


#: The weights the package ships, ``<model name>.pt``.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def downloaded_checkpoint(name: str) -> Path | None:
    """The checkpoint ``longvos download <name>`` converted and cached (``$LONGVOS_HOME``), if any."""
    from longvos.download import cached_checkpoint

    return cached_checkpoint(name)


def download_hint(name: str) -> str:
    """The end of a "no weights" message: how to fetch ``name``'s official weights, where it has any."""
    from longvos.download import OFFICIAL_CHECKPOINTS

    return f"; `longvos download {name}` fetches its official weights" if name in OFFICIAL_CHECKPOINTS else ""


def bundled_checkpoint(name: str) -> Path | None:
    """The weights the package ships for ``name`` (``longvos/weights/<name>.pt`` or ``.pth``), if any."""
    return next((p for p in (WEIGHTS_DIR / f"{name}.pt", WEIGHTS_DIR / f"{name}.pth") if p.is_file()), None)


#: family -> function mapping an official key to ours (``None``: no counterpart); see :func:`register_official_keys`.
OFFICIAL_KEY_MAPS: dict[str, Callable[[str], str | None]] = {}

#: family -> function giving the reason an official key is deliberately not converted (training-only heads,
#: counters), or ``None``. Such keys are listed in the report's ``dropped`` and do not make it fail.
OFFICIAL_DROPPED_KEYS: dict[str, Callable[[str], str | None]] = {}


def register_official_keys(family: str, key_from_official: Callable[[str], str | None],
                           drop_reason: Callable[[str], str | None] | None = None) -> None:
    """Register how the official checkpoints of ``family`` map onto our key names (called by each family's
    ``official.py``, which its ``zoo.py`` imports where it registers the family's models)."""
    OFFICIAL_KEY_MAPS[family] = key_from_official
    if drop_reason is not None:
        OFFICIAL_DROPPED_KEYS[family] = drop_reason


def official_families() -> list[str]:
    """Families with a registered official-checkpoint converter (importing the registered model families)."""
    list_models()
    return sorted(OFFICIAL_KEY_MAPS)


@dataclass
class KeyReport:
    """How a checkpoint's tensors cover a model's: every problem key, by name."""

    missing: list[str] = field(default_factory=list)  # model keys the checkpoint does not provide
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys with no place in the model (official names)
    shape_mismatches: list[str] = field(default_factory=list)  # "key: checkpoint (..) vs model (..)"
    matched: int = 0
    dropped: dict[str, str] = field(default_factory=dict)  # official key -> why it is deliberately not converted

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def __str__(self) -> str:
        if self.ok:
            reasons = sorted(set(self.dropped.values()))
            return f"all {self.matched} tensors matched" + (
                f" ({len(self.dropped)} official tensors dropped: {'; '.join(reasons)})" if self.dropped else "")
        lines = [f"{self.matched} tensors matched, {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                 f"{len(self.shape_mismatches)} with the wrong shape"]
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("wrong shape", self.shape_mismatches)):
            lines += [f"  {title}: {key}" for key in keys]
        return "\n".join(lines)

    def raise_if_incomplete(self, what: str = "checkpoint") -> None:
        if not self.ok:
            raise CheckpointError(f"{what} does not match the model:\n{self}")


def official_state_dict(checkpoint: Mapping[str, Any], what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of an official checkpoint: unwrap ``state_dict``/``model``, strip a ``module.`` prefix.

    A longvos checkpoint (model or training) is refused with one line saying what it is and how to use it: it needs
    no conversion, and its tensors would otherwise be reported key by key as unexpected."""
    if is_longvos_checkpoint(checkpoint):
        raise CheckpointError(f"{what} is already a longvos checkpoint (of {checkpoint.get('model')!r}): it needs no "
                              f"conversion; use it as it is (e.g. `longvos segment --checkpoint`)")
    if is_training_checkpoint(checkpoint):
        raise CheckpointError(f"{what} is a longvos training checkpoint, not an official one: write its weights with "
                              f"`longvos train CONFIG --export PATH` (longvos.checkpoints.export_weights)")
    for wrapper in ("state_dict", "model", "weights"):
        if isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
            break
    tensors = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{what} is not a state_dict: entry {key!r} is a {type(value).__name__}, not a "
                                  f"tensor")
        tensors[key[len("module."):] if key.startswith("module.") else key] = value
    if not tensors:
        raise CheckpointError(f"{what} holds no tensors")
    return tensors


def map_official_keys(official: Mapping[str, torch.Tensor], family: str,
                      expected: Mapping[str, torch.Size]) -> tuple[dict[str, torch.Tensor], KeyReport]:
    """Rename official tensors to ours and check them against ``expected`` (our key -> shape)."""
    if family not in OFFICIAL_KEY_MAPS:
        list_models()  # the families register their key maps when their models are registered
    try:
        to_ours = OFFICIAL_KEY_MAPS[family]
    except KeyError:
        raise CheckpointError(f"no official checkpoint converter for family {family!r} "
                              f"(known: {', '.join(sorted(OFFICIAL_KEY_MAPS))})") from None
    report = KeyReport()
    state_dict: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    drop_reason = OFFICIAL_DROPPED_KEYS.get(family, lambda key: None)
    for official_key, tensor in official.items():
        reason = drop_reason(official_key)
        if reason is not None:
            report.dropped[official_key] = reason
            continue
        key = to_ours(official_key)
        if key is None or key not in expected:
            report.unexpected.append(official_key)
            continue
        seen.add(key)
        if tuple(tensor.shape) != tuple(expected[key]):
            report.shape_mismatches.append(f"{official_key} (ours: {key}): checkpoint {tuple(tensor.shape)} vs "
                                           f"model {tuple(expected[key])}")
        else:
            state_dict[key] = tensor
    report.missing = [key for key in expected if key not in seen]
    report.matched = len(state_dict)
    return state_dict, report


def check_keys(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]) -> KeyReport:
    """Coverage report of a state_dict already in our key names."""
    report = KeyReport()
    for key, tensor in state_dict.items():
        if key not in expected:
            report.unexpected.append(key)
        elif tuple(tensor.shape) != tuple(expected[key]):
            report.shape_mismatches.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected[key])}")
        else:
            report.matched += 1
    report.missing = [key for key in expected if key not in state_dict]
    return report


def model_shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    return {key: value.shape for key, value in model.state_dict().items()}


def meta_model(model_name: str, **overrides: Any) -> VOSModel:
    """A registered model built on the meta device: names, shapes and config, but no weight memory.

    A module whose constructor reads tensor values cannot be built on meta; it is then built on the CPU."""
    try:
        with torch.device("meta"):
            return create_model(model_name, **overrides)
    except NotImplementedError:
        return create_model(model_name, **overrides)


def expected_shapes(model_name: str, **overrides: Any) -> dict[str, torch.Size]:
    """Our key -> shape for a registered model, without allocating its weights."""
    return model_shapes(meta_model(model_name, **overrides))


def convert_checkpoint(source: Source, model_name: str, *, family: str | None = None, strict: bool = True,
                       **overrides: Any) -> tuple[dict[str, torch.Tensor], KeyReport]:
    """Official checkpoint (path or loaded object) -> (our state_dict, key report) for a registered model.

    With ``strict`` (the default) an incomplete conversion raises :class:`CheckpointError` listing every missing,
    unexpected and mis-shaped key; otherwise the report is returned for the caller to act on.
    """
    family = family or model_entry(model_name).family
    official = official_state_dict(read_checkpoint(source), _describe(source))
    state_dict, report = map_official_keys(official, family, expected_shapes(model_name, **overrides))
    if strict:
        report.raise_if_incomplete(f"official checkpoint for {model_name}")
    return state_dict, report


def convert_to_file(source: Source, destination: str | os.PathLike[str], model_name: str, *,
                    family: str | None = None, half: bool = False) -> KeyReport:
    """Convert an official checkpoint and write it as a longvos checkpoint; nothing is written unless the key
    report is clean (raises :class:`CheckpointError` listing every problem key). The official file is never written
    over: a ``destination`` that is ``source`` is refused."""
    if (isinstance(source, (str, os.PathLike)) and os.path.exists(source) and os.path.exists(destination)
            and os.path.samefile(source, destination)):
        raise CheckpointError(f"{destination} is the checkpoint being converted: write the conversion to another file")
    family = family or model_entry(model_name).family
    model = meta_model(model_name)
    official = official_state_dict(read_checkpoint(source), _describe(source))
    state_dict, report = map_official_keys(official, family, model_shapes(model))
    report.raise_if_incomplete(f"{_describe(source)} as {model_name}")
    check_finite(state_dict, _describe(source))
    save_checkpoint(destination, state_dict, model_name, _config_dict(model), half=half)
    return report


# =====================================================================================================================
# Section 3: training checkpoints (resume, rotation, export)
# =====================================================================================================================

TRAINING_CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Training checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := TRAINING_CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def rng_state(device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """This process's random generator states: ``"cpu"`` always, and ``"cuda"`` (the generator of ``device``) when
    the process computes on a CUDA device. Both are uint8 tensors, so a checkpoint holding them loads with
    ``torch.load(weights_only=True)``."""
    state = {"cpu": torch.get_rng_state()}
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: Mapping[str, Any], rank: int = 0, device: torch.device | str | None = None) -> bool:
    """Set this process's generators to those a training checkpoint saved for process ``rank``; False (nothing
    changed) when it saved none for that rank (an older checkpoint holds only process 0's CPU generator, and a run
    resumed with more processes than it had has no state for the new ones)."""
    states = state.get("rng")
    if isinstance(states, (list, tuple)) and rank < len(states):
        entry = states[rank]
    elif rank == 0 and isinstance(state.get("torch_rng"), torch.Tensor):
        entry = {"cpu": state["torch_rng"]}
    else:
        return False
    torch.set_rng_state(entry["cpu"])
    device = torch.device(device) if device is not None else None
    if "cuda" in entry and device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.set_rng_state(entry["cuda"], device)
    return True


def _device_of(model: nn.Module) -> torch.device | None:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else None


def save_training_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: dict,
    keep: int,
    rng_states: list[dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` (atomically), then delete all but the newest ``keep``.

    ``rng_states``: every process's :func:`rng_state`, by rank (a distributed run gathers them on rank 0, which
    writes the file); by default this process's alone."""
    path = checkpoint_path(run_dir, step)
    model_config = getattr(model, "config", None)
    if rng_states is None:
        rng_states = [rng_state(_device_of(model))]
    write_checkpoint_file({
        "model_config": dataclasses.asdict(model_config) if dataclasses.is_dataclass(model_config) else {},
        "step": step,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "torch_rng": rng_states[0]["cpu"],  # process 0's CPU generator, as older versions read it
        "rng": list(rng_states),
        "config": config,
    }, path)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def read_training_checkpoint(path: Path) -> dict:
    """A training checkpoint, checked to hold what :func:`restore_training` needs."""
    try:
        state = _torch_load(path)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} is not a longvos training checkpoint (it holds a {type(state).__name__})")
    missing = TRAINING_CHECKPOINT_KEYS - set(state)
    if missing:
        raise CheckpointError(f"{path} is not a longvos training checkpoint (missing {', '.join(sorted(missing))})")
    return dict(state)


def restore_training(
    state: dict,
    model: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    what: str = "checkpoint",
    rng: bool = True,
) -> int:
    """Load a checkpoint read by :func:`read_training_checkpoint` into the training objects; returns the step to
    resume at. ``what`` names the checkpoint in errors: weights of another model (missing, unexpected or mis-shaped
    tensors) or an optimiser of other parameter groups are refused with one line, before anything is loaded.
    ``rng``: also restore process 0's random generators (:func:`restore_rng`; the training loop restores each
    process's own)."""
    for part, weights, target in (("model", state["model"], model), ("EMA", state["ema"].get("weights", {}),
                                                                     ema.shadow)):
        report = check_keys(weights, model_shapes(target))
        if not report.ok:
            problems = report.missing[:1] + report.unexpected[:1] + report.shape_mismatches[:1]
            raise CheckpointError(
                f"{what} holds the {part} weights of another model: {len(report.missing)} missing, "
                f"{len(report.unexpected)} unexpected, {len(report.shape_mismatches)} with the wrong shape "
                f"(e.g. {'; '.join(problems)}); resume only a checkpoint of this run's model")
    try:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{what} does not fit this run's model and optimiser: {one_line(err, 300)}") from None
    if rng:
        restore_rng(state)
    return int(state["step"])


def export_weights(checkpoint: Path, destination: Path, use_ema: bool = True, half: bool = True) -> Path:
    """Write the (EMA) weights of a training checkpoint as a longvos model checkpoint (fp16 floats by default: half
    the file, and the model computes in fp32 after loading).

    The saved model config leaves out the memory design and interval, which were set for training (δ = 2): a model
    rebuilt from the file takes its own registry defaults (which differ per model: see
    :mod:`longvos.models.aot.zoo`) unless the caller overrides them.
    """
    if Path(destination).exists() and os.path.samefile(destination, checkpoint):
        raise CheckpointError(f"{destination} is the training checkpoint being exported: write the weights elsewhere")
    state = read_training_checkpoint(Path(checkpoint))
    weights = state["ema"]["weights"] if use_ema else state["model"]
    model_config = {k: v for k, v in state.get("model_config", {}).items() if k not in RUN_CHOICE_FIELDS}
    save_checkpoint(destination, weights, state["config"]["model"]["name"], model_config, half=half)
    return Path(destination)
