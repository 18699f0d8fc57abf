#!/usr/bin/env bash
# The prepared one-command GPU training run of mavos-lite (configs/mavos-lite-gpu-10min.toml; how to call the
# `device` tool, and how to check the weights it brings back, is in that preset's header).
#
# Run ON the device machine, from the repository root:   bash scripts/gpu_train.sh
#
# It installs nothing: the device image has PyTorch, OpenCV, Pillow, NumPy and tqdm. PyAV (which longvos.io imports
# but training never uses: it reads JPEG folders) is not in the image's package list; where `import av` fails, a
# stand-in module that refuses any use is put on PYTHONPATH. The training data is the pack of scripts/pack_training_set.py (default .device/train-pack, carried).
#
#   1. calibration: CALIBRATE_STEPS steps from the shipped weights (src/longvos/weights/mavos-lite.pt), bf16
#      autocast, at the first batch size of BATCHES that fits (a CUDA out-of-memory error moves on to the next);
#   2. the measured s/step sizes the run: optim.steps = what fits until TRAIN_SECONDS after the start, then the run
#      resumes from the calibration checkpoint with that schedule (checkpoints at half-way and at the end). The
#      wall clock is enforced as well: at TRAIN_SECONDS the trainer gets SIGTERM, finishes its step and checkpoints;
#   3. the EMA weights of the last and the half-way checkpoint are exported (fp16, 22.9 MiB each) and split into
#      parts under 16 MiB in $OUT (what the device tool brings back), with log.csv, train.log and summary.json
#      (sha256 of each weights file and the command that joins the parts).
#
# Knobs (environment): OUT PACK PRESET INIT RUN_DIR TRAIN_SECONDS CALIBRATE_STEPS BATCHES MAX_STEPS DEVICE PYTHON;
# FORCE_AV_STUB=1 uses the PyAV stand-in even where PyAV is installed. Arguments are extra key=value overrides for
# both phases. CPU dry run of the plumbing (tiny sizes; ~2 minutes), after `pack_training_set.py --limit 2 --out
# /tmp/pack-small`:
#   OMP_NUM_THREADS=1 OUT=/tmp/gt-out PACK=/tmp/pack-small RUN_DIR=/tmp/gt-run DEVICE=cpu BATCHES=1 CALIBRATE_STEPS=1 \
#     MAX_STEPS=2 TRAIN_SECONDS=900 FORCE_AV_STUB=1 bash scripts/gpu_train.sh data.size=65 data.clip_len=3 \
#     data.min_object_pixels=20 run.threads=1
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
T0=$(date +%s)

OUT=${OUT:-$REPO/runs/gpu-train-out}
PACK=${PACK:-.device/train-pack}
PRESET=${PRESET:-configs/mavos-lite-gpu-10min.toml}
INIT=${INIT:-src/longvos/weights/mavos-lite.pt}
RUN_DIR=${RUN_DIR:-/tmp/mavos-lite-gpu-10min}
TRAIN_SECONDS=${TRAIN_SECONDS:-470}      # from this script's start to the end of training; export takes ~30 s more
CALIBRATE_STEPS=${CALIBRATE_STEPS:-30}
BATCHES=${BATCHES:-16 8 4}
MAX_STEPS=${MAX_STEPS:-0}                # 0: as many steps as the time allows
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
KILL_AFTER=45                            # a trainer that ignores SIGTERM this long is killed (losing its last step)
PART_BYTES=$((15 * 1024 * 1024))         # the device tool returns files of at most 16 MiB
mkdir -p "$OUT"
LOG=$OUT/train.log
: >"$LOG"

say() { echo "gpu_train: $*" | tee -a "$LOG"; }
fail() { say "FAILED after $(( $(date +%s) - T0 )) s: $*"; exit 1; }
left() { echo $(( T0 + TRAIN_SECONDS - $(date +%s) )); }

# --- environment -----------------------------------------------------------------------------------------------
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
if [ "${FORCE_AV_STUB:-0}" = 1 ] || ! "$PYTHON" -c "import av" 2>/dev/null; then
    STUB=/tmp/longvos-av-stub
    mkdir -p "$STUB/av"
    cat >"$STUB/av/__init__.py" <<'EOF'
