"""Speed and memory against video length, per model and memory design: the curves of the MAVOS and LiVOS papers.

A real clip is streamed through a session, looped forwards then backwards (0..n-1, n-2..0, 1..n-1, ...) up to the
longest requested length. Because the models are online (frame t never sees frame t + 1), the figures for a video
of length L are those of the first L frames of this one stream, so one stream per design measures every length.

A *design* is a model with one long-term memory design (``mavos-r50:mca``, ``deaot-r50:growing``, ``livos-r50``),
so one report can set LiVOS's recurrent state next to the AOT family's memories.

Per length: median and 95th-percentile per-frame latency and FPS over the non-reference frames (the device-
synchronised model step including the memory update, as in the papers), the largest per-video model state, and
peak memory: on CUDA torch's peak allocation, on CPU the process's peak resident set (absolute, and its growth
since the stream started). Reproducibility: a fixed seed before each model is built (random weights are then
identical), warm-up frames on a separate session before timing, thread count and hardware in the report. On a
shared machine, ``interleave`` steps the designs in lockstep so that load drift cannot favour one of them.
"""
from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from longvos.device import DEFAULT_DTYPE, resolve_device, resolve_dtype
from longvos.engine.resources import format_bytes
from longvos.engine.segmenter import Segmenter, load_segmenter
from longvos.engine.session import Session
from longvos.eval.clip import Clip, ping_pong
from longvos.eval.measure import SPEED_PROTOCOL, PeakMemory, environment
from longvos.io.errors import InputError

DEFAULT_LENGTHS = (100, 500, 2000)
#: The design the papers measure the others against, when it is in the report.
BASELINE_MEMORY = "growing"


@dataclass(frozen=True)
class Design:
    """One benchmarked configuration: a registered model with a long-term memory design (None: its own)."""

    model: str
    memory: str | None = None

    @property
    def label(self) -> str:
        return self.model if self.memory is None else f"{self.model}:{self.memory}"

    @classmethod
    def parse_list(cls, models: str, memories: str | None = None) -> list[Design]:
        """``"livos-r50,mavos-r50:mca"`` plus ``memories`` (``"mca,growing"``) for the models that name none."""
        default_memories = [m.strip() for m in memories.split(",") if m.strip()] if memories else [None]
        designs = []
        for spec in (s.strip() for s in models.split(",")):
            if not spec:
                continue
            model, _, memory = spec.partition(":")
            for m in [memory.strip()] if memory.strip() else default_memories:
                designs.append(cls(model.strip(), m))
        if not designs:
            raise InputError(f"no model to benchmark in {models!r}")
        labels = [d.label for d in designs]
        if len(set(labels)) != len(labels):
            raise InputError(f"a design is listed twice: {', '.join(labels)}")
        return designs


@dataclass(frozen=True)
class LengthPoint:
    """Everything measured for one design at one video length."""

    design: str  #: :attr:`Design.label`
    length: int
    timed_frames: int  #: non-reference frames (length - 1)
    median_ms: float
    p95_ms: float
    recent_median_ms: float  #: median over the last tenth of the timed frames: the latency *at* this length
    fps: float
    state_bytes: int  #: largest per-video model state over the first ``length`` frames
    peak_rss_bytes: int | None  #: process peaks: None when designs were interleaved (not attributable)
    rss_growth_bytes: int | None
    peak_device_bytes: int | None  #: None on CPU


