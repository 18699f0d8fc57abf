"""DAVIS semi-supervised J&F of a folder of predictions, frame-parallel over processes.

Protocol (the official DAVIS-2017 evaluator's, see ``docs`` of the golden fixture):

- Frames: the ground-truth PNGs of a sequence in temporal order; the first and the last are never scored. Ground
  truth may be sparse, so "frames" means annotated frames. A prediction must exist for every scored frame.
- Void (255) in ground truth is background. Masks must have their ground-truth frame's size.
- Objects, ``objects="first-frame"`` (official): ids 1..K, K = the largest id in the first ground-truth frame; an id
  in between that never occurs still counts (it scores 1). Later ids are ignored, and a prediction id above K is an
  error. ``objects="all"`` (for LVOS-style data where objects enter later): every id that occurs in the ground truth,
  each scored on the annotated frames after the one where it first appears (that frame gives the model its mask).
- Statistics per object, then plain averages over all objects of all sequences (see :mod:`.statistics`).

Work is split into chunks of frames, not sequences, so that a few very long videos still use every process.
"""
from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from longvos.eval.dataset import SequenceFiles, find_sequences
from longvos.eval.masks import ground_truth_ids, present_ids, read_raw_ids
from longvos.eval.metrics import boundary_match, region_similarity, tolerance_radius
from longvos.eval.results import OBJECT_POLICIES, EvalResult, ObjectPolicy, ObjectScores
from longvos.eval.statistics import DECAY_MODES, DecayMode, SeriesStats
from longvos.io.errors import InputError, MaskError
from longvos.io.masks import VOID

#: Upper bound on frames per work item: small enough to balance load, large enough to amortise process overhead.
_MAX_CHUNK_FRAMES = 32


@dataclass(frozen=True)
class FrameScores:
    """J and F of every object scored on one frame, plus which ids each mask contains."""

    index: int  #: position of the frame in its sequence's annotated frames
    gt_ids: tuple[int, ...]
    pred_ids: tuple[int, ...]
    j: dict[int, float]
    f: dict[int, float]


def score_frame(gt_path: Path, pred_path: Path, index: int, object_ids: Sequence[int]) -> FrameScores:
    """Score ``object_ids`` and every id present in either mask on one frame."""
    gt_HW = ground_truth_ids(gt_path)
    pred_HW = read_raw_ids(pred_path, "prediction")
    if pred_HW.shape != gt_HW.shape:
        raise MaskError(f"{pred_path}: prediction is {pred_HW.shape[1]}x{pred_HW.shape[0]} but its ground truth "
                        f"{gt_path} is {gt_HW.shape[1]}x{gt_HW.shape[0]}")
    gt_ids, pred_ids = present_ids(gt_HW), present_ids(pred_HW)
    radius = tolerance_radius(*gt_HW.shape)
    j, f = {}, {}
    # An id absent from both masks scores J = F = 1, so only ids that occur need work; the caller's ids are scored
    # anyway so that every object has an explicit value on every frame.
    for object_id in sorted(set(object_ids) | set(gt_ids) | set(pred_ids)):
        pred_mask_HW, gt_mask_HW = pred_HW == object_id, gt_HW == object_id
        j[object_id] = region_similarity(pred_mask_HW, gt_mask_HW)
        f[object_id] = boundary_match(pred_mask_HW, gt_mask_HW, radius).f_measure
    return FrameScores(index, gt_ids, pred_ids, j, f)


def _score_chunk(sequence_index: int, frames: list[tuple[Path, Path, int]], object_ids: tuple[int, ...],
                 ) -> tuple[int, list[FrameScores]]:
    """Process-pool work item: a run of frames of one sequence."""
    return sequence_index, [score_frame(gt, pred, index, object_ids) for gt, pred, index in frames]


@dataclass(frozen=True)
class _SequencePlan:
    files: SequenceFiles
    first_ids: tuple[int, ...]  #: ids present in the first annotated frame
    scored_ids: tuple[int, ...]  #: ids every scored frame must report

    @classmethod
    def make(cls, files: SequenceFiles, policy: ObjectPolicy) -> _SequencePlan:
        if len(files.gt_paths) < 3:
            raise InputError(f"{files.gt_paths[0].parent}: sequence {files.name} has {len(files.gt_paths)} annotated "
                             f"frame(s); at least 3 are needed because the first and last are never scored")
        first_ids = present_ids(ground_truth_ids(files.gt_paths[0]))
        if policy == "first-frame":
            if not first_ids:
                if (read_raw_ids(files.gt_paths[0], "ground truth") == VOID).any():  # DAVIS-2016's 0/255 masks
                    raise InputError(f"{files.gt_paths[0]}: every object pixel of the first annotated frame of "
                                     f"sequence {files.name} is {VOID}, which DAVIS reads as void (not scored): "
                                     f"binary masks must hold 0 and 1 (or object ids), not 0 and 255")
                raise InputError(f"{files.gt_paths[0]}: the first annotated frame of sequence {files.name} has no "
                                 f"object; with objects that appear later, evaluate with objects='all'")
            return cls(files, first_ids, tuple(range(1, max(first_ids) + 1)))
        return cls(files, first_ids, first_ids)

    def work(self) -> list[tuple[Path, Path, int]]:
        paths = self.files.gt_paths
        return [(paths[i], self.files.pred_path(paths[i]), i) for i in range(1, len(paths) - 1)]


