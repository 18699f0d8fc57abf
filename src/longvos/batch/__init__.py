"""Batch processing: many videos from a manifest, each isolated and resumable, on local processes or Ray.

    from longvos.batch import BatchOptions, run_batch
    summary = run_batch("videos.csv", "out/", BatchOptions(model="mavos-mnv2"), resume=True)
    print(summary.table())

``manifest.py`` reads the list of videos, ``items.py`` holds what travels between the runner and its workers,
``runner.py`` is ``run_batch`` (resume check, display, summary) and ``workers.py`` the workers and their two
backends, local processes and Ray actors.
"""
from __future__ import annotations

from longvos.batch.items import BatchOptions, VideoResult, WorkItem
from longvos.batch.manifest import Manifest, ManifestError, ManifestWarning, read_manifest
from longvos.batch.runner import BatchSummary, run_batch

__all__ = ["BatchOptions", "BatchSummary", "Manifest", "ManifestError", "ManifestWarning", "VideoResult",
           "WorkItem", "read_manifest", "run_batch"]