"""Stand-in for PyAV on a machine without it: training reads JPEG folders and never decodes video."""


def __getattr__(name):
    raise ImportError(f"PyAV is not installed here (av.{name} was used); only video decoding needs it")
EOF
    export PYTHONPATH="$PYTHONPATH:$STUB"
    say "PyAV missing: using the stand-in $STUB/av (training never decodes video)"
fi
"$PYTHON" - "$DEVICE" <<'EOF' 2>&1 | tee -a "$LOG"
import sys, cv2, numpy, PIL, tqdm, torch
import longvos.train.loop  # the whole training import chain, PyAV included
device = sys.argv[1]
line = f"python {sys.version.split()[0]}, torch {torch.__version__}, opencv {cv2.__version__}, numpy {numpy.__version__}"
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit(f"{line}: CUDA is not available")
    p = torch.cuda.get_device_properties(0)
    line += f", {p.name} {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}"
print("gpu_train: environment:", line)
EOF
[ "${PIPESTATUS[0]}" = 0 ] || fail "environment check (above)"
[ -f "$PACK/PACK.json" ] || fail "no training pack at $PACK (make it with scripts/pack_training_set.py and carry it)"
[ -f "$INIT" ] || fail "no initial weights at $INIT"
"$PYTHON" - "$PACK" "$PRESET" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from longvos.train.config import load_config
pack, preset = json.load(open(f"{sys.argv[1]}/PACK.json")), load_config(sys.argv[2])
if pack.get("incomplete"):
    sys.exit(f"the pack at {sys.argv[1]} is incomplete (its packing stopped): make it again")
missing = sorted(set(preset.data.holdout) - set(pack["holdout_excluded"]))
if missing:  # training runs with data.holdout=[], so the pack must be the one that left them out
    sys.exit(f"the pack at {sys.argv[1]} holds validation sequences of {sys.argv[2]}: {', '.join(missing)}")
videos = sum(v["frames"] for v in pack["video_sets"].values())
photos = sum(s["photos"] for s in pack["static_sets"].values())
print(f"gpu_train: pack {sys.argv[1]}: {videos} video frames, {photos} photos, {pack['bytes'] / 2**20:.1f} MiB; "
      f"held out (not packed): {len(pack['holdout_excluded'])} sequences")
EOF
[ "${PIPESTATUS[0]}" = 0 ] || fail "pack check (above)"
GUESS_STEPS=$("$PYTHON" -c "from longvos.train.config import load_config as l; print(l('$PRESET').optim.steps)") \
    || fail "cannot read $PRESET"

# The trainer, with cuDNN autotuning (the shapes never change) and TF32 for what autocast leaves in fp32; prints the
# peak GPU memory at exit. `python -c` keeps the trainer itself the process that `timeout` signals.
LAUNCH='
import atexit, sys, torch
torch.backends.cudnn.benchmark = True
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
@atexit.register
def _peak():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
from longvos.cli.main import main
sys.argv[0] = "longvos"
sys.exit(main())
'
COMMON=(train "$PRESET" "data.root=$PACK" "data.holdout=[]" "model.init=$INIT" "run.out_dir=$RUN_DIR"
        "run.device=$DEVICE" "run.progress=false" "run.tensorboard=false" "run.keep_checkpoints=10")