def _objects_of_sequence(plan: _SequencePlan, frames: list[FrameScores], policy: ObjectPolicy,
                         decay_mode: DecayMode) -> tuple[list[ObjectScores], list[str]]:
    files = plan.files
    if policy == "first-frame":
        first_index = {object_id: 0 for object_id in plan.scored_ids}
    else:
        first_index = {object_id: 0 for object_id in plan.first_ids}
        for frame in frames:
            for object_id in frame.gt_ids:
                first_index.setdefault(object_id, frame.index)
        last = len(files.gt_paths) - 1  # never scored: an object first seen there is listed as unscored
        for object_id in present_ids(ground_truth_ids(files.gt_paths[last])):
            first_index.setdefault(object_id, last)
    for frame in frames:
        unknown = [i for i in frame.pred_ids if i not in first_index]
        if unknown:
            gt_path = files.gt_paths[frame.index]
            known = (f"objects 1..{max(first_index)} (from {files.gt_paths[0].name}; objects='all' also scores "
                     f"objects that appear later)" if policy == "first-frame" else f"objects {sorted(first_index)}")
            raise MaskError(f"{files.pred_path(gt_path)}: prediction contains object id(s) {unknown}, but the ground "
                            f"truth of sequence {files.name} has {known}")
    objects, unscored = [], []
    for object_id in sorted(first_index):
        own_frames = [frame for frame in frames if frame.index > first_index[object_id]]
        if not own_frames:
            unscored.append(f"{files.name}_{object_id}")
            continue
        # Ids absent from both masks of a frame were not computed: by definition they score 1.
        j = np.array([frame.j.get(object_id, 1.0) for frame in own_frames], dtype=np.float64)
        f = np.array([frame.f.get(object_id, 1.0) for frame in own_frames], dtype=np.float64)
        names = tuple(files.gt_paths[frame.index].stem for frame in own_frames)
        objects.append(ObjectScores(files.name, object_id, names, j, f,
                                    SeriesStats.of(j, decay_mode), SeriesStats.of(f, decay_mode)))
    return objects, unscored


def evaluate_sequences(sequences: Sequence[SequenceFiles], *, objects: ObjectPolicy = "first-frame",
                       decay: DecayMode = "int64", workers: int | None = None, progress: bool = False,
                       ) -> EvalResult:
    """Score already-located sequences (see :func:`evaluate` for the arguments)."""
    if objects not in OBJECT_POLICIES:
        raise ValueError(f"objects must be one of {OBJECT_POLICIES}, not {objects!r}")
    if decay not in DECAY_MODES:
        raise ValueError(f"decay must be one of {DECAY_MODES}, not {decay!r}")
    if not sequences:
        raise InputError("no sequence to evaluate")
    plans = [_SequencePlan.make(files, objects) for files in sequences]
    total_frames = sum(len(plan.files.gt_paths) - 2 for plan in plans)
    workers = max(1, min(workers or os.cpu_count() or 1, total_frames))
    chunk_frames = max(1, min(_MAX_CHUNK_FRAMES, math.ceil(total_frames / (4 * workers))))
    chunks = []
    for sequence_index, plan in enumerate(plans):
        work = plan.work()
        chunks += [(sequence_index, work[i:i + chunk_frames], plan.scored_ids)
                   for i in range(0, len(work), chunk_frames)]

    frames_by_sequence: list[list[FrameScores]] = [[] for _ in plans]
    with tqdm(total=total_frames, desc="scoring", unit="frame", disable=not progress) as bar:
        def collect(result: tuple[int, list[FrameScores]]) -> None:
            sequence_index, scores = result
            frames_by_sequence[sequence_index] += scores
            bar.update(len(scores))

        if workers == 1:
            for chunk in chunks:
                collect(_score_chunk(*chunk))
        else:
            # "spawn": the parent may hold torch's thread pools (after running a model), which fork can deadlock.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = [pool.submit(_score_chunk, *chunk) for chunk in chunks]
                try:
                    for future in as_completed(futures):
                        collect(future.result())
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise

    all_objects, unscored = [], []
    for plan, frames in zip(plans, frames_by_sequence):
        frames.sort(key=lambda frame: frame.index)
        sequence_objects, sequence_unscored = _objects_of_sequence(plan, frames, objects, decay)
        all_objects += sequence_objects
        unscored += sequence_unscored
    if not all_objects:
        raise InputError("no object has a scored frame in any sequence")
    return EvalResult(tuple(all_objects), tuple(p.files.name for p in plans), objects, decay, tuple(unscored))


def evaluate(gt_root: str | Path, pred_root: str | Path, sequences: Sequence[str] | str | Path | None = None, *,
             objects: ObjectPolicy = "first-frame", decay: DecayMode = "int64", workers: int | None = None,
             progress: bool = False) -> EvalResult:
    """DAVIS semi-supervised J&F of ``pred_root/<seq>/*.png`` against ``gt_root/<seq>/*.png``.

    Args:
        sequences: names, a text file with one name per line, or ``None`` for every folder of ``gt_root``.
        objects: ``"first-frame"`` (official DAVIS) or ``"all"`` (objects entering later are scored too).
        decay: ``"int64"`` (correct for any length) or ``"official-uint8"`` (reproduces the official code's
            numbers, which are wrong from 256 scored frames on).
        workers: scoring processes (default: one per CPU core; 1 scores in this process).
        progress: show a progress bar.

    Raises:
        InputError: a missing sequence, frame or prediction, a size mismatch, or an unknown prediction id;
            the message names the file.
    """
    found = find_sequences(Path(gt_root), Path(pred_root), sequences)
    return evaluate_sequences(found, objects=objects, decay=decay, workers=workers, progress=progress)
