"""The AOT family: DeAOT and MAVOS (identity embedding, gated propagation, FPN decoder, long-term memory designs).

Files: ``config.py`` (AOTConfig), ``identity.py``, ``propagation.py`` (E-LSTT layers), ``local_attention.py``
(short-term 15x15 propagation), ``mca.py`` (modulated cross-attention), ``memory.py`` (memory records and the
``growing`` / ``ref+prev`` / ``mca`` designs), ``decoder.py`` (FPN), ``state.py`` (per-video objects and passes),
``model.py`` (AOTModel: verbs + engine contract), ``zoo.py`` (named models), ``official.py`` (checkpoint layout).

The main names are importable from here; submodules load on first use, so that importing one block (e.g.
``longvos.models.aot.official``) does not pull in the whole model.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AOTConfig": "config",
    "AOTModel": "model",
    "ImageFeatures": "model",
    "AOTState": "state",
    "AOTMemory": "memory",
    "LayerMemory": "memory",
    "Propagation": "propagation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
