""":class:`SegmentOptions`: how a video is segmented, in one frozen record that the CLI, the batch tool, the web app
and the evaluation build, and that ``segment_video`` takes (its resume record's settings are these fields).

What is segmented and where it goes (the video, its prompt masks or boxes, the output folder, the overlay path) and
how the call behaves (``resume``, ``overwrite``, ``on_frame``) are ``segment_video``'s own arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longvos.device import DEFAULT_DTYPE
from longvos.engine.frames import MaxSize
from longvos.engine.parts import PartDistance
from longvos.models.registry import DEFAULT_MODEL

if TYPE_CHECKING:
    import torch

    from longvos.engine.segmenter import Segmenter
    from longvos.engine.session import Session

#: Frames between model-state snapshots (what ``resume`` restores; a resume recomputes at most this many frames plus
#: the writer's queue). mavos-lite at 320 px on 854x480 video: a 15 MiB file, ~15 ms of the model thread to encode
#: (the writer thread writes it), so about 0.6 ms per frame; mavos-r50 at 480 px: 66 MiB, ~150 ms.
DEFAULT_SNAPSHOT_EVERY = 25


def setting(default: Any, key: str | None = None) -> Any:
    """A field that must match for ``resume`` to continue a run; recorded under ``key`` (default: its name)."""
    return field(default=default, metadata={"record": key or True})


@dataclass(frozen=True)
class SegmentOptions:
    """How to segment: the model and its weights, where and how it runs, what the network sees, what is written.

    ``model`` is a registered name (``longvos models``) or an already loaded
    :class:`~longvos.engine.segmenter.Segmenter` (its weights, device and dtype are then its own, and ``checkpoint``
    must be left unset). A model name without bundled weights or ``checkpoint`` is refused unless
    ``allow_random_weights``. ``max_size`` caps the short side the network sees (``"auto"``: the size the model's
    weights were trained for; ``None``: native); ``memory`` and ``mem_gap`` choose this video's long-term memory
    design and interval (``None``: the model's own), like ``max_size`` per video, not per loaded model.
    ``max_part_distance`` drops the pieces of an object's mask that lie farther than that many object sizes from
    its mask on the frame before (``"auto"``: the model's own, 0.5 for mavos-lite, off for the official models;
    ``None``: off; :mod:`longvos.engine.parts`).
    Frames ``start <= index < end`` are segmented, backwards if ``reverse``. ``per_object`` also writes
    ``objects/<id>/<frame>.png``, ``save_probs`` ``probs/<frame>.npz``. Every ``snapshot_every`` frames the model
    state is saved for an exact ``resume`` (0 or ``None``: never). ``threads`` sets torch's intra-op CPU threads for
    the run (``None``: the current count; a resume: the count its run recorded). ``progress`` shows a progress bar;
    ``max_pending_writes`` bounds the frames waiting for the background writer.

    The fields marked as settings are the resume record (:meth:`resume_settings`): a resume with other values is
    refused.
    """

    model: str | Segmenter = setting(DEFAULT_MODEL)
    checkpoint: str | Path | None = setting(None)
    device: str | torch.device = "auto"
    dtype: str | torch.dtype | None = setting(DEFAULT_DTYPE)
    memory: str | None = setting(None)
    mem_gap: int | None = setting(None)
    allow_random_weights: bool = False  # the checkpoint (None: random weights) is in the record already
    max_size: MaxSize = setting("auto")
    max_part_distance: PartDistance = "auto"  # recorded as it resolved, where it drops anything (engine/parts.py)
    start: int = setting(0)
    end: int | None = setting(None, "stop")
    reverse: bool = setting(False)
    per_object: bool = setting(False)
    save_probs: bool = setting(False)
    snapshot_every: int | None = DEFAULT_SNAPSHOT_EVERY
    threads: int | None = None  # not a setting: a resume reuses the recorded count unless told otherwise
    progress: bool = True
    max_pending_writes: int = 8

    def replace(self, **changes: Any) -> SegmentOptions:
        """A copy with ``changes``; an unknown name is a ``TypeError`` naming the known ones."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown segment option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return replace(self, **changes) if changes else self

    def resume_settings(self) -> dict[str, Any]:
        """The fields that must match for ``resume`` to continue a run, by their record names. ``segment_video``
        records them resolved (the model's name, the checkpoint's absolute path, the dtype, size, memory design and
        interval in effect, the frame range clamped to the video)."""
        return {(f.metadata["record"] if isinstance(f.metadata["record"], str) else f.name): getattr(self, f.name)
                for f in fields(self) if f.metadata.get("record")}

    def with_memory_resolved(self, own_memory: str | None, own_mem_gap: int | None) -> SegmentOptions:
        """These options with ``memory``/``mem_gap`` resolved to what the session uses: the model's own design and
        interval (``own_memory``, ``own_mem_gap``: its ``default_memory`` and ``default_mem_gap``) where they are
        ``None``. How runs are recorded for ``resume`` (``segment_video`` and the batch tool alike): naming the
        model's own design or interval is the same run as naming none, and a run is recorded with the interval it
        used, so that a resume after the model's default changed is refused rather than continued with another one
        (:func:`earlier_record_note`). A model without a choice of its own (``None``: LiVOS's one design, written on
        every frame) runs the same whatever valid value is named, so its runs are recorded with ``None`` either way
        (an invalid value is refused when the session is made)."""
        def resolved(named: Any, own: Any) -> Any:
            return None if own is None else own if named is None else named

        return self.replace(memory=resolved(self.memory, own_memory), mem_gap=resolved(self.mem_gap, own_mem_gap))

    def load_segmenter(self) -> Segmenter:
        """The :class:`~longvos.engine.segmenter.Segmenter` these options name: ``model`` itself if it is loaded,
        else the registered model with ``checkpoint`` (or its bundled weights)."""
        from longvos.engine.segmenter import Segmenter, load_segmenter
        from longvos.io.errors import InputError

        if isinstance(self.model, Segmenter):
            if self.checkpoint is not None:
                raise InputError("checkpoint applies when loading a model by name, not to a loaded Segmenter")
            return self.model
        # memory and mem_gap are per session: see session()
        return load_segmenter(self.model, self.checkpoint, self.device, self.dtype,
                              allow_random_weights=self.allow_random_weights)

    def session(self, segmenter: Segmenter) -> Session:
        """A new per-video session of ``segmenter`` with these options' ``max_size``, ``mem_gap``, ``memory`` and
        ``max_part_distance``."""
        return segmenter.session(self.max_size, self.mem_gap, self.memory, self.max_part_distance)


def objects_per_pass_record(objects_per_pass: int | None, object_count: int) -> dict[str, int]:
    """What a run records of how many objects share one pass of its model (``VOSModel.objects_per_pass``) when
    its prompts name ``object_count`` objects: nothing where it cannot change the masks -- a model that packs them
    as its design does (``None``), or a run of fewer than two objects -- so that such runs read as those of earlier
    longvos versions, which recorded nothing (their snapshots stay usable); else ``{"objects_per_pass": n}``."""
    if objects_per_pass is None or object_count < 2:
        return {}
    return {"objects_per_pass": objects_per_pass}


def part_distance_record(max_part_distance: float | None) -> dict[str, float]:
    """What a run records of the far-part distance it used (resolved; :mod:`longvos.engine.parts`): nothing where it
    keeps every piece, so that such runs read as those of earlier longvos versions, which recorded nothing (their
    snapshots stay usable); else ``{"max_part_distance": d}``."""
    return {} if max_part_distance is None else {"max_part_distance": max_part_distance}


def earlier_record_note(saved: dict[str, Any], difference: str | None, own_memory: str | None,
                        own_mem_gap: int | None, own_objects_per_pass: int | None = None,
                        part_distance: float | None = None) -> str:
    """Why a resume refused for ``difference`` (``"name: old -> new"``) cannot be made to match, where the run's
    record was written by an earlier longvos: it holds the memory design or interval as ``None`` though the model
    has one of its own (``own_memory``, ``own_mem_gap``), which a record of this version never does (an earlier
    longvos recorded the model's own that way, and the model's own may have changed since: mavos-lite's interval
    went from 10 to 5), or it lacks how many objects share a pass (``own_objects_per_pass``; mavos-lite went from
    packing them to one per pass). No option names what that run used, so only ``--overwrite`` (segmenting the
    video again) gives one consistent result. A record without ``max_part_distance`` was made before far parts were
    dropped (``part_distance``: what this run drops): every piece was kept, which ``--max-part-distance none``
    names, so the note says so. ``""`` for any other difference."""
    if difference is None:
        return ""
    for key, own, what in (("mem_gap", own_mem_gap, "interval"), ("memory", own_memory, "design")):
        if difference.startswith(f"{key}: None -> ") and saved.get(key) is None and own is not None:
            return (f": that run was recorded by an earlier longvos, which wrote the model's own memory {what} as "
                    f"None, and the model's own may have changed since (it is {own!r} now), so it cannot be "
                    f"continued exactly")
    if (difference.startswith("objects_per_pass: None -> ") and "objects_per_pass" not in saved
            and own_objects_per_pass is not None):
        return (f": that run was recorded by an earlier longvos, which did not record how many objects share one "
                f"pass of the model (this one runs {own_objects_per_pass}), so it cannot be continued exactly")
    if (difference.startswith("max_part_distance: None -> ") and "max_part_distance" not in saved
            and part_distance is not None):
        return (f": that run kept every piece of each mask (made by an earlier longvos, or with --max-part-distance "
                f"none) where this one drops those farther than {part_distance:g} object sizes from the object's "
                f"last mask; add --max-part-distance none to continue it as it was made")
    return ""