# workers BATCH ARGS...: the preset's data.workers, fewer where the cores or /dev/shm could not hold them (each
# worker builds whole batches, and keeps prefetch_factor=2 of them in shared memory: 16 clips at 465 px are 0.55 GB).
workers() {
    "$PYTHON" - "$PRESET" "$@" <<'EOF'
import os, sys
from longvos.train.config import load_config
batch, overrides = int(sys.argv[2]), [a for a in sys.argv[3:] if "=" in a and not a.startswith("-")]
data = load_config(sys.argv[1], overrides).data
batch_bytes = batch * data.clip_len * data.size ** 2 * (3 * 4 + 8)  # float32 RGB + int64 labels
try:
    stat = os.statvfs("/dev/shm")
    shm = stat.f_bavail * stat.f_frsize
except OSError:
    shm = 0
by_shm = int(0.6 * shm // (2 * batch_bytes)) if shm else data.workers
print(max(1 if data.workers else 0, min(data.workers, by_shm, max(1, (os.cpu_count() or 4) - 3))),
      f"{shm / 2**30:.0f}", f"{batch_bytes / 2**30:.2f}")
EOF
}

# train SECONDS PHASE_LOG ARGS...: the trainer under a wall-clock limit (SIGTERM = checkpoint and stop). Returns
# the trainer's status, 124 when the clock stopped it.
train() {
    local seconds=$1 phase_log=$2
    shift 2
    timeout --foreground --signal=TERM --kill-after=$KILL_AFTER "$seconds" \
        "$PYTHON" -c "$LAUNCH" "${COMMON[@]}" "$@" 2>&1 | tee "$phase_log" | tee -a "$LOG"
    return "${PIPESTATUS[0]}"
}

# --- 1. calibration --------------------------------------------------------------------------------------------
rm -rf "$RUN_DIR"
BATCH=""
if [ "$CALIBRATE_STEPS" -gt 0 ]; then
    for candidate in $BATCHES; do
        read -r WORKERS SHM_GIB BATCH_GIB <<<"$(workers "$candidate" "$@")"
        [ -n "${BATCH_GIB:-}" ] || fail "cannot read $PRESET"
        say "calibration: $CALIBRATE_STEPS steps at batch $candidate, $WORKERS data workers ($BATCH_GIB GiB a batch," \
            "$SHM_GIB GiB free in /dev/shm, $(nproc) cores; $(left) s of training time left)"
        start=$(date +%s)
        train "$(( $(left) < 240 ? $(left) : 240 ))" "$RUN_DIR.phase1.log" "optim.steps=$GUESS_STEPS" \
            "optim.batch_size=$candidate" "data.workers=$WORKERS" "run.stop_after_steps=$CALIBRATE_STEPS" \
            "run.checkpoint_every=1000000" \
            "run.log_every=$(( CALIBRATE_STEPS < 10 ? CALIBRATE_STEPS : 10 ))" "$@"
        status=$?
        PHASE1_SECONDS=$(( $(date +%s) - start ))
        if [ $status = 0 ]; then BATCH=$candidate; break; fi
        if grep -qi "out of memory" "$RUN_DIR.phase1.log"; then
            say "batch $candidate does not fit in GPU memory; trying a smaller one"
            rm -rf "$RUN_DIR"
            continue
        fi
        fail "calibration run exited with status $status (log above)"
    done
    [ -n "$BATCH" ] || fail "no batch size of '$BATCHES' fits in GPU memory"
    # Steps that fit the time left: the last logged window's s/step, and this process's start-up cost again.
    read -r STEPS SEC_PER_STEP <<<"$("$PYTHON" - "$RUN_DIR/log.csv" "$CALIBRATE_STEPS" "$PHASE1_SECONDS" "$(left)" \
                                     "$MAX_STEPS" <<'EOF'
import csv, math, sys
rows = list(csv.DictReader(open(sys.argv[1])))
calibrated, phase1_s, left_s, max_steps = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
sps = float(rows[-1]["sec_per_step"])
startup = max(0.0, phase1_s - calibrated * sps)   # imports, model, workers, first (autotuned) steps, checkpoint
steps = calibrated + max(0, math.floor((left_s - startup - 5) / sps))
if max_steps:
    steps = min(steps, max_steps)
print(steps, f"{sps:.3f}")
EOF
)"
    [ -n "${SEC_PER_STEP:-}" ] || fail "cannot read the calibration's s/step from $RUN_DIR/log.csv"
    say "calibrated: $SEC_PER_STEP s/step at batch $BATCH; start-up $PHASE1_SECONDS s for $CALIBRATE_STEPS steps;" \
        "the run gets optim.steps=$STEPS"
else
    BATCH=${BATCHES%% *}
    read -r WORKERS SHM_GIB BATCH_GIB <<<"$(workers "$BATCH" "$@")"
    [ -n "${BATCH_GIB:-}" ] || fail "cannot read $PRESET"
    STEPS=$GUESS_STEPS
    [ "$MAX_STEPS" -gt 0 ] && STEPS=$MAX_STEPS
    SEC_PER_STEP=""
fi

