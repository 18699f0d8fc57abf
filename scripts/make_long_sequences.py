"""Make long versions of DAVIS-layout sequences: each played forwards, backwards, forwards, ... to N frames.

A 50-frame sequence becomes a >= 500-frame one whose every frame still has its real annotation, which is how the
model card measures segmentation on long videos without long annotated footage. Frames are symlinked (no copies)
and renamed 00000.jpg, 00001.jpg, ... so the result is itself a DAVIS-layout set that `longvos eval` reads.

    python scripts/make_long_sequences.py ../shared/data/dev/davis2016-dev /tmp/long-dev --frames 500
    longvos eval /tmp/long-dev --model mavos-lite --memory mca
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def ping_pong(length: int, frames: int) -> list[int]:
    """Indices 0, 1, ..., L-1, L-2, ..., 0, 1, ... (end frames not repeated) until ``frames`` of them."""
    if length == 1:
        return [0] * frames
    period = 2 * (length - 1)
    return [i % period if i % period < length else period - i % period for i in range(frames)]


def make_long(source: Path, destination: Path, frames: int) -> list[str]:
    made = []
    for seq_dir in sorted(p for p in (source / "Annotations").iterdir() if p.is_dir()):
        labels = sorted(seq_dir.glob("*.png"))
        images = [source / "JPEGImages" / seq_dir.name / f"{p.stem}.jpg" for p in labels]
        missing = [str(p) for p in images if not p.is_file()]
        if missing:
            raise SystemExit(f"{seq_dir.name}: frames without a JPEG: {', '.join(missing[:3])}")
        count = max(frames, len(labels))
        for kind, originals, suffix in (("JPEGImages", images, ".jpg"), ("Annotations", labels, ".png")):
            out_dir = destination / kind / seq_dir.name
            out_dir.mkdir(parents=True, exist_ok=True)
            for new_index, old_index in enumerate(ping_pong(len(originals), count)):
                link = out_dir / f"{new_index:05d}{suffix}"
                if link.is_symlink() or link.exists():
                    link.unlink()
                os.symlink(originals[old_index].resolve(), link)
        made.append(f"{seq_dir.name}: {len(labels)} -> {count} frames")
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="DAVIS-layout set (JPEGImages/, Annotations/)")
    parser.add_argument("destination", type=Path, help="where the long set is made")
    parser.add_argument("--frames", type=int, default=500, help="frames per long sequence (default 500)")
    args = parser.parse_args()
    for line in make_long(args.source, args.destination, args.frames):
        print(line)


if __name__ == "__main__":
    main()
