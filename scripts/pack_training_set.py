"""Pack a compact copy of the training data for a lent GPU machine (the `device` tool carries at most 64 MiB).

The copy has the layout the training readers expect (``longvos.train.data_video`` / ``data_static``), so
``data.root=<packed dir>`` works with any preset unchanged:

    <out>/<video set>/JPEGImages/<seq>/<frame>.jpg  +  <out>/<video set>/Annotations/<seq>/<frame>.png
    <out>/static/<set>/images/<name>.jpg            +  <out>/static/<set>/masks/<name>.png

What is packed, and how it is made smaller (180 MiB of ../shared/data/train down to the budget):
  * only the sets the preset trains on (``data.video_sets``, ``data.static_sets``); never ``dev/`` (refused), and
    never the validation holdout (the preset's ``data.holdout``): train on the pack with ``data.holdout=[]``;
  * video sets: only annotated frames (the readers use nothing else), every ``--frame-step``-th of them in densely
    annotated sequences (a frame gap of 1 then spans ``--frame-step`` source frames, as YouTube-VOS's 5-frame
    annotation spacing does in the official recipe), short side at most ``--video-short-side``;
  * still photos: long side at most ``--photo-max-side``; then as many photos as fit the budget, drawn in a seeded
    order that takes the same fraction of every set;
  * JPEGs are re-encoded at ``--quality`` only where they were resized or the re-encode is smaller (the sources are
    q80-q85 already: re-encoding them at 85 would grow them); masks are resized nearest-neighbour, palette kept.

Examples (from the repository root; the output folder is git-ignored and travels with ``carry``)::

    python scripts/pack_training_set.py                                  # -> .device/train-pack, 37 MiB budget
    python scripts/pack_training_set.py --limit 2 --out /tmp/pack-small   # a dry run: 2 sequences/photos per set

It prints the size of the pack and of everything the device call would carry (repository + pack), and fails if
the pack is over ``--budget-mib`` or the whole carry over 64 MiB.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = Path(os.environ.get("LONGVOS_SHARED", REPO.parent / "shared")) / "data" / "train"
DEFAULT_OUT = REPO / ".device" / "train-pack"          # /.device/ is git-ignored
DEFAULT_PRESET = REPO / "configs" / "mavos-lite-gpu-10min.toml"
MIB = 2**20
#: What one device call may carry in all (tracked + untracked-not-ignored files + carried paths).
DEVICE_TREE_LIMIT_MIB = 64.0
#: Sequences with fewer annotated frames keep all of them (sparse annotations: xmem2-examples/caps has 5).
MIN_FRAMES_FOR_STEP = 20
MANIFEST = "PACK.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__[
                                         __doc__.index("Examples"):])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=f"training data (default {DEFAULT_SOURCE})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"packed copy (default {DEFAULT_OUT})")
    parser.add_argument("--config", type=Path, default=DEFAULT_PRESET,
                        help="preset whose data.video_sets, data.static_sets and data.holdout decide what is packed "
                             "(default configs/mavos-lite-gpu-10min.toml; same holdout as mavos-lite-v4)")
    parser.add_argument("--budget-mib", type=float, default=37.0,
                        help="size limit of the pack (default 37: the repository's tracked files are ~24.1 MiB, the "
                             "device call carries 64 MiB in all)")
    parser.add_argument("--video-short-side", type=int, default=320)
    parser.add_argument("--frame-step", type=int, default=4, help="keep every n-th annotated frame of dense sequences")
    parser.add_argument("--photo-max-side", type=int, default=400)
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality of re-encoded images")
    parser.add_argument("--limit", type=int, default=0,
                        help="at most this many sequences per video set and photos per static set (dry runs)")
    parser.add_argument("--seed", type=int, default=0, help="order in which photos are drawn into the budget")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "src"))
    from longvos.train.config import load_config
    from longvos.train.files import TrainingDataError, check_not_held_out

    config = load_config(args.config)
    source, out = args.source, args.out
    try:
        check_not_held_out(source)
        check_not_held_out(out)
    except TrainingDataError as err:
        sys.exit(str(err))
    if not source.is_dir():
        sys.exit(f"training data not found: {source}")
    if out.exists():
        if not args.overwrite:
            sys.exit(f"{out} exists; pass --overwrite to replace it")
        if not (out / MANIFEST).is_file() and any(out.iterdir()):
            sys.exit(f"{out} is not empty and holds no {MANIFEST}: not a pack, refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MANIFEST).write_text(json.dumps({"incomplete": True}) + "\n")  # replaced once the pack is complete
    budget = int(args.budget_mib * MIB)
    holdout = set(config.data.holdout)
    started = time.perf_counter()

    packer = Packer(out, args.quality)
    video_report = {}
    for video_set in config.data.video_sets:
        set_dir = check_not_held_out(source / video_set)
        video_report[video_set] = pack_video_set(packer, set_dir, out / video_set, video_set, holdout, args)
    unused = holdout - {f"{s}/{q}" for s, rep in video_report.items() for q in rep["held_out"]}
    if unused:
        sys.exit(f"data.holdout names sequences not found in the source: {', '.join(sorted(unused))}")
    video_bytes = packer.bytes
    if video_bytes > budget:
        sys.exit(f"the video sets alone take {video_bytes / MIB:.1f} MiB, over the {args.budget_mib} MiB budget: "
                 f"raise --frame-step or lower --video-short-side")

    static_report = pack_static_sets(packer, source, out, config.data.static_sets, budget, args)
    manifest = {
        "source": str(source.resolve()),
        "config": str(args.config),
        "holdout_excluded": sorted(holdout),
        "train_with": "data.holdout=[] (the held-out sequences are not in this pack)",
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "video_sets": video_report,
        "static_sets": static_report,
        "bytes": packer.bytes,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    total = folder_bytes(out)

    frames = sum(rep["frames"] for rep in video_report.values())
    sequences = sum(len(rep["sequences"]) for rep in video_report.values())
    photos = sum(rep["photos"] for rep in static_report.values())
    available = sum(rep["available"] for rep in static_report.values())
    print(f"video sets: {sequences} sequences, {frames} annotated frames, {video_bytes / MIB:.1f} MiB "
          f"(held out: {', '.join(sorted(holdout)) or 'none'})")
    for name, rep in static_report.items():
        print(f"  {name}: {rep['photos']} of {rep['available']} photos, {rep['bytes'] / MIB:.1f} MiB")
    print(f"still photos: {photos} of {available}, {(packer.bytes - video_bytes) / MIB:.1f} MiB")
    print(f"packed {out} in {time.perf_counter() - started:.0f} s: {total / MIB:.2f} MiB "
          f"(budget {args.budget_mib:.1f} MiB)")
    if total > budget:
        print(f"ERROR: the pack is over its budget of {args.budget_mib} MiB", file=sys.stderr)
        return 1
    repo_bytes = travelling_repo_bytes()
    if repo_bytes is not None:
        inside = out.resolve().is_relative_to(REPO)
        carried = repo_bytes + (total if inside else 0)
        print(f"a device call carries the repository ({repo_bytes / MIB:.1f} MiB, tracked + untracked files)"
              + (f" + this pack = {carried / MIB:.1f} MiB of {DEVICE_TREE_LIMIT_MIB:.0f}" if inside else
                 f"; the pack lies outside the repository and would not travel"))
        if inside and carried > DEVICE_TREE_LIMIT_MIB * MIB:
            print("ERROR: over what one device call carries; lower --budget-mib", file=sys.stderr)
            return 1
    return 0


class Packer:
    """Writes images and masks, resized to a size limit; counts the bytes written."""

    def __init__(self, out: Path, quality: int):
        self.out, self.quality, self.bytes = out, quality, 0

    def image(self, source: Path, destination: Path, size_wh: tuple[int, int]) -> int:
        """The JPEG at ``size_wh``: the source's own bytes when it needs no resize and re-encoding would not make
        it smaller."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        image = cv2.imread(str(source), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"cannot read image {source}")
        height, width = image.shape[:2]
        resized = (width, height) != tuple(size_wh)
        if resized:
            image = cv2.resize(image, size_wh, interpolation=cv2.INTER_AREA)
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise SystemExit(f"cannot encode {source}")
        if not resized and source.suffix.lower() in (".jpg", ".jpeg") and source.stat().st_size <= len(encoded):
            shutil.copyfile(source, destination)
        else:
            destination.write_bytes(encoded.tobytes())
        written = destination.stat().st_size
        self.bytes += written
        return written

    def mask(self, source: Path, destination: Path, size_wh: tuple[int, int]) -> int:
        """The index PNG at ``size_wh`` (nearest neighbour: ids and 255 = void stay exact), mode and palette kept."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(source) as mask:
            if mask.mode not in ("P", "L"):
                raise SystemExit(f"mask {source} has mode {mask.mode}; expected an index PNG (mode P or L)")
            if mask.size == tuple(size_wh):
                shutil.copyfile(source, destination)
            else:
                label = cv2.resize(np.array(mask, dtype=np.uint8), size_wh, interpolation=cv2.INTER_NEAREST)
                resized = Image.fromarray(label)  # mode L
                palette = mask.getpalette() if mask.mode == "P" else None
                if mask.mode == "P":
                    # putpalette turns the L image into mode P with the source's palette (ids unchanged).
                    resized.putpalette(palette if palette else [v for i in range(256) for v in (i, i, i)])
                resized.save(destination, optimize=True)
        written = destination.stat().st_size
        self.bytes += written
        return written

    def pair(self, image_src: Path, mask_src: Path, image_dst: Path, mask_dst: Path, limit: int, side: str) -> int:
        with Image.open(image_src) as image:
            width, height = image.size
        with Image.open(mask_src) as mask:
            if mask.size != (width, height):
                raise SystemExit(f"{mask_src} is {mask.size[0]}x{mask.size[1]} but its image is {width}x{height}")
        size_wh = fitted_size(width, height, limit, side)
        return self.image(image_src, image_dst, size_wh) + self.mask(mask_src, mask_dst, size_wh)


def fitted_size(width: int, height: int, limit: int, side: str) -> tuple[int, int]:
    """(w, h) scaled down (never up) so the short (``side='short'``) or long side is at most ``limit``."""
    reference = min(width, height) if side == "short" else max(width, height)
    if reference <= limit:
        return width, height
    scale = limit / reference
    return max(1, round(width * scale)), max(1, round(height * scale))


def pack_video_set(packer: Packer, set_dir: Path, out_dir: Path, name: str, holdout: set[str],
                   args: argparse.Namespace) -> dict:
    from longvos.train.data_video import find_sequences

    report: dict = {"sequences": {}, "held_out": [], "frames": 0, "bytes": 0}
    before = packer.bytes
    kept = 0
    for sequence in find_sequences(set_dir):
        if f"{name}/{sequence.name}" in holdout:
            report["held_out"].append(sequence.name)
            continue
        if args.limit and kept >= args.limit:
            continue
        kept += 1
        pairs = list(zip(sequence.frames, sequence.labels))
        step = args.frame_step if len(pairs) >= MIN_FRAMES_FOR_STEP else 1
        chosen = pairs[::step]
        for frame, label in chosen:
            packer.pair(frame, label, out_dir / "JPEGImages" / sequence.name / frame.name,
                        out_dir / "Annotations" / sequence.name / label.name, args.video_short_side, "short")
        report["sequences"][sequence.name] = {"annotated": len(pairs), "packed": len(chosen), "step": step}
        report["frames"] += len(chosen)
    report["bytes"] = packer.bytes - before
    return report


def pack_static_sets(packer: Packer, source: Path, out: Path, static_sets: tuple[str, ...], budget: int,
                     args: argparse.Namespace) -> dict:
    """Photos of all sets in one seeded order that walks every set at the same pace (set A's i-th photo of n comes
    at i/n), packed until the next one would not fit the budget."""
    from longvos.train.data_static import find_image_mask_pairs
    from longvos.train.files import check_not_held_out

    rng = np.random.default_rng(args.seed)
    queue = []
    report = {}
    for set_name in static_sets:
        pairs = find_image_mask_pairs(check_not_held_out(source / set_name))
        order = rng.permutation(len(pairs))
        if args.limit:
            order = order[:args.limit]
        report[set_name] = {"available": len(pairs), "photos": 0, "bytes": 0}
        queue += [((rank + 0.5) / len(order), set_name, pairs[index]) for rank, index in enumerate(order)]
    queue.sort(key=lambda item: (item[0], item[1]))
    # A photo's size is known only once it is written: stop at the first one that overflows, and delete it.
    for _, set_name, (image_src, mask_src) in queue:
        image_dst = out / set_name / "images" / f"{image_src.stem}.jpg"
        mask_dst = out / set_name / "masks" / f"{mask_src.stem}.png"
        before = packer.bytes
        written = packer.pair(image_src, mask_src, image_dst, mask_dst, args.photo_max_side, "long")
        if packer.bytes > budget - 64 * 1024:  # room for the manifest
            image_dst.unlink()
            mask_dst.unlink()
            packer.bytes = before
            break
        report[set_name]["photos"] += 1
        report[set_name]["bytes"] += written
    for set_name in static_sets:
        if report[set_name]["photos"] == 0:
            # An empty static set would stop training (no image/mask pairs): leave the folders with nothing.
            raise SystemExit(f"no photo of {set_name} fits the budget; raise --budget-mib or --frame-step")
    return report


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def travelling_repo_bytes() -> int | None:
    """Bytes of what a device call sends besides carried paths: tracked files and untracked, not ignored ones."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in filter(None, listed.split(b"\0")):
        path = REPO / os.fsdecode(name)
        if path.is_file():
            total += path.stat().st_size
    return total


if __name__ == "__main__":
    sys.exit(main())
