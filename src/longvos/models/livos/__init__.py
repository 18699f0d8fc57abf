"""LiVOS: gated linear matching (constant-size memory per object) on Cutie's architecture.

``layers.py`` (Cutie's building blocks), ``memory.py`` (what a video remembers: linear matching, sensory and object
memory, :class:`LiVOSState`), ``network.py`` (pixel fusion, object transformer, mask decoder and encoder),
``model.py`` (:class:`LiVOS`, its config and the ``livos-r50`` registration), ``official.py`` (the official
checkpoints' key map)."""
from longvos.models.livos.memory import LiVOSState
from longvos.models.livos.model import LiVOS, LiVOSConfig

__all__ = ["LiVOS", "LiVOSConfig", "LiVOSState"]
