"""Speed and memory against video length, per long-term memory design: the two curves of the MAVOS paper.

A real clip is streamed through a session, looped forwards then backwards (0..n-1, n-2..0, 1..n-1, ...) up to the
longest requested length. Because the models are online (frame t never sees frame t + 1), the figures for a video
of length L are those of the first L frames of this one stream, so one stream per design measures every length.

Per length: median and 95th-percentile per-frame latency and FPS over the non-reference frames (the device-
synchronised model step including the memory update, as in the papers), the largest per-video model state, and
peak memory: on CUDA torch's peak allocation, on CPU the process's peak resident set (absolute, and its growth
since the stream started). Reproducibility: a fixed seed before each model is built (random weights are then
identical), warm-up frames on a separate session before timing, thread count and hardware in the report.
"""
from __future__ import annotations

import gc
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from longvos.device import resolve_device, resolve_dtype
from longvos.engine.resources import format_bytes
from longvos.engine.segmenter import Segmenter, load_model
from longvos.eval.clip import Clip, ping_pong
from longvos.eval.measure import SPEED_PROTOCOL, PeakMemory, environment
from longvos.io.errors import InputError

DEFAULT_LENGTHS = (100, 500, 2000)
#: Label of the model's own memory design when no override is given.
DEFAULT_MEMORY = "default"


@dataclass(frozen=True)
class LengthPoint:
    """Everything measured for one memory design at one video length."""

    memory: str
    length: int
    timed_frames: int  #: non-reference frames (length - 1)
    median_ms: float
    p95_ms: float
    fps: float
    state_bytes: int  #: largest per-video model state over the first ``length`` frames
    peak_rss_bytes: int
    rss_growth_bytes: int
    peak_device_bytes: int | None


@dataclass
class BenchReport:
    """A benchmark's settings, environment and measurements, with the paper's ratios."""

    model: str
    clip: str
    frame_size: tuple[int, int]  #: (width, height) of the frames the network sees
    mem_gap: int | None  #: long-term memory interval used (None: the model has none)
    warmup: int
    seed: int
    environment: dict[str, object]
    points: list[LengthPoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def point(self, memory: str, length: int) -> LengthPoint | None:
        return next((p for p in self.points if p.memory == memory and p.length == length), None)

    def ratios(self, candidate: str = "mca", baseline: str = "growing") -> list[dict[str, float | int]]:
        """Speed-up and memory saving of ``candidate`` over ``baseline`` at every length both reached."""
        rows = []
        for fast in (p for p in self.points if p.memory == candidate):
            slow = self.point(baseline, fast.length)
            if slow is None:
                continue
            row = {"length": fast.length, "speedup": fast.fps / slow.fps,
                   "state_saving": 1 - fast.state_bytes / slow.state_bytes,
                   "rss_growth_saving": (1 - fast.rss_growth_bytes / slow.rss_growth_bytes
                                         if slow.rss_growth_bytes else math.nan)}
            if fast.peak_device_bytes is not None and slow.peak_device_bytes:
                row["device_saving"] = 1 - fast.peak_device_bytes / slow.peak_device_bytes
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "clip": self.clip, "frame_size": list(self.frame_size), "mem_gap": self.mem_gap,
                "warmup_frames": self.warmup, "seed": self.seed, **self.environment, "speed_protocol": SPEED_PROTOCOL,
                "points": [asdict(p) for p in self.points], "ratios_mca_over_growing": self.ratios(),
                "notes": self.notes}

    def format_table(self) -> str:
        on_device = any(p.peak_device_bytes is not None for p in self.points)
        headers = ["memory", "frames", "median ms", "p95 ms", "FPS", "state", "peak RSS", "RSS growth"]
        headers += ["device peak"] if on_device else []
        rows = []
        for p in self.points:
            row = [p.memory, str(p.length), f"{p.median_ms:.1f}", f"{p.p95_ms:.1f}", f"{p.fps:.2f}",
                   format_bytes(p.state_bytes), format_bytes(p.peak_rss_bytes), format_bytes(p.rss_growth_bytes)]
            rows.append(row + ([format_bytes(p.peak_device_bytes)] if on_device else []))
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
        lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
        for ratio in self.ratios():
            fast, slow = self.point("mca", ratio["length"]), self.point("growing", ratio["length"])
            text = (f"mca vs growing at {ratio['length']} frames: {ratio['speedup']:.2f}x the FPS, model state "
                    f"{100 * ratio['state_saving']:.0f}% smaller")
            if "device_saving" in ratio:
                text += f", device peak {100 * ratio['device_saving']:.0f}% smaller"
            # RSS growth is reported as values, not a ratio: on CPU it is noisy next to small model states.
            text += (f" (RSS growth {format_bytes(fast.rss_growth_bytes)} vs "
                     f"{format_bytes(slow.rss_growth_bytes)})")
            lines.append(text)
        return "\n".join(lines)