@dataclass
class BenchReport:
    """A benchmark's settings, environment and measurements, with the papers' ratios."""

    designs: list[Design]
    clip: str
    frame_size: tuple[int, int]  #: (width, height) of the frames the network sees
    warmup: int
    seed: int
    environment: dict[str, object]
    mem_gaps: dict[str, int | None] = field(default_factory=dict)  #: per design label (None: no interval)
    points: list[LengthPoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def models(self) -> str:
        return ", ".join(dict.fromkeys(d.model for d in self.designs))

    @property
    def baseline(self) -> str | None:
        """The first design with ``growing`` memory (the papers' reference), if any."""
        return next((d.label for d in self.designs if d.memory == BASELINE_MEMORY), None)

    def point(self, design: str, length: int) -> LengthPoint | None:
        return next((p for p in self.points if p.design == design and p.length == length), None)

    def ratios(self, baseline: str | None = None) -> list[dict[str, object]]:
        """Speed-up and memory saving of every other design over ``baseline`` at every length both reached."""
        baseline = baseline or self.baseline
        rows = []
        for fast in (p for p in self.points if baseline is not None and p.design != baseline):
            slow = self.point(baseline, fast.length)
            if slow is None:
                continue
            row = {"design": fast.design, "baseline": baseline, "length": fast.length,
                   "speedup": fast.fps / slow.fps, "state_saving": 1 - fast.state_bytes / slow.state_bytes}
            if fast.rss_growth_bytes is not None and slow.rss_growth_bytes:
                row["rss_growth_saving"] = 1 - fast.rss_growth_bytes / slow.rss_growth_bytes
            if fast.peak_device_bytes is not None and slow.peak_device_bytes:
                row["device_saving"] = 1 - fast.peak_device_bytes / slow.peak_device_bytes
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, object]:
        return {"designs": [d.label for d in self.designs], "clip": self.clip, "frame_size": list(self.frame_size),
                "mem_gaps": self.mem_gaps, "warmup_frames": self.warmup, "seed": self.seed, **self.environment,
                "speed_protocol": SPEED_PROTOCOL, "points": [asdict(p) for p in self.points],
                "ratios": self.ratios(), "notes": self.notes}

    def format_table(self) -> str:
        on_device = any(p.peak_device_bytes is not None for p in self.points)
        headers = ["design", "frames", "median ms", "p95 ms", "last 10% ms", "FPS", "state", "peak RSS",
                   "RSS growth"]
        headers += ["device peak"] if on_device else []
        rows = [format_point(p, on_device) for p in self.points]
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
        lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
        for ratio in self.ratios():
            fast, slow = self.point(ratio["design"], ratio["length"]), self.point(ratio["baseline"], ratio["length"])
            text = (f"{ratio['design']} vs {ratio['baseline']} at {ratio['length']} frames: "
                    f"{ratio['speedup']:.2f}x the FPS, model state {100 * ratio['state_saving']:.0f}% smaller")
            if "device_saving" in ratio:
                text += f", device peak {100 * ratio['device_saving']:.0f}% smaller"
            if fast.rss_growth_bytes is not None:
                # RSS growth is shown as values, not a ratio: on CPU it is noisy next to small model states.
                text += (f" (RSS growth {format_bytes(fast.rss_growth_bytes)} vs "
                         f"{format_bytes(slow.rss_growth_bytes)})")
            lines.append(text)
        return "\n".join(lines)


def format_point(p: LengthPoint, on_device: bool = False) -> list[str]:
    """One table row; also printed on its own as soon as a long run reaches that length."""
    row = [p.design, str(p.length), f"{p.median_ms:.1f}", f"{p.p95_ms:.1f}", f"{p.recent_median_ms:.1f}",
           f"{p.fps:.2f}", format_bytes(p.state_bytes), format_bytes(p.peak_rss_bytes),
           format_bytes(p.rss_growth_bytes)]
    return row + ([format_bytes(p.peak_device_bytes)] if on_device else [])


def run_benchmark(designs: Sequence[Design], clip: Clip, *, lengths: Sequence[int] = DEFAULT_LENGTHS,
                  checkpoint: str | Path | None = None, device: str = "auto", dtype: str | None = DEFAULT_DTYPE,
                  mem_gap: int | None = None, warmup: int = 5, seed: int = 0, interleave: bool = False,
                  time_budget_s: float | None = None, progress: bool = False,
                  on_point: Callable[[BenchReport, LengthPoint], None] | None = None) -> BenchReport:
    """Stream ``clip`` looped to ``max(lengths)`` frames once per design and measure every length.

    By default the designs run one after the other, each with its own peak-memory meter. ``interleave`` instead
    steps all designs in lockstep (frame t of each, then frame t + 1): on a shared machine whose load drifts, every
    design then sees the same load, so their speed ratio is fair; process peaks (RSS, device) can no longer be
    told apart per design and are left out, while each design's model state is still exact.
    ``time_budget_s`` caps each stream (the lockstep one as a whole); lengths not reached are left out and noted.
    ``on_point`` is called with the report so far whenever a length is reached, so long runs can save as they go.
    ``checkpoint`` applies to every design, so it needs all of them to be one model.
    """
    designs = list(designs)
    lengths = sorted(set(int(n) for n in lengths))
    if not lengths or lengths[0] < 2:
        raise InputError(f"video lengths must be at least 2 frames (the first is the untimed reference): {lengths}")
    if not designs:
        raise InputError("no design to benchmark")
    if checkpoint is not None and len({d.model for d in designs}) > 1:
        raise InputError("one checkpoint cannot serve several models: benchmark them separately")
    height, width = clip.first_mask.shape
    report = BenchReport(designs, clip.name, (width, height), warmup, seed,
                         environment(resolve_device(device), resolve_dtype(dtype, resolve_device(device))))

    loaded: dict[str, Segmenter] = {}  # the model of the designs being run (a design is a per-session choice)

    def load(design: Design) -> Segmenter:
        torch.manual_seed(seed)
        np.random.seed(seed)
        if design.model not in loaded:
            if not interleave:
                loaded.clear()  # a design's peak memory counts its own model only
            # Speed and memory do not depend on the weights: a model without any runs with random ones.
            loaded[design.model] = load_segmenter(design.model, checkpoint, device=device, dtype=dtype,
                                                  allow_random_weights=True)
        segmenter = loaded[design.model]
        # Record the interval the sessions actually use (it decides how fast "growing" grows).
        report.mem_gaps[design.label] = segmenter.model.default_mem_gap if mem_gap is None else mem_gap
        _warm_up(segmenter, design, clip, warmup, mem_gap)
        return segmenter

    def reached(point: LengthPoint) -> None:
        report.points.append(point)
        if on_point is not None:
            on_point(report, point)

    if interleave:
        report.notes.append("designs interleaved frame by frame: per-design peak RSS / device memory not measured")
        groups = [designs]
    else:
        groups = [[design] for design in designs]
    for group in groups:
        streams = [_Stream(design, load(design), clip, lengths, mem_gap, metered=not interleave, on_point=reached)
                   for design in group]
        stopped_at = _play(streams, clip, lengths[-1], time_budget_s, progress)
        if stopped_at is not None:
            for stream in streams:
                report.notes.append(f"{stream.label}: stopped after {stopped_at} frames (time budget "
                                    f"{time_budget_s:.0f} s); lengths not reached: "
                                    f"{[n for n in lengths if n > stopped_at]}")
        del streams
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    # Interleaved streams report in lockstep order; keep the table grouped by design either way.
    order = {design.label: i for i, design in enumerate(designs)}
    report.points.sort(key=lambda p: (order[p.design], p.length))
    return report


