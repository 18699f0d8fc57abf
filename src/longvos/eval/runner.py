"""Run a model over every sequence of a DAVIS-layout dataset, writing one palette PNG per frame, and time it.

Each sequence runs through :func:`~longvos.engine.pipeline.segment_video`, the engine's one frame loop (as
``longvos segment`` does), writing masks only (no resume records). It starts at the sequence's first annotated frame
(earlier frames have no object to track, as in the LVOS protocol). Every object is given to the model once, on the
first annotated frame where it appears: the first-frame objects at the start and, with ``late_objects`` (LVOS,
YouTube-VOS), objects that enter later when they enter. Without it, later objects are left out, as the DAVIS protocol
(which scores first-frame objects only) assumes. Nothing else from the ground truth reaches the model.

Speed follows the papers' protocol: FPS = frames / device-synchronised time of the model step and memory update,
over non-reference frames (the first frame of each sequence is excluded). Reading and resizing frames, upsampling
masks to the original size and writing PNGs are not timed. Peak memory is measured over the whole run.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from longvos.engine.options import SegmentOptions
from longvos.engine.outputs import (OUTPUTS_FILE, check_output_folder, is_os_metadata, log_outputs,
                                    logged_names, refuse_used_folder)
from longvos.engine.pipeline import SegmentSummary, segment_video
from longvos.engine.resources import format_bytes
from longvos.eval.masks import ground_truth_ids, present_ids
from longvos.eval.measure import SPEED_PROTOCOL, PeakMemory, environment
from longvos.eval.report import GLOBAL_CSV, PER_SEQUENCE_CSV, SUMMARY_JSON
from longvos.io.davis import DavisLayout
from longvos.io.errors import InputError
from longvos.io.masks import IndexMask
from longvos.io.palette import palette_to_array
from longvos.io.video import ImageSequenceSource
from longvos.io.writer import commit_folder, partial_folder


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
    max_part_distance: float | None = None  # far parts dropped beyond this many object sizes (None: kept)

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
            "max_part_distance": self.max_part_distance,
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


def run_model(options: SegmentOptions, layout: DavisLayout, sequences: list[str], pred_root: Path, *,
              late_objects: bool = True) -> RunReport:
    """Predict every frame of ``sequences`` into ``pred_root/<sequence>/<frame>.png`` as ``options`` say (the model,
    loaded once, its size cap and memory; ``progress``) and measure the run.

    Each sequence is written into a hidden folder beside its own (``.<sequence>.partial``); only when every sequence
    is complete does each replace its folder as a whole. A sequence's folder therefore never mixes this run's masks
    with an earlier run's (stale frames of a longer or other run included), and a run that stops part-way leaves
    the earlier run's folders as they were (and its partial folders removed).

    The masks written are listed in ``pred_root.parent/.longvos-outputs`` (as ``<pred_root name>/<sequence>/<file>``;
    the prediction folders themselves hold masks only). A sequence folder that holds anything else (files longvos
    did not write, see :func:`check_prediction_folders`) is refused with one :class:`InputError` line before the
    model loads, and again just before the folders are replaced: replacing the folder would delete them."""
    pred_root = Path(pred_root)
    check_prediction_folders(pred_root, layout, sequences)  # before anything slow (the model) is loaded
    segmenter = options.load_segmenter()
    options = options.replace(model=segmenter, checkpoint=None)
    meter = PeakMemory(segmenter.device).start()
    environment_now = environment(segmenter.device, segmenter.dtype)
    runs, max_size, part_distance, device_peaks, staged = [], None, None, [], []
    try:
        for name in sequences:
            staged.append((partial_folder(pred_root / name), pred_root / name))
            run, summary = _run_sequence(options, layout, name, staged[-1][0], late_objects)
            runs.append(run)
            max_size, part_distance = summary.max_size, summary.max_part_distance
            if summary.peak_device_bytes is not None:  # each video restarts the device's peak counter
                device_peaks.append(summary.peak_device_bytes)
        # A long run leaves time to put files into a folder it is about to replace: look again, then list the
        # masks before they take their place (so that the list covers them even if the commit is cut short).
        check_prediction_folders(pred_root, layout, sequences)
        written = [f"{pred_root.name}/{folder.name}/{path.name}" for partial, folder in staged
                   for path in sorted(partial.iterdir())]
        log_outputs(pred_root.parent, *written, once=True)  # each once, however often eval runs there
    except BaseException:
        for partial, _ in staged:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    for partial, folder in staged:
        _keep_os_metadata(folder, partial)
        commit_folder(partial, folder)
    report = RunReport(segmenter.name, max_size, environment_now, runs, meter.read(), part_distance)
    if device_peaks:
        report.memory["peak_device_bytes"] = max(device_peaks)
    return report


def _keep_os_metadata(folder: Path, partial: Path) -> None:
    """Move the files an operating system left in ``folder`` (``.DS_Store``, ``._*``, ...:
    :func:`~longvos.engine.outputs.is_os_metadata`) into ``partial``, which is about to replace it: a rerun deletes
    only the masks longvos wrote (and :func:`check_prediction_folders` refuses a folder holding anything else)."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for entry in folder.iterdir():
        if is_os_metadata(entry.name) and entry.is_file() and not entry.is_symlink():
            if not (partial / entry.name).exists():
                try:
                    os.replace(entry, partial / entry.name)
                except OSError:  # the OS's file: the masks are replaced all the same
                    pass


