"""Model names -> builders, for every family (AOT/MAVOS, LiVOS, ...).

A family module registers its models when imported, with :func:`register_model`; the registry imports the family
modules listed in :data:`FAMILY_MODULES` the first time a name is looked up (lazily, so that ``import longvos``
stays fast and families can import the registry without a cycle).

To add a family, add its module to :data:`FAMILY_MODULES` and decorate its builders::

    @register_model("livos-r50", family="livos", description="LiVOS, ResNet-50")
    def build_livos_r50(**overrides) -> VOSModel: ...

``family`` also selects the official-checkpoint converter (registered in :mod:`longvos.checkpoints` by the family's
``official.py``).
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # no torch at import: the CLI reads DEFAULT_MODEL for its --help
    from longvos.models.base import VOSModel

#: The model used when none is named: its weights ship with the package (CLI ``--model``, ``SegmentOptions.model``,
#: ``BatchOptions.model``).
DEFAULT_MODEL = "mavos-lite"
#: Short side (pixels) the published VOS models are trained and evaluated at (DAVIS 480p); re-exported by
#: :mod:`longvos.models.base`.
PAPER_MAX_SIZE = 480

#: Modules whose import registers a family's models.
FAMILY_MODULES: list[str] = ["longvos.models.aot.zoo", "longvos.models.livos.model"]

ModelBuilder = Callable[..., "VOSModel"]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    builder: ModelBuilder
    description: str = ""
    max_size: int = PAPER_MAX_SIZE  # the short side its weights work best at (the models' default_max_size)


_MODELS: dict[str, ModelEntry] = {}
_families_loaded = False


def register_model(name: str, *, family: str, description: str = "",
                   max_size: int = PAPER_MAX_SIZE) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``builder(**overrides) -> VOSModel`` under ``name``; ``max_size`` is the short side its
    weights were trained for."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _MODELS and _MODELS[name].builder is not builder:
            raise ValueError(f"model name {name!r} is already registered (family {_MODELS[name].family})")
        _MODELS[name] = ModelEntry(name, family, builder, description, max_size)
        return builder

    return decorator


def _load_families() -> None:
    global _families_loaded
    if not _families_loaded:
        _families_loaded = True
        for module in FAMILY_MODULES:
            importlib.import_module(module)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    _load_families()
    return sorted(_MODELS)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; an unknown name gives an error listing the close matches."""
    _load_families()
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (available: {', '.join(sorted(_MODELS))})") from None


def create_model(name: str, memory: str | None = None, mem_gap: int | None = None, **overrides: Any) -> VOSModel:
    """Build a model by name, with random weights (load a checkpoint with :func:`longvos.checkpoints.load_checkpoint`).

    ``memory`` and ``mem_gap`` override the long-term memory design and interval where the family has them (AOT:
    ``growing``, ``ref+prev``, ``mca``); other keyword arguments override fields of the family's config.
    """
    entry = model_entry(name)
    if memory is not None:
        overrides["memory"] = memory
    if mem_gap is not None:
        overrides["mem_gap"] = mem_gap
    try:
        model = entry.builder(**overrides)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot build {name}: {err}") from err
    if model.name != name or model.default_max_size != entry.max_size:  # a family declares them with its models
        raise ValueError(f"the builder of {name!r} made a model that declares name {model.name!r} and default "
                         f"size {model.default_max_size} (registered: {entry.max_size})")
    return model
