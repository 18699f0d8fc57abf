"""The prepared GPU check: one command, at most 8 minutes, on a lent CUDA machine (the `device` tool).

It runs, in this order, each part bounded in time, and prints one table last (JSON of everything under ``$OUT``):
  1. the golden equivalence tests of the AOT family on CUDA in fp32 (TF32 off), at the golden READMEs' tolerances;
  2. ``longvos bench`` at 480p in bf16: mavos-mnv2 / mavos-r50 / mavos-swinb (``mca``) against deaot-mnv2
     (``growing``) up to 2000 frames, and livos-r50 -- FPS, latency at each length, model state, peak device memory;
  3. a few training steps of ``mavos-lite`` with bf16 autocast (s/step, clips/s, peak memory);
  4. ``longvos segment`` end to end on a frame folder (decode, model and PNG writing overlapping): FPS of the command.

Two steps. Here, on the CPU machine, gather what must travel (nothing of ../shared is committed; ``.gpu/`` is
git-ignored and travels through ``carry``):

    python scripts/gpu_check.py prepare            # copies golden/mavos, one dev clip, a compact training set

Then one device call, from the repository root (the device image has PyTorch, tqdm, OpenCV; PyAV is not needed):

    run(command="python3 scripts/gpu_check.py run", carry=[".gpu"], timeout_s=540)

``python scripts/gpu_check.py run --device cpu --quick`` dry-runs every part on a CPU, with tiny sizes.
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

REPO = Path(__file__).resolve().parents[1]
STAGE = REPO / ".gpu"
SHARED = Path(os.environ.get("LONGVOS_SHARED", REPO.parent / "shared"))
#: Training sequences and still images copied for the training steps (a few MB; never dev/).
TRAIN_SEQUENCES = ("bear", "car-turn")
TRAIN_STILLS = 60


def prepare() -> None:
    if STAGE.exists():
        shutil.rmtree(STAGE)
    golden = STAGE / "shared" / "golden" / "mavos"
    golden.mkdir(parents=True)
    for path in (SHARED / "golden" / "mavos").iterdir():
        if "swinb" not in path.name:  # Swin-B's rule weights take minutes to build: its golden run stays on CPU CI
            shutil.copy2(path, golden / path.name)
    clip = STAGE / "clip"
    for kind in ("JPEGImages", "Annotations"):
        shutil.copytree(SHARED / "data" / "dev" / "davis2016-dev" / kind / "blackswan", clip / kind / "blackswan")
    videos = STAGE / "train" / "videos"
    source = SHARED / "data" / "train" / "davis2016-train-360p"
    for name in TRAIN_SEQUENCES:
        for kind in ("JPEGImages", "Annotations"):
            shutil.copytree(source / kind / name, videos / kind / name)
    stills = SHARED / "data" / "train" / "static" / "coco-subsets"
    for image in sorted((stills / "images").glob("*.jpg"))[:TRAIN_STILLS]:
        for kind, suffix, src in (("images", ".jpg", image), ("masks", ".png", stills / "masks" / f"{image.stem}.png")):
            (STAGE / "train" / "stills" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, STAGE / "train" / "stills" / kind / f"{image.stem}{suffix}")
    size = sum(p.stat().st_size for p in STAGE.rglob("*") if p.is_file())
    print(f"prepared {STAGE} ({size / 2**20:.1f} MiB); now run it on the device with carry=['.gpu']")


def run(device: str, quick: bool) -> int:
    out = Path(os.environ.get("OUT") or STAGE / "out")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1",
               LONGVOS_SHARED=str(STAGE / "shared"), LONGVOS_TEST_DEVICE=device)
    longvos = [sys.executable, "-m", "longvos"]
    results: dict[str, dict] = {"environment": environment(device)}
    print(json.dumps(results["environment"]), flush=True)

    def part(name: str, command: list[str], limit_s: float) -> dict:
        start = time.perf_counter()
        try:
            done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=limit_s)
            status, text = ("ok" if done.returncode == 0 else f"exit {done.returncode}"), done.stdout + done.stderr
        except subprocess.TimeoutExpired as timeout:
            status, text = f"timed out after {limit_s:.0f} s", (timeout.stdout or b"").decode(errors="replace")
        (out / f"{name}.log").write_text(text)
        print(f"--- {name}: {status} in {time.perf_counter() - start:.0f} s\n{text[-3000:]}", flush=True)
        return {"status": status, "seconds": round(time.perf_counter() - start, 1)}

    # 1. Golden equivalence on the device (the tests read LONGVOS_TEST_DEVICE; TF32 would break fp32 tolerances).
    results["golden"] = part("golden", [sys.executable, "-c",
                                        "import torch, pytest, sys; torch.backends.cuda.matmul.allow_tf32 = False; "
                                        "torch.backends.cudnn.allow_tf32 = False; "
                                        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', "
                                        "'tests/test_aot_golden.py', '-k', 'not swinb']))"], 150)

    # 2. Speed and memory against length, bf16 at 480p (random weights: speed does not depend on them).
    frames = "20,50" if quick else "100,500,2000"
    size = "120" if quick else "480"
    dtype = "fp32" if device == "cpu" else "bf16"
    designs = ("mavos-mnv2:mca,deaot-mnv2:growing" if quick else
               "mavos-mnv2:mca,mavos-r50:mca,mavos-swinb:mca,deaot-mnv2:growing,livos-r50")
    results["bench"] = part("bench", longvos + [
        "bench", "--model", designs, "--frames", frames, "--size", size, "--device", device, "--dtype", dtype,
        "--clip", str(STAGE / "clip"), "--time-budget", "10" if quick else "55", "--json", str(out / "bench.json"),
        "--quiet"], 90 if quick else 330)

    # 3. Training steps with bf16 autocast, from the bundled weights.
    steps = 4 if quick else 30
    results["train"] = part("train", longvos + [
        "train", str(REPO / "configs" / "mavos-lite-gpu.toml"), f"run.out_dir={STAGE / 'train-run'}",
        f"data.root={STAGE / 'train'}", 'data.video_sets=["videos"]', 'data.static_sets=["stills"]',
        "data.holdout=[]", f"data.size={65 if quick else 465}", "data.workers=2",
        f"model.init={REPO / 'src' / 'longvos' / 'weights' / 'mavos-lite.pt'}", "model.pretrained_encoder=false",
        f"optim.steps={steps}", f"run.log_every={max(1, steps // 3)}", f"run.checkpoint_every={steps}",
        f"run.device={device}", "run.progress=false", "run.tensorboard=false"], 60 if quick else 120)
    log = STAGE / "train-run" / "log.csv"
    if log.is_file():
        results["train"]["log"] = log.read_text().splitlines()[-1]

    # 4. The whole segment command: decode, model, write.
    masks = out / "segment-masks"
    start = time.perf_counter()
    results["segment"] = part("segment", longvos + [
        "segment", str(STAGE / "clip" / "JPEGImages" / "blackswan"), "--mask",
        str(STAGE / "clip" / "Annotations" / "blackswan" / "00000.png"), "--out", str(masks),
        "--device", device, "--dtype", dtype, "--max-size", "120" if quick else "480"], 60 if quick else 90)
    written = len(list(masks.glob("*.png")))
    results["segment"]["frames"] = written
    results["segment"]["fps_whole_command"] = round(written / (time.perf_counter() - start), 2)
    shutil.rmtree(masks, ignore_errors=True)

    (out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    print_table(results, out / "bench.json")
    return 0


def environment(device: str) -> dict:
    import torch
    info = {"torch": torch.__version__, "device": device, "python": sys.version.split()[0]}
    if device.startswith("cuda") and torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), bf16=torch.cuda.is_bf16_supported(),
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return info


def print_table(results: dict, bench_json: Path) -> None:
    print("\n== gpu_check summary ==")
    for name in ("golden", "bench", "train", "segment"):
        extra = {k: v for k, v in results[name].items() if k not in ("status", "seconds")}
        print(f"{name:8s} {results[name]['status']:22s} {results[name]['seconds']:7.1f} s  {extra or ''}")
    if bench_json.is_file():
        report = json.loads(bench_json.read_text())
        print(f"\n{'design':28s} {'frames':>6s} {'median ms':>10s} {'FPS':>7s} {'state MiB':>10s} {'peak MiB':>9s}")
        for row in report.get("points", []):
            print(f"{row.get('design', '?'):28s} {row.get('length', 0):6d} {row.get('median_ms', 0):10.1f} "
                  f"{row.get('fps', 0):7.2f} {row.get('state_bytes', 0) / 2**20:10.1f} "
                  f"{(row.get('peak_device_bytes') or row.get('peak_rss_bytes') or 0) / 2**20:9.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="gather what travels to the device into .gpu/")
    run_parser = sub.add_parser("run", help="run the check (on the device)")
    run_parser.add_argument("--device", default="cuda")
    run_parser.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of every part")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare()
        return 0
    return run(args.device, args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
