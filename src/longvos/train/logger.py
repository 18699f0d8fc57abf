"""Training logs: a CSV file (always), TensorBoard events (when installed) and a progress bar."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

from tqdm import tqdm


class TrainingLogger:
    """Appends one row per logged step to ``log.csv`` (header written once, so resumed runs extend the same file)."""

    def __init__(self, run_dir: Path, start_step: int, total_steps: int, tensorboard: bool, progress: bool):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "log.csv"
        self._columns: list[str] | None = None
        if self.csv_path.is_file() and self.csv_path.stat().st_size > 0:
            with self.csv_path.open() as handle:
                self._columns = next(csv.reader(handle), None)
        self.writer = _tensorboard_writer(self.run_dir / "tensorboard") if tensorboard else None
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True,
                        disable=not progress, smoothing=0.1)

    def log(self, step: int, values: dict[str, Any]) -> None:
        row = {"step": step, **values}
        if self._columns is None:
            self._columns = list(row)
            with self.csv_path.open("w", newline="") as handle:
                csv.writer(handle).writerow(self._columns)
        with self.csv_path.open("a", newline="") as handle:
            csv.writer(handle).writerow([_format(row.get(c, "")) for c in self._columns])
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{key}", value, step)
            self.writer.flush()
        self.bar.set_postfix({k: _format(values[k]) for k in ("loss", "iou", "lr") if k in values}, refresh=False)

    def advance(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _format(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is the optional extra longvos[train]
        warnings.warn("tensorboard is not installed (pip install 'longvos[train]'); logging to log.csv only",
                      stacklevel=3)
        return None
    return SummaryWriter(log_dir=str(folder))