#: What ``longvos eval --model`` writes into its output folder (besides longvos's ``.longvos-*`` records).
EVAL_OUTPUTS = ("predictions", GLOBAL_CSV, PER_SEQUENCE_CSV, SUMMARY_JSON)
_FOREIGN_ADVICE = ("it holds files longvos did not write, which eval would delete when it replaces the folder with "
                   "this run's masks: move them, or use another --out")


def check_eval_output_folder(out_dir: Path) -> None:
    """Refuse (one :class:`InputError` line) an output folder of ``longvos eval --model`` that holds anything but
    what eval writes there: ``predictions/``, its reports (those the folder's output list names, where it has one)
    and longvos's records. Needs neither the dataset nor the model."""
    out_dir = check_output_folder(out_dir, "--out")
    listed = logged_names(out_dir)
    keep = tuple(name for name in EVAL_OUTPUTS if listed is None or name == "predictions" or name in listed)
    refuse_used_folder(out_dir, "eval writes its predictions/ and reports there and never beside other files: move "
                                "them, or use another --out", keep=keep)


def check_report_folder(out_dir: Path, pred_root: Path) -> None:
    """Refuse (one :class:`InputError` line) the folder ``longvos eval --pred pred_root`` would write its reports
    into where that would replace or mix with files longvos did not write there. Without ``--out`` the reports go
    beside the scored predictions: only report files the folder's output list does not name are refused; a folder
    given as ``--out`` holds nothing but eval's listed reports, as ``--model``'s, and the predictions scored where
    they are its ``predictions/`` (re-scoring what ``eval --model`` wrote, into its folder)."""
    out_dir = check_output_folder(out_dir, "--out")
    listed = set(logged_names(out_dir) or ())
    reports = (GLOBAL_CSV, PER_SEQUENCE_CSV, SUMMARY_JSON)
    if out_dir.resolve() == pred_root.resolve():
        from longvos.batch.items import SUMMARY_FILE
        from longvos.engine.progress import PROGRESS_FILE

        runs = [name for name in (SUMMARY_FILE, PROGRESS_FILE) if (out_dir / name).exists()]
        runs += [f"{child.name}/{name}" for child in sorted(out_dir.iterdir()) if child.is_dir()  # a batch cut
                 for name in (PROGRESS_FILE, OUTPUTS_FILE) if (child / name).is_file()]  # short has no summary
        if runs:  # writing beside them would make that run's folder one it no longer resumes or overwrites
            raise InputError(f"{out_dir} is the output of a longvos batch or segment run (it holds {runs[0]}): "
                             f"give --out a folder for eval's reports")
        unlisted = [name for name in reports if ((out_dir / name).exists() or (out_dir / name).is_symlink())
                    and name not in listed]
        if unlisted:
            raise InputError(f"{out_dir} holds {', '.join(unlisted)}, which longvos did not write there and eval "
                             f"would replace: move it, or give another --out")
        return
    own = tuple(name for name in reports if name in listed)
    if pred_root.resolve() == (out_dir / "predictions").resolve():
        own += ("predictions",)
    refuse_used_folder(out_dir, "eval writes its reports there and never beside other files: move them, or use "
                                "another --out", keep=own)


def log_reports(out_dir: Path) -> None:
    """List eval's reports among the outputs of ``out_dir`` (call it before they are written)."""
    log_outputs(Path(out_dir), GLOBAL_CSV, PER_SEQUENCE_CSV, SUMMARY_JSON, once=True)


