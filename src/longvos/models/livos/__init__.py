"""LiVOS: gated linear matching (constant-size memory per object) on Cutie's architecture."""
from longvos.models.livos.config import LiVOSConfig
from longvos.models.livos.model import LiVOS
from longvos.models.livos.state import LiVOSState

__all__ = ["LiVOS", "LiVOSConfig", "LiVOSState"]
