"""Score weights on the validation split of a training preset: the held-out training sequences (``data.holdout``).

The split chooses weights, schedules and variants; ``dev/`` is kept for the last check. For each video set that
holds held-out sequences this runs ``longvos eval <set> --sequences ... --model`` and prints J&F per set and over
all held-out objects (each object weighs the same, as in DAVIS's global J&F).

    python scripts/validate.py configs/mavos-lite-v2.toml WEIGHTS.pt [--out runs/val] [--threads 1]
    python scripts/validate.py configs/mavos-lite-v2.toml runs/v2/checkpoints/step_0001000.pt   # its EMA weights
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from longvos.checkpoints import CheckpointError, export_weights, is_training_checkpoint, read_checkpoint
from longvos.train.config import ConfigError, load_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="training preset whose data.holdout is the validation split")
    parser.add_argument("weights", type=Path, help="longvos weights, or a training checkpoint (its EMA is scored)")
    parser.add_argument("--out", type=Path, default=None, help="where eval reports go (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory", default=None, help="memory design (default: the model's)")
    parser.add_argument("--mem-gap", type=int, default=None, help="frames between memory updates (default: the model's)")
    parser.add_argument("--max-size", default="auto")
    parser.add_argument("--max-part-distance", default="auto",
                        help="object sizes beyond which a far piece of a mask is dropped; none: off; auto: the model's")
    args = parser.parse_args()

    try:
        config = load_config(args.config)
    except ConfigError as err:
        sys.exit(f"validate: {err}")
    by_set: dict[str, list[str]] = defaultdict(list)
    for item in config.data.holdout:
        video_set, _, sequence = item.partition("/")
        by_set[video_set].append(sequence)
    if not by_set:
        sys.exit(f"{args.config}: data.holdout is empty, so there is no validation split")

    with tempfile.TemporaryDirectory() as scratch:
        weights = args.weights
        try:
            if is_training_checkpoint(read_checkpoint(weights)):
                weights = export_weights(weights, Path(scratch) / "ema.pt")
        except CheckpointError as err:
            sys.exit(f"validate: {err}")
        out_root = args.out or Path(scratch) / "eval"
        all_scores: list[tuple[float, float]] = []
        for video_set, sequences in sorted(by_set.items()):
            out = out_root / video_set
            command = [sys.executable, "-m", "longvos", "eval", str(Path(config.data.root) / video_set),
                       "--sequences", ",".join(sequences), "--model", config.model.name,
                       "--checkpoint", str(weights), "--out", str(out), "--threads", str(args.threads),
                       "--max-size", args.max_size, "--max-part-distance", args.max_part_distance,
                       "--brief", "--quiet", "-j", "1"]
            if args.memory:
                command += ["--memory", args.memory]
            if args.mem_gap:
                command += ["--mem-gap", str(args.mem_gap)]
            if subprocess.run(command, stdout=subprocess.DEVNULL).returncode != 0:  # its one line is on stderr
                sys.exit(f"validate: scoring {video_set} failed (the line above says why)")
            scores = object_scores(out)
            all_scores += scores
            print(f"{video_set}: J&F {mean_jf(scores):.3f} over {len(scores)} objects ({', '.join(sequences)})")
        print(f"validation J&F {mean_jf(all_scores):.4f} over {len(all_scores)} objects")
    return 0


def object_scores(out: Path) -> list[tuple[float, float]]:
    """(J mean, F mean) of each object from the per-sequence CSV that ``longvos eval`` writes."""
    table = next(out.glob("*per-sequence*.csv"), None)
    if table is None:
        sys.exit(f"no per-sequence CSV in {out}")
    with table.open() as handle:
        return [(float(row["J-Mean"]), float(row["F-Mean"])) for row in csv.DictReader(handle)]


def mean_jf(scores: list[tuple[float, float]]) -> float:
    return sum(j + f for j, f in scores) / (2 * len(scores))


if __name__ == "__main__":
    raise SystemExit(main())
