"""Soak benchmark (not a test): stream a long video through ``segment_video`` and check that memory stays flat.

A long mp4 is made from a real DAVIS sequence played forwards and backwards (854x480, every frame distinct in
time), then segmented from the real first-frame mask with ``mavos-mnv2`` (random weights: memory, not accuracy,
is measured). Resident memory (VmRSS) is sampled after chosen frames; the check is that RSS after the last frame is
within ``--tolerance`` of RSS after frame 300.

    python scripts/soak_segment.py --frames 3000 --max-size 480           # the full protocol (hours on a CPU)
    python scripts/soak_segment.py --frames 3000 --max-size 96 --threads 1  # what fits a busy 2-core machine
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "dev" / "davis2016-dev"


def make_video(sequence: str, frames: int, path: Path) -> None:
    """Ping-pong the sequence's JPEGs into an H.264 mp4 of ``frames`` frames (runs in a child process so that
    its memory does not count against the soak)."""
    import av
    import numpy as np
    from PIL import Image

    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((DEV / "JPEGImages" / sequence).glob("*.jpg"))]
    cycle = images + images[-2:0:-1]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for index in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(cycle[index % len(cycle)], format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--max-size", type=int, default=480, help="short side the network sees")
    parser.add_argument("--model", default="mavos-mnv2")
    parser.add_argument("--sequence", default="blackswan")
    parser.add_argument("--reference-frame", type=int, default=300, help="RSS baseline frame (1-based count)")
    parser.add_argument("--sample-every", type=int, default=100)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the video and masks (default: temp)")
    parser.add_argument("--report", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--make-video", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_video:
        make_video(args.sequence, args.frames, args.make_video)
        return 0

    import torch

    from longvos.engine import segment_video
    from longvos.engine.resources import current_rss_bytes, format_bytes

    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="longvos-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    video = work / f"{args.sequence}-{args.frames}.mp4"
    if not video.exists():
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--make-video", str(video), "--frames", str(args.frames),
                        "--sequence", args.sequence], check=True)
        print(f"made {video} in {time.perf_counter() - started:.0f} s", flush=True)
    out_dir = work / "masks"
    shutil.rmtree(out_dir, ignore_errors=True)

    samples: list[dict[str, float]] = []
    sample_at = {args.reference_frame, args.frames} | set(range(args.sample_every, args.frames + 1, args.sample_every))

    def on_frame(frame, result) -> None:
        count = frame.index + 1
        if count in sample_at:
            samples.append({"frame": count, "rss_bytes": current_rss_bytes(), "time": time.perf_counter()})
            print(f"frame {count}: RSS {format_bytes(samples[-1]['rss_bytes'])}", flush=True)

    summary = segment_video(video, DEV / "Annotations" / args.sequence / "00000.png", out_dir, model=args.model,
                            device="cpu", max_size=args.max_size, on_frame=on_frame, progress=False)
    by_frame = {s["frame"]: s["rss_bytes"] for s in samples}
    reference, final = by_frame[args.reference_frame], by_frame[args.frames]
    growth = final / reference - 1
    report = {
        "frames": args.frames, "video": "854x480 H.264, " + args.sequence + " ping-pong", "model": args.model,
        "max_size": args.max_size, "threads": torch.get_num_threads(), "fps": summary.fps,
        "model_fps": summary.model_fps, "state_bytes": summary.state_bytes, "peak_rss_bytes": summary.peak_rss_bytes,
        f"rss_after_{args.reference_frame}": reference, f"rss_after_{args.frames}": final, "growth": growth,
        "within_tolerance": abs(growth) <= args.tolerance, "samples": [(s["frame"], s["rss_bytes"]) for s in samples],
    }
    print(f"{summary}\nRSS after frame {args.reference_frame}: {format_bytes(reference)}; after frame {args.frames}: "
          f"{format_bytes(final)}; growth {growth:+.2%} (tolerance {args.tolerance:.0%}): "
          f"{'PASS' if report['within_tolerance'] else 'FAIL'}")
    if args.report:
        args.report.write_text(json.dumps(report, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    return 0 if report["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
