"""The MAVOS paper's two curves, FPS and memory against video length, drawn from a benchmark report."""
from __future__ import annotations

from pathlib import Path

from longvos.eval.bench import BenchReport
from longvos.io.errors import InputError


def plot_curves(report: BenchReport, path: str | Path) -> None:
    """FPS and memory against video length, one line per design (the MAVOS paper's two panels)."""
    try:
        import matplotlib
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'longvos[plot]'") from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    on_device = any(p.peak_device_bytes is not None for p in report.points)
    figure, (speed_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for design in dict.fromkeys(p.design for p in report.points):
        series = [p for p in report.points if p.design == design]
        lengths = [p.length for p in series]
        speed_axis.plot(lengths, [p.fps for p in series], marker="o", label=design)
        used = [(p.peak_device_bytes if on_device else p.state_bytes) / 2**20 for p in series]
        memory_axis.plot(lengths, used, marker="o", label=design)
    speed_axis.set(ylabel="FPS", title="Speed")
    memory_axis.set(ylabel="peak device memory (MiB)" if on_device else "per-video model state (MiB)", title="Memory")
    all_lengths = sorted({p.length for p in report.points})
    for axis in (speed_axis, memory_axis):
        axis.set(xlabel="video length (frames)", xscale="log")
        axis.set_xticks(all_lengths, [str(n) for n in all_lengths])  # label the measured lengths, not powers of 10
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend()
    env = report.environment
    width, height = report.frame_size
    figure.suptitle(f"{report.clip} at {width}x{height}, {env['device']}, {env['dtype']}, "
                    f"{env['torch_threads']} threads", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
