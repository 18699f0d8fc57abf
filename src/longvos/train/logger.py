"""Training logs: a CSV file (always), TensorBoard events (when installed) and a progress bar."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

from tqdm import tqdm

from longvos.io.writer import atomic_write


class TrainingLogger:
    """Appends one row per logged step to ``log.csv`` (header written once, so resumed runs extend the same file).

    A run resumed at ``start_step`` first drops the rows of later steps (atomically): a run killed between two
    checkpoints logged steps that the resumed run computes and logs again. TensorBoard event files cannot be cut
    back (they are append-only); the writer is opened with ``purge_step``, so that TensorBoard hides the earlier
    events of those steps when it reads the folder.
    """

    def __init__(self, run_dir: Path, start_step: int, total_steps: int, tensorboard: bool, progress: bool):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "log.csv"
        self._columns: list[str] | None = None
        if self.csv_path.is_file() and self.csv_path.stat().st_size > 0:
            self._columns = _cut_log(self.csv_path, start_step)
        self.writer = _tensorboard_writer(self.run_dir / "tensorboard", start_step) if tensorboard else None
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


def _cut_log(path: Path, last_step: int) -> list[str] | None:
    """Drop the rows of ``path`` logged after ``last_step`` (rewriting the file atomically if any); its header."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return None
    header, body = rows[0], rows[1:]
    if "step" not in header:
        return header
    column = header.index("step")
    kept = [row for row in body if not _after(row, column, last_step)]
    if len(kept) < len(body):
        def write(temporary: Path) -> None:
            with temporary.open("w", newline="") as handle:
                csv.writer(handle).writerows([header, *kept])

        atomic_write(path, write)
    return header


def _after(row: list[str], column: int, step: int) -> bool:
    try:
        return int(row[column]) > step
    except (IndexError, ValueError):  # an empty or foreign line: not ours to judge
        return False


def _format(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def _tensorboard_writer(folder: Path, start_step: int = 0):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is the optional extra longvos[train]
        warnings.warn("tensorboard is not installed (pip install 'longvos[train]'); logging to log.csv only",
                      stacklevel=3)
        return None
    # purge_step: events of steps >= start_step + 1 already in the folder (logged after the checkpoint the run
    # resumes from) are hidden when TensorBoard reads it.
    return SummaryWriter(log_dir=str(folder), purge_step=start_step + 1)