def _session(segmenter: Segmenter, design: Design, mem_gap: int | None) -> Session:
    return segmenter.session(max_size=None, mem_gap=mem_gap, memory=design.memory, max_part_distance=None)


def _warm_up(segmenter: Segmenter, design: Design, clip: Clip, frames: int, mem_gap: int | None) -> None:
    """Run a throwaway session so one-time costs (allocator growth, kernel selection) stay out of the timings."""
    if frames <= 0:
        return
    with _session(segmenter, design, mem_gap) as session:
        for t, index in enumerate(ping_pong(len(clip.frames), frames)):
            session.step(clip.frames[index], clip.first_mask if t == 0 else None)


class _Stream:
    """One design's session, measured frame by frame; a :class:`LengthPoint` at every requested length."""

    def __init__(self, design: Design, segmenter: Segmenter, clip: Clip, lengths: list[int], mem_gap: int | None,
                 metered: bool, on_point: Callable[[LengthPoint], None]):
        self.label = design.label
        self.clip = clip
        self.wanted = set(lengths)
        self.on_point = on_point
        # Every frame's latency in an array filled before the meter starts: a list growing by a float per frame
        # would add to the very RSS growth this benchmark reports.
        self.latencies = np.full(max(lengths) - 1, np.nan)
        self.timed = 0
        self.meter = PeakMemory(segmenter.device).start() if metered else None
        self.session = _session(segmenter, design, mem_gap)
        self.state_bytes = 0

    def step(self, t: int, index: int) -> None:
        result = self.session.step(self.clip.frames[index], self.clip.first_mask if t == 0 else None)
        if t > 0:  # the reference frame is not timed
            self.latencies[self.timed] = result.model_seconds
            self.timed += 1
        self.state_bytes = max(self.state_bytes, self.session.memory_bytes())
        if t + 1 in self.wanted:
            memory = self.meter.read() if self.meter is not None else {}
            self.on_point(_point(self.label, t + 1, self.latencies[:self.timed], self.state_bytes, memory))


def _play(streams: list[_Stream], clip: Clip, length: int, time_budget_s: float | None,
          progress: bool) -> int | None:
    """Step every stream through ``length`` frames; returns the frame count where the time budget stopped it."""
    started = time.perf_counter()
    description = "bench " + "+".join(stream.label for stream in streams)
    try:
        with tqdm(total=length, desc=description, unit="frame", disable=not progress) as bar:
            for t, index in enumerate(ping_pong(len(clip.frames), length)):
                for stream in streams:
                    stream.step(t, index)
                bar.update()
                if time_budget_s is not None and time.perf_counter() - started > time_budget_s and t + 1 < length:
                    return t + 1
    finally:
        for stream in streams:
            stream.session.close()
    return None


def _point(label: str, length: int, latencies: Sequence[float], state_bytes: int, memory: dict) -> LengthPoint:
    """Statistics of the timed frames so far; ``memory`` is a :meth:`PeakMemory.read` (empty when not metered)."""
    seconds = np.asarray(latencies, dtype=np.float64)
    recent = seconds[-max(1, len(seconds) // 10):]  # a memory that grows makes late frames slower than the median
    return LengthPoint(
        design=label, length=length, timed_frames=len(seconds),
        median_ms=float(np.median(seconds) * 1e3), p95_ms=float(np.percentile(seconds, 95) * 1e3),
        recent_median_ms=float(np.median(recent) * 1e3),
        fps=float(len(seconds) / seconds.sum()), state_bytes=state_bytes,
        peak_rss_bytes=memory.get("peak_rss_bytes"), rss_growth_bytes=memory.get("rss_growth_bytes"),
        peak_device_bytes=memory.get("peak_device_bytes"),
    )
