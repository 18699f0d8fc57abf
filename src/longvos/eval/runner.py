"""Run a model over every sequence of a DAVIS-layout dataset, writing one palette PNG per frame, and time it.

Each sequence starts at its first annotated frame (earlier frames have no object to track, as in the LVOS
protocol). Every object is given to the model once, on the first annotated frame where it appears: the first-frame
objects at the start and, with ``late_objects`` (LVOS, YouTube-VOS), objects that enter later when they enter.
Without it, later objects are left out, as the DAVIS protocol (which scores first-frame objects only) assumes.
Nothing else from the ground truth reaches the model.

Speed follows the papers' protocol: FPS = frames / device-synchronised time of the model step and memory update,
over non-reference frames (the first frame of each sequence is excluded). Reading and resizing frames, upsampling
masks to the original size and writing PNGs are not timed. Peak memory is measured over the whole run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from longvos.engine.frames import MaxSize, resolve_max_size
from longvos.engine.resources import format_bytes
from longvos.engine.segmenter import Segmenter
from longvos.eval.masks import ground_truth_ids, present_ids
from longvos.eval.measure import SPEED_PROTOCOL, PeakMemory, environment
from longvos.io.davis import DavisLayout
from longvos.io.errors import InputError
from longvos.io.video import ImageSequenceSource
from longvos.io.masks import write_index_png
from longvos.io.palette import palette_to_array
from longvos.io.writer import BackgroundWriter, atomic_write



@dataclass
class SequenceRun:
    """One sequence's run: frames predicted, the timed subset, and the largest model state."""

    name: str
    frames: int = 0
    timed_frames: int = 0
    model_seconds: float = 0.0
    peak_state_bytes: int = 0

    @property
    def fps(self) -> float:
        return self.timed_frames / self.model_seconds if self.model_seconds > 0 else float("nan")


@dataclass
class RunReport:
    """Speed and memory of a model run over a dataset, with the environment it ran in."""

    model: str
    max_size: int | None
    environment: dict[str, object]
    sequences: list[SequenceRun] = field(default_factory=list)
    memory: dict[str, int | bool | None] = field(default_factory=dict)

    @property
    def timed_frames(self) -> int:
        return sum(s.timed_frames for s in self.sequences)

    @property
    def fps(self) -> float:
        """All-frame FPS: every timed frame of every sequence over their total time."""
        seconds = sum(s.model_seconds for s in self.sequences)
        return self.timed_frames / seconds if seconds > 0 else float("nan")

    @property
    def peak_state_bytes(self) -> int:
        return max((s.peak_state_bytes for s in self.sequences), default=0)

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "max_size": self.max_size,
            **self.environment,
            "speed_protocol": SPEED_PROTOCOL,
            "fps": self.fps,
            "timed_frames": self.timed_frames,
            "model_seconds": sum(s.model_seconds for s in self.sequences),
            "memory": {**self.memory, "peak_state_bytes": self.peak_state_bytes},
            "per_sequence": [dict(asdict(s), fps=s.fps) for s in self.sequences],
        }

    def describe(self) -> str:
        """Two human-readable lines: speed, then memory (with device, dtype and threads)."""
        env = self.environment
        device_peak = self.memory.get("peak_device_bytes")
        device_part = f"device peak {format_bytes(device_peak)}, " if device_peak is not None else ""
        return (f"speed: {self.fps:.2f} FPS over {self.timed_frames} non-reference frames (model step + memory "
                f"update only) on {env['device']}, {env['dtype']}, {env['torch_threads']} threads, short side "
                f"{self.max_size or 'native'}\n"
                f"memory: {device_part}peak RSS {format_bytes(self.memory.get('peak_rss_bytes'))} (grew by "
                f"{format_bytes(self.memory.get('rss_growth_bytes'))}), largest model state "
                f"{format_bytes(self.peak_state_bytes)}")


def run_model(segmenter: Segmenter, layout: DavisLayout, sequences: list[str], pred_root: Path, *,
              max_size: MaxSize = "auto", late_objects: bool = True, progress: bool = False) -> RunReport:
    """Predict every frame of ``sequences`` into ``pred_root/<sequence>/<frame>.png`` and measure the run."""
    max_size = resolve_max_size(max_size, segmenter.model.default_max_size)
    report = RunReport(segmenter.name, max_size, environment(segmenter.device, segmenter.dtype))
    meter = PeakMemory(segmenter.device).start()
    writer = BackgroundWriter()
    try:
        for name in sequences:
            report.sequences.append(_run_sequence(segmenter, layout, name, pred_root / name, writer,
                                                  max_size=max_size, late_objects=late_objects, progress=progress))
        writer.flush()
    finally:
        writer.close()
    report.memory = meter.read()
    return report


def _run_sequence(segmenter: Segmenter, layout: DavisLayout, name: str, out_dir: Path, writer: BackgroundWriter,
                  *, max_size: int | None, late_objects: bool, progress: bool) -> SequenceRun:
    annotations = layout.annotation_paths(name)
    source = ImageSequenceSource.from_folder(layout.frames_dir(name))
    names = [source.frame_name(i) for i in range(source.num_frames)]
    start = next((i for i, frame_name in enumerate(names) if frame_name in annotations), None)
    if start is None:
        raise InputError(f"{layout.annotations_root / name}: no annotation matches a frame name of "
                         f"{layout.frames_dir(name)} (sequence {name})")
    out_dir.mkdir(parents=True, exist_ok=True)
    palette = _palette_of(annotations[names[start]])
    run = SequenceRun(name)
    known_ids: set[int] = set()
    with segmenter.session(max_size=max_size) as session, \
            tqdm(total=len(names) - start, desc=name, unit="frame", disable=not progress, leave=False) as bar:
        for frame in source.frames(start):
            mask_HW, new_ids = None, []
            if frame.name in annotations and (late_objects or frame.index == start):
                gt_HW = ground_truth_ids(annotations[frame.name])
                new_ids = [i for i in present_ids(gt_HW) if i not in known_ids]
                mask_HW = gt_HW if new_ids else None  # only objects the model has not been given yet
                known_ids.update(new_ids)
            if frame.index == start and not new_ids:
                raise InputError(f"{annotations[frame.name]}: the first annotation of sequence {name} has no object")
            result = session.step(frame.image, mask_HW, new_ids or None)
            if frame.index > start:  # the reference frame is not timed (papers' protocol)
                run.timed_frames += 1
                run.model_seconds += result.model_seconds
            run.frames += 1
            run.peak_state_bytes = max(run.peak_state_bytes, session.memory_bytes())
            writer.submit(_png_job(out_dir / f"{frame.name}.png", result.mask, palette))
            bar.update()
    return run


def _palette_of(annotation: Path) -> np.ndarray:
    """The ground truth's own palette, so that predictions look like the annotations (DAVIS colours otherwise)."""
    with Image.open(annotation) as image:
        return palette_to_array(image.getpalette() if image.mode == "P" else None)


def _png_job(path: Path, ids_HW: np.ndarray, palette: np.ndarray):
    return lambda: atomic_write(path, lambda temporary: write_index_png(temporary, ids_HW, palette))
