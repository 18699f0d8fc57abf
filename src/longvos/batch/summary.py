"""The end of a batch: per-video results as a table for people and a CSV for machines."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from longvos.batch.items import VideoResult
from longvos.io.writer import atomic_write

SUMMARY_FILE = "batch-summary.csv"
CSV_COLUMNS = ("name", "status", "frames", "seconds", "fps", "worker", "reason")


@dataclass
class BatchSummary:
    results: list[VideoResult]  # in manifest order
    seconds: float  # wall time of the whole batch
    out_dir: Path

    def count(self, status: str) -> int:
        return sum(result.status == status for result in self.results)

    @property
    def frames(self) -> int:
        return sum(result.frames for result in self.results)

    @property
    def fps(self) -> float:
        """Frames segmented per second of wall time, over all workers together."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def csv_path(self) -> Path:
        return self.out_dir / SUMMARY_FILE

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0

    def table(self, reason_width: int = 100) -> str:
        """A plain-text table: one row per video, then the totals."""
        rows = [("video", "status", "frames", "seconds", "fps", "reason")]
        for r in self.results:
            reason = r.reason if len(r.reason) <= reason_width else r.reason[: reason_width - 3] + "..."
            rows.append((r.name, r.status, str(r.frames), f"{r.seconds:.1f}", f"{r.fps:.2f}", reason))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join([cell.ljust(width) if i < 2 else cell.rjust(width)
                            for i, (cell, width) in enumerate(zip(row, widths))] + [row[-1]]).rstrip()
                 for row in rows]
        lines.insert(1, "-" * max(len(line) for line in lines))
        lines.append(f"{self.count('done')} done, {self.count('skipped')} skipped, {self.count('failed')} failed; "
                     f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.2f} fps overall)")
        return "\n".join(lines)

    def write_csv(self, path: Path | None = None) -> Path:
        """Write the per-video results (full reasons) to ``out_dir/batch-summary.csv``, atomically."""
        path = path or self.csv_path
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        for r in self.results:
            writer.writerow((r.name, r.status, r.frames, f"{r.seconds:.3f}", f"{r.fps:.3f}", r.worker, r.reason))
        atomic_write(path, lambda temporary: temporary.write_text(buffer.getvalue()))
        return path

    def __str__(self) -> str:
        return self.table()
