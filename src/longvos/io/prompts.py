"""Moved to :mod:`longvos.prompts` (GrabCut is not I/O). Kept only while ``engine/pipeline.py`` still imports
``Box`` from here; import from :mod:`longvos.prompts`."""
from longvos.prompts import Box, ObjectPrompt, Point, grabcut_mask, parse_box, prompt_mask

__all__ = ["Box", "ObjectPrompt", "Point", "grabcut_mask", "parse_box", "prompt_mask"]