# --- 2. the run ------------------------------------------------------------------------------------------------
MID=$(( (STEPS + 1) / 2 ))
if [ "$STEPS" -gt "$CALIBRATE_STEPS" ] && [ "$(left)" -gt 5 ]; then
    say "training to step $STEPS at batch $BATCH, $WORKERS data workers (checkpoints at $MID and $STEPS;" \
        "clock stop in $(left) s)"
    resume=(); [ "$CALIBRATE_STEPS" -gt 0 ] && resume=(--resume)
    train "$(left)" "$RUN_DIR.phase2.log" "${resume[@]}" "optim.steps=$STEPS" "optim.batch_size=$BATCH" \
        "data.workers=$WORKERS" "run.checkpoint_every=$MID" "$@"
    status=$?
    if [ $status = 124 ]; then
        say "stopped by the wall clock (TRAIN_SECONDS=$TRAIN_SECONDS) before step $STEPS"
    elif [ $status != 0 ]; then
        say "the run exited with status $status; exporting what it saved"
    fi
else
    say "no time left after calibration: exporting the calibration checkpoint"
fi

# --- 3. export -------------------------------------------------------------------------------------------------
cp "$RUN_DIR/log.csv" "$OUT/log.csv" 2>/dev/null
PEAK=$(grep -h "^peak GPU memory" "$RUN_DIR".phase*.log 2>/dev/null | tail -1 | sed 's/^peak GPU memory //')
"$PYTHON" - "$RUN_DIR" "$OUT" "$PART_BYTES" "$CALIBRATE_STEPS" "$BATCH" "$SEC_PER_STEP" "$T0" "$PRESET" \
    "${PEAK:-n/a}" <<'EOF' 2>&1 | tee -a "$LOG"
import csv, hashlib, json, sys, time
from pathlib import Path
from longvos.checkpoints import export_weights, list_checkpoints

run_dir, out, part_bytes, calibrated = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
batch, sps, t0, preset, peak = sys.argv[5], sys.argv[6], float(sys.argv[7]), sys.argv[8], sys.argv[9]
checkpoints = {int(p.stem.split("_")[1]): p for p in list_checkpoints(run_dir)}
if not checkpoints:
    sys.exit("gpu_train: FAILED: no checkpoint was written")
last = max(checkpoints)
# The last checkpoint and the newest one before it that is not the calibration's (the half-way one).
chosen = [last] + sorted((s for s in checkpoints if calibrated < s < last), reverse=True)[:1]
files, weights = [], {}
for step in chosen:
    name = f"mavos-lite-gpu10-ema-step{step:06d}.pt"
    written = export_weights(checkpoints[step], run_dir / name)
    data = written.read_bytes()
    parts = []
    for index, offset in enumerate(range(0, len(data), part_bytes)):
        part = out / f"{name}.part{index}"
        part.write_bytes(data[offset:offset + part_bytes])
        parts.append(part.name)
    weights[name] = {"step": step, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "parts": parts,
                     "join": f"cat {' '.join(parts)} > {name}"}
    files += parts
rows = list(csv.DictReader(open(run_dir / "log.csv"))) if (run_dir / "log.csv").is_file() else []
final = rows[-1] if rows else {}
summary = {"preset": preset, "batch_size": batch, "calibrated_sec_per_step": sps, "last_step": last,
           "peak_gpu_memory": peak,
           "wall_s": round(time.time() - t0), "final_log_row": final, "weights": weights,
           "config": (run_dir / "config.txt").read_text() if (run_dir / "config.txt").is_file() else ""}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
for name, info in weights.items():
    print(f"gpu_train: exported {name} ({info['bytes'] / 2**20:.1f} MiB, sha256 {info['sha256'][:16]}...) as "
          f"{', '.join(info['parts'])}")
keys = [k for k in ("loss", "iou", "lr", "sec_per_step") if k in final]
print(f"gpu_train: OK: {last} steps at batch {batch} in {summary['wall_s']} s, peak GPU memory {peak}; last log row "
      + " ".join(f"{k}={final[k]}" for k in keys) + f"; {len(weights)} EMA weights (steps "
      + ", ".join(str(w["step"]) for w in weights.values()) + f") in {out} as parts: join with cat, check sha256 "
      "in summary.json")
EOF
[ "${PIPESTATUS[0]}" = 0 ] || fail "export (above)"
