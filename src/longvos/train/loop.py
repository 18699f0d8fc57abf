"""The training loop: one function, top to bottom, in the spirit of nanoGPT's ``train.py``.

    setup (processes, model, optimiser, EMA, data) -> resume if asked -> for each step:
        schedules -> unrolled clip forward -> backward -> clip gradients -> AdamW step -> EMA -> log -> checkpoint

Runs as one process, or as many under ``torchrun`` (DistributedDataParallel; gloo on CPU, NCCL on GPU). Mixed
precision: bf16 autocast (or fp16 with a GradScaler) on CUDA, bf16 autocast on a CPU with native bf16. Rank 0 logs and writes checkpoints; a run interrupted
by SIGTERM/SIGINT saves a checkpoint at the end of the step it is in, and ``resume=True`` continues from the newest
checkpoint in ``run.out_dir`` (model, EMA, optimiser, scaler, every process's random generators and the step all
restored; data restart at the same sample index since samples are seeded by index). A resume refuses a config that
differs from the checkpoint's outside :data:`~longvos.train.config.RESUME_MAY_CHANGE`, and a new run refuses a
folder that already holds a run's checkpoints or log.
"""
from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from longvos.checkpoints import (CheckpointError, latest_checkpoint, list_checkpoints, read_training_checkpoint,
                                 restore_rng, restore_training, rng_state, save_training_checkpoint)
from longvos.device import bf16_is_fast
from longvos.io.errors import LongvosError
from longvos.models.aot.model import AOTModel

from . import distributed
from .config import RESUME_MAY_CHANGE, ConfigError, TrainConfig, describe_config, resume_differences
from .data import build_loader
from .logger import TrainingLogger
from .losses import reference_loss_weight, top_k_fraction_at
from .schedule import EMA, default_ema_decay, encoder_learning_rate, learning_rate_at
from .unroll import ClipUnroll, UnrollSettings

#: Parameters exempt from weight decay besides biases and norms (1-D tensors): the official exemptions that exist here.
NO_DECAY_NAMES = ("relative_emb", "decoder.classifier")


def train(config: TrainConfig, resume: bool = False) -> AOTModel:
    """Train as configured; returns the trained model (unwrapped, on its device) of this process."""
    dist_state = distributed.setup(config.run.device)
    try:
        return _train(config, resume, dist_state)
    finally:
        distributed.teardown(dist_state)


class TrainingDiverged(LongvosError):
    """The loss became NaN or infinite: every later step, and the weights it would save, would be meaningless."""


