"""Batch processing: many videos from a manifest, each isolated and resumable, on local processes or Ray.

    from longvos.batch import BatchOptions, run_batch
    summary = run_batch("videos.csv", "out/", BatchOptions(model="mavos-mnv2"), resume=True)
    print(summary.table())
"""
from __future__ import annotations

from longvos.batch.items import BatchOptions, VideoResult, WorkItem
from longvos.batch.manifest import ManifestError, read_manifest
from longvos.batch.runner import run_batch
from longvos.batch.summary import BatchSummary

__all__ = ["BatchOptions", "BatchSummary", "ManifestError", "VideoResult", "WorkItem", "read_manifest", "run_batch"]