def run_benchmark(model: str, clip: Clip, *, memories: Sequence[str | None] = (None,),
                  lengths: Sequence[int] = DEFAULT_LENGTHS, checkpoint: str | Path | None = None,
                  device: str = "auto", dtype: str | None = None, mem_gap: int | None = None, warmup: int = 5,
                  seed: int = 0, time_budget_s: float | None = None, progress: bool = False) -> BenchReport:
    """Stream ``clip`` looped to ``max(lengths)`` frames once per memory design and measure every length.

    ``time_budget_s`` caps each design's stream; lengths it does not reach are left out and noted.
    """
    lengths = sorted(set(int(n) for n in lengths))
    if not lengths or lengths[0] < 2:
        raise InputError(f"video lengths must be at least 2 frames (the first is the untimed reference): {lengths}")
    if not memories:
        raise InputError("no memory design to benchmark")
    height, width = clip.first_mask.shape
    report = BenchReport(model, clip.name, (width, height), mem_gap, warmup, seed,
                         environment(resolve_device(device), resolve_dtype(dtype)))
    for memory in memories:
        torch.manual_seed(seed)
        np.random.seed(seed)
        segmenter = load_model(model, checkpoint, device=device, dtype=dtype, memory=memory, mem_gap=mem_gap)
        # Without an override, record the interval the model actually uses (it decides how fast "growing" grows).
        report.mem_gap = getattr(getattr(segmenter.model, "config", None), "mem_gap", report.mem_gap)
        label = memory or DEFAULT_MEMORY
        _warm_up(segmenter, clip, warmup)
        points, stopped_at = _stream(segmenter, clip, label, lengths, time_budget_s, progress)
        report.points += points
        if stopped_at is not None:
            report.notes.append(f"{label}: stopped after {stopped_at} frames (time budget {time_budget_s:.0f} s); "
                                f"lengths not reached: {[n for n in lengths if n > stopped_at]}")
        del segmenter
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return report


def _warm_up(segmenter: Segmenter, clip: Clip, frames: int) -> None:
    """Run a throwaway session so one-time costs (allocator growth, kernel selection) stay out of the timings."""
    if frames <= 0:
        return
    with segmenter.session(max_size=None) as session:
        for t, index in enumerate(ping_pong(len(clip.frames), frames)):
            session.step(clip.frames[index], clip.first_mask if t == 0 else None)


def _stream(segmenter: Segmenter, clip: Clip, label: str, lengths: list[int], time_budget_s: float | None,
            progress: bool) -> tuple[list[LengthPoint], int | None]:
    gc.collect()
    meter = PeakMemory(segmenter.device).start()
    latencies: list[float] = []
    state_bytes, points, started = 0, [], time.perf_counter()
    wanted = set(lengths)
    with segmenter.session(max_size=None) as session, \
            tqdm(total=lengths[-1], desc=f"bench {label}", unit="frame", disable=not progress) as bar:
        for t, index in enumerate(ping_pong(len(clip.frames), lengths[-1])):
            result = session.step(clip.frames[index], clip.first_mask if t == 0 else None)
            if t > 0:  # the reference frame is not timed
                latencies.append(result.model_seconds)
            state_bytes = max(state_bytes, session.memory_bytes())
            bar.update()
            if t + 1 in wanted:
                points.append(_point(label, t + 1, latencies, state_bytes, meter.read()))
            over_budget = time_budget_s is not None and time.perf_counter() - started > time_budget_s
            if over_budget and t + 1 < lengths[-1]:
                return points, t + 1
    return points, None


def _point(label: str, length: int, latencies: list[float], state_bytes: int, memory: dict) -> LengthPoint:
    seconds = np.asarray(latencies, dtype=np.float64)
    return LengthPoint(
        memory=label, length=length, timed_frames=len(seconds),
        median_ms=float(np.median(seconds) * 1e3), p95_ms=float(np.percentile(seconds, 95) * 1e3),
        fps=float(len(seconds) / seconds.sum()), state_bytes=state_bytes,
        peak_rss_bytes=int(memory["peak_rss_bytes"]), rss_growth_bytes=int(memory["rss_growth_bytes"]),
        peak_device_bytes=memory["peak_device_bytes"],
    )