def _train(config: TrainConfig, resume: bool, dist_state: distributed.Distributed) -> AOTModel:
    run, optim = config.run, config.optim
    device = dist_state.device
    if run.threads > 0:
        torch.set_num_threads(run.threads)
    run_dir = Path(run.out_dir)

    checkpoint_state = None
    if resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is not None:
            checkpoint_state = read_training_checkpoint(checkpoint)
            check_resume_config(checkpoint_state, config, checkpoint)
        elif dist_state.is_main:
            print(f"no checkpoint in {run_dir}/checkpoints; starting from step 0")
    else:
        check_new_run_folder(run_dir)
    start_step = int(checkpoint_state["step"]) if checkpoint_state is not None else 0

    # Same seed on every process: identical initial weights (DDP also broadcasts rank 0's at wrap time).
    torch.manual_seed(run.seed)
    # The data first: a bad data root fails at once, not after the model is built. The iterator draws its base
    # seed from the torch RNG here, before any RNG state is restored, so a resumed run continues the exact random
    # stream of an uninterrupted one.
    batches = iter(build_loader(config.data, optim.batch_size, run.seed, dist_state.rank,
                                start_step * optim.batch_size))
    model = build_model(config).to(device)
    ema = EMA(model, optim.ema_decay or default_ema_decay(optim.steps))
    optimizer = build_optimizer(model, config)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(optim.amp_dtype).lower())
    if amp_dtype is None:
        raise ConfigError(f"optim.amp_dtype must be bf16 or fp16, got {optim.amp_dtype!r}")
    # Mixed precision on CUDA; on a CPU only bf16, and only where the CPU computes it natively (fp16 and emulated
    # bf16 are slower there than fp32). Measured on this project's 2-core AMD EPYC (avx512_bf16), 2 x 6-frame clips
    # at 241 px with the encoder trained: 3.4 s per step in fp32, 1.75 s in bf16 (README, training section).
    use_amp = optim.amp and (device.type == "cuda" or (device.type == "cpu" and amp_dtype == torch.bfloat16
                                                        and bf16_is_fast(device)))
    if dist_state.is_main:
        print(f"training on {device} with {torch.get_num_threads()} threads, "
              f"{'autocast ' + str(optim.amp_dtype) if use_amp else 'fp32'}")
    # bf16 has fp32's exponent range, so only fp16 needs its loss scaled against gradient underflow.
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)

    unroll: nn.Module = ClipUnroll(model)
    if dist_state.enabled:
        # Some parameters can sit out a step (e.g. the MCA blocks when a clip is too short to fuse memories).
        unroll = DistributedDataParallel(unroll, device_ids=[device.index] if device.type == "cuda" else None,
                                         find_unused_parameters=True)
    torch.manual_seed(run.seed + 1000 * dist_state.rank)  # dropout and slot draws differ between processes
    if checkpoint_state is not None:
        restore_training(checkpoint_state, model, ema, optimizer, scaler, what=str(checkpoint), rng=False)
        # Each process continues its own random streams (CPU, and its CUDA device's), saved by rank. A checkpoint
        # without this rank's (an older one, or a run resumed with more processes) gives it a fresh stream: the
        # run goes on, but not bit for bit as an uninterrupted one would.
        if not restore_rng(checkpoint_state, dist_state.rank, device):
            torch.manual_seed(run.seed + 1000 * dist_state.rank + start_step)
        del checkpoint_state

    logger = None
    if dist_state.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.txt").write_text(describe_config(config) + "\n")
        logger = TrainingLogger(run_dir, start_step, optim.steps, run.tensorboard, run.progress)
    stop = _StopFlag()

    def checkpoint_now(at_step: int) -> None:
        # Every process takes part (its random generators travel to rank 0); rank 0 writes the file.
        rng_states = distributed.gather_objects(rng_state(device), dist_state)
        if dist_state.is_main:
            save_training_checkpoint(run_dir, at_step, model, ema, optimizer, scaler, config.to_dict(),
                                     run.keep_checkpoints, rng_states=rng_states)

    model.train()
    step, window_start, window_steps = start_step, time.perf_counter(), 0
    last_step = min(optim.steps, start_step + run.stop_after_steps) if run.stop_after_steps > 0 else optim.steps
    try:
        while step < last_step:
            lr = learning_rate_at(step, optim.steps, optim.lr, optim.min_lr, optim.warmup_fraction, optim.poly_power)
            encoder_lr = encoder_learning_rate(lr, optim.min_lr, optim.encoder_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = encoder_lr if group["encoder"] else lr
            settings = unroll_settings(config, step)

            batch = next(batches)
            images = batch["images"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            num_objects = batch["num_objects"].to(device)
            autocast = (torch.autocast(device.type, dtype=amp_dtype) if use_amp else contextlib.nullcontext())
            with autocast:
                loss, stats = unroll(images, labels, num_objects, settings)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            ema.update(model)
            step += 1
            window_steps += 1

            # Every log_every steps, and at the schedule's end (not where a stop_after_steps invocation ends: its
            # resume would log a row the uninterrupted run does not).
            if step % run.log_every == 0 or step == optim.steps:
                values = distributed.mean_over_processes(
                    {"loss": float(loss.detach()), **stats, "grad_norm": float(grad_norm)}, dist_state)
                if not math.isfinite(values["loss"]):  # checked where the loss is read anyway: no extra sync
                    raise TrainingDiverged(f"the loss is {values['loss']} at step {step}: training diverged (lower "
                                           f"optim.lr, or check the data); the checkpoints before step {step} "
                                           f"in {run_dir / 'checkpoints'} are kept")
                if logger is not None:
                    logger.log(step, {**values, "lr": lr, "encoder_lr": encoder_lr, "top_k": settings.top_k_fraction,
                                      "teacher_forcing": int(settings.teacher_forcing),
                                      "sec_per_step": (time.perf_counter() - window_start) / window_steps})
                window_start, window_steps = time.perf_counter(), 0
            if logger is not None:
                logger.advance()
            stop_now = stop.requested(dist_state)
            if step % run.checkpoint_every == 0 or step == last_step or stop_now:
                checkpoint_now(step)
            if stop_now:
                if dist_state.is_main:
                    print(f"\nstopped at step {step}; resume with --resume")
                break
    finally:
        stop.restore()
        if logger is not None:
            logger.close()
    return model


def check_new_run_folder(run_dir: Path) -> None:
    """A new run (no ``--resume``) refuses a folder that holds another run's checkpoints or log: rotation would
    delete its own younger checkpoints first, it would write into that run's log, and a later ``--resume`` would
    continue the other run."""
    found = [path.name for path in list_checkpoints(run_dir)[-1:]]
    if (run_dir / "log.csv").is_file():
        found.append("log.csv")
    if found:
        raise CheckpointError(f"run.out_dir {run_dir} already holds a training run ({', '.join(found)}): continue "
                              f"it with --resume, or give this run another run.out_dir")


def check_resume_config(state: dict, config: TrainConfig, checkpoint: Path) -> None:
    """A resume continues the run it was saved from: any config difference outside
    :data:`~longvos.train.config.RESUME_MAY_CHANGE` is refused with one line naming the first few keys, their
    saved and current values, and the checkpoint."""
    differences = resume_differences(state.get("config") or {}, config)
    if differences:
        shown = "; ".join(f"{key}: checkpoint {old!r} vs now {new!r}" for key, old, new in differences[:3])
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise CheckpointError(
            f"cannot resume from {checkpoint}: it was saved with another config ({shown}{more}); a resume may change "
            f"only {', '.join(sorted(RESUME_MAY_CHANGE))} (start another run.out_dir for the rest)")


def build_model(config: TrainConfig) -> AOTModel:
    """The model to train, with δ = ``loss.long_term_gap`` so the long-term memory updates within a clip."""
    from longvos.checkpoints import load_checkpoint
    from longvos.models.registry import create_model

    model_cfg = config.model
    model = create_model(model_cfg.name, mem_gap=config.loss.long_term_gap,
                         pretrained_encoder=model_cfg.pretrained_encoder and not model_cfg.init)
    if not isinstance(model, AOTModel):
        raise ValueError(f"training supports the AOT family (mavos-*, deaot-*), not {model_cfg.name!r}")
    if model_cfg.init:
        load_checkpoint(model, model_cfg.init)
    if model_cfg.mca_identity_init:
        if model.memory_fusion is None:
            raise ConfigError(f"model.mca_identity_init: {model_cfg.name!r} has no MCA blocks")
        model.memory_fusion.reset_to_identity()
    # Frozen encoder parameters get no gradient, so autograd skips the whole encoder backward: the largest saving
    # on CPU. They stay in the optimiser, so a run may unfreeze later and resume.
    model.encoder.requires_grad_(not model_cfg.freeze_encoder)
    if model_cfg.train_only:
        if not model_cfg.init:
            raise ConfigError("model.train_only freezes the rest of the model, so it needs model.init "
                              "(the checkpoint whose other weights stay fixed)")
        freeze_all_but(model, model_cfg.train_only)
    return model


def freeze_all_but(model: nn.Module, prefixes: tuple[str, ...]) -> None:
    """Only parameters whose names start with one of ``prefixes`` train; a prefix that names nothing is an error
    (a typo would otherwise freeze the whole model and train nothing)."""
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            raise ConfigError(f"model.train_only: no parameter name starts with {prefix!r} "
                              f"(top-level modules: {', '.join(sorted({n.split('.')[0] for n in names}))})")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(name.startswith(prefix) for prefix in prefixes))


def build_optimizer(model: AOTModel, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over four groups: (encoder or not) x (decayed or not); biases, norms and a few others are not decayed."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        is_encoder = name.startswith("encoder.")
        decays = parameter.ndim > 1 and not any(part in name for part in NO_DECAY_NAMES)
        groups.setdefault((is_encoder, decays), []).append(parameter)
    param_groups = [{"params": params, "encoder": is_encoder,
                     "weight_decay": config.optim.weight_decay if decays else 0.0}
                    for (is_encoder, decays), params in sorted(groups.items())]
    return torch.optim.AdamW(param_groups, lr=config.optim.lr)


def unroll_settings(config: TrainConfig, step: int) -> UnrollSettings:
    loss, total = config.loss, config.optim.steps
    return UnrollSettings(
        teacher_forcing=step < loss.teacher_forcing_fraction * total,
        top_k_fraction=top_k_fraction_at(step, total, loss.top_k_final, loss.top_k_anneal_fraction),
        reference_weight=reference_loss_weight(step, total, loss.aux_ref_weight, loss.aux_ref_fraction),
        ce_weight=loss.ce_weight,
        jaccard_weight=loss.jaccard_weight,
    )


class _StopFlag:
    """SIGTERM/SIGINT ask for a clean stop (checkpoint, then exit) instead of killing the step half-way."""

    def __init__(self) -> None:
        self._requested = False
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers, plain behaviour
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self._requested = True

    def requested(self, dist_state: distributed.Distributed) -> bool:
        """True on every process as soon as any process was asked to stop (they must leave the loop together)."""
        if not dist_state.enabled:
            return self._requested
        flag = torch.tensor([float(self._requested)], device=dist_state.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