def check_prediction_folders(pred_root: Path, layout: DavisLayout, sequences: list[str]) -> None:
    """Refuse (one :class:`InputError` line naming the folder and what longvos did not write there) a
    ``pred_root/<sequence>`` folder that :func:`run_model` would replace but that holds files longvos did not write.

    Longvos's own are the files ``pred_root.parent/.longvos-outputs`` names. Where there is no list but the summary
    of an earlier ``eval --model`` run (an earlier longvos kept none), they are the masks an evaluation names after
    frames: PNGs named after a frame of the sequence, or numbered (the frames of a longer version of it). Otherwise
    masks named like frames may be a user's own: they are refused."""
    pred_root = check_output_folder(pred_root, "the predictions folder")
    listed: dict[str, set[str]] = {}  # sequence -> the files the output list names in its folder
    logged = logged_names(pred_root.parent)
    # Only a run from before the list (none there, its summary there) leaves masks longvos wrote unnamed.
    unlisted_run = logged is None and earlier_model_run(pred_root.parent)
    for entry in logged or []:
        parts = entry.split("/", 2)
        if len(parts) == 3 and parts[0] == pred_root.name:
            listed.setdefault(parts[1], set()).add(parts[2])
    for name in sequences:
        folder = pred_root / name
        if not folder.exists() and not folder.is_symlink():
            continue
        if folder.is_symlink() or not folder.is_dir():
            raise InputError(f"{folder} is not a folder longvos made ({'a link' if folder.is_symlink() else 'a file'}"
                             f"), and eval would replace it: move it, or use another --out")
        own = listed.get(name, set())
        if not own and unlisted_run:
            frames = {path.stem for path in layout.frames_dir(name).iterdir()}
            own = {path.name for path in folder.glob("*.png") if path.stem in frames or path.stem.isdigit()}
        own_files = tuple(entry for entry in own if "/" not in entry and (folder / entry).is_file())
        refuse_used_folder(folder, _FOREIGN_ADVICE, keep=own_files)


def earlier_model_run(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds the summary an ``eval --model`` run writes (a ``summary.json`` with its ``run``)."""
    try:
        summary = json.loads((out_dir / SUMMARY_JSON).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and isinstance(summary.get("run"), dict)


def _run_sequence(options: SegmentOptions, layout: DavisLayout, name: str, out_dir: Path,
                  late_objects: bool) -> tuple[SequenceRun, SegmentSummary]:
    annotations = layout.annotation_paths(name)
    source = ImageSequenceSource.from_folder(layout.frames_dir(name))
    names = [source.frame_name(i) for i in range(source.num_frames)]
    start = next((i for i, frame_name in enumerate(names) if frame_name in annotations), None)
    if start is None:
        raise InputError(f"{layout.annotations_root / name}: no annotation matches a frame name of "
                         f"{layout.frames_dir(name)} (sequence {name})")
    palette = _palette_of(annotations[names[start]])
    prompts: dict[int, IndexMask] = {}  # each object once, on its first annotated frame, alone in its mask
    known_ids: set[int] = set()
    for index in range(start, len(names) if late_objects else start + 1):
        if names[index] not in annotations:
            continue
        gt_HW = ground_truth_ids(annotations[names[index]])
        new_ids = [i for i in present_ids(gt_HW) if i not in known_ids]
        if index == start and not new_ids:
            raise InputError(f"{annotations[names[index]]}: the first annotation of sequence {name} has no object")
        if new_ids:  # only objects the model has not been given yet
            prompts[index] = IndexMask(np.where(np.isin(gt_HW, new_ids), gt_HW, 0), palette)
            known_ids.update(new_ids)
    run = SequenceRun(name)

    def timed(frame, result) -> None:
        if frame.index > start:  # the reference frame is not timed (papers' protocol)
            run.timed_frames += 1
            run.model_seconds += result.model_seconds

    summary = segment_video(source, prompts, out_dir, options, start=start, records=False, on_frame=timed)
    run.frames, run.peak_state_bytes = summary.frames, summary.state_bytes
    return run, summary


def _palette_of(annotation: Path) -> np.ndarray:
    """The ground truth's own palette, so that predictions look like the annotations (DAVIS colours otherwise)."""
    with Image.open(annotation) as image:
        return palette_to_array(image.getpalette() if image.mode == "P" else None)
