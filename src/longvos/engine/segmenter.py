"""``load_model`` and :class:`Segmenter`: a loaded model plus its device and precision, which opens sessions."""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from longvos.device import DEFAULT_DTYPE, resolve_device, resolve_dtype
from longvos.engine import offline
from longvos.engine.frames import MaxSize
from longvos.engine.session import MaskLike, Session
from longvos.io.errors import InputError
from longvos.io.video import FrameSource
from longvos.models.base import VOSModel


class Segmenter:
    """A model with its weights on a device, and a dtype policy: the autocast compute dtype (``None`` = fp32).

    Weights and per-video state stay fp32; autocast decides the precision of each op, which keeps every
    matmul's inputs in one dtype (no "BFloat16 and Float" mismatches). One segmenter serves many sessions.
    """

    def __init__(self, model: VOSModel, device: str | torch.device = "auto",
                 dtype: str | torch.dtype | None = DEFAULT_DTYPE):
        self.device = usable_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if self.device.type == "cpu" and self.dtype == torch.float16:
            warnings.warn("fp16 on the CPU is very slow (about 35x slower than bf16 on a 2-core x86 machine): use "
                          "bf16 (--dtype bf16) or fp32 there; fp16 is for GPUs", UserWarning, stacklevel=2)
        self.model = model.to(self.device).eval()
        #: The weights file :func:`load_model` loaded (path, size, sha256; see
        #: :func:`longvos.engine.progress.weights_record`), recorded with a run for ``resume``; ``None``: not known.
        self.weights: dict | None = None

    @property
    def name(self) -> str:
        return self.model.name or type(self.model).__name__

    def session(self, max_size: MaxSize = "auto", mem_gap: int | None = None, memory: str | None = None) -> Session:
        """A new per-video :class:`Session`; ``max_size`` caps the short side the network sees (``"auto"``: the
        size the model's weights were trained for, ``None``: native), ``mem_gap`` and ``memory`` override the
        model's long-term memory interval and design for this session only."""
        try:
            return Session(self.model, self.device, self.dtype, max_size=max_size, mem_gap=mem_gap, memory=memory)
        except ValueError as err:  # an interval the model cannot use, or a bad size
            raise InputError(f"model {self.name}: {err}") from None

    # -- SAM2-style offline verbs (see longvos.engine.offline) ------------------------------------------------

    def init_state(self, video: str | Path | FrameSource, max_size: MaxSize = "auto",
                   mem_gap: int | None = None) -> offline.VideoState:
        """Open ``video`` lazily (nothing is decoded) and return its state for the verbs below."""
        return offline.init_state(self.session(max_size, mem_gap), video)

    def add_new_mask(self, state: offline.VideoState, frame_idx: int, obj_id: int,
                     mask: MaskLike) -> tuple[int, list[int]]:
        """Give object ``obj_id``'s mask on frame ``frame_idx``; returns ``(frame_idx, all object ids)``."""
        return offline.add_new_mask(state, frame_idx, obj_id, mask)

    def propagate_in_video(self, state: offline.VideoState, start_frame_idx: int | None = None,
                           reverse: bool = False) -> Iterator[tuple[int, list[int], np.ndarray]]:
        """Yield ``(frame_idx, obj_ids, masks (N, H, W) bool)`` frame by frame through the video."""
        return offline.propagate_in_video(state, start_frame_idx, reverse)

    def remove_object(self, state: offline.VideoState, obj_id: int) -> list[int]:
        """Forget one object everywhere (its masks and, mid-propagation, its memory); returns the remaining ids."""
        return offline.remove_object(state, obj_id)

    def reset_state(self, state: offline.VideoState) -> None:
        """Forget every mask and object of ``state`` (the video stays open)."""
        offline.reset_state(state)


def usable_device(device: str | torch.device | None) -> torch.device:
    """``resolve_device``, with a clear error for a device name torch does not know or cannot use here."""
    try:
        resolved = resolve_device(device)
    except RuntimeError as err:
        raise InputError(f"unknown device {device!r} ({err}); use auto, cpu, cuda, cuda:N or mps") from None
    available = {"cuda": torch.cuda.is_available, "mps": lambda: torch.backends.mps.is_available()}
    if resolved.type in available and not available[resolved.type]():
        raise InputError(f"device {device!r} is not available on this machine (try --device auto or cpu)")
    return resolved


def load_model(name: str, checkpoint: str | Path | None = None, device: str | torch.device = "auto",
               dtype: str | torch.dtype | None = DEFAULT_DTYPE, *, memory: str | None = None,
               mem_gap: int | None = None, allow_random_weights: bool = False) -> Segmenter:
    """Build a registered model (``longvos models`` lists them) and load its weights.

    ``checkpoint`` is a longvos or an official checkpoint (auto-detected). Without one, the weights the package
    ships for that model are used; a model with none is refused (:class:`InputError`) unless
    ``allow_random_weights`` (benchmarks, tests), when it runs with random weights and a ``UserWarning``.
    ``memory`` and ``mem_gap`` override the model's long-term memory design and update interval.
    """
    from longvos.models.registry import create_model

    device = usable_device(device)  # fail before the (slow) model build
    dtype = resolve_dtype(dtype, device)
    checkpoint = weights_for(name, checkpoint, allow_random_weights)
    model = create_model(name, memory=memory, mem_gap=mem_gap)
    if checkpoint is None:
        warnings.warn(f"model {name!r} runs with random weights, as allowed: its masks are meaningless",
                      UserWarning, stacklevel=2)
    else:
        from longvos.checkpoints import load_checkpoint

        if not Path(checkpoint).is_file():
            raise InputError(f"{checkpoint}: checkpoint file not found")
        load_checkpoint(model, checkpoint)
    segmenter = Segmenter(model, device=device, dtype=dtype)
    if checkpoint is not None:
        from longvos.engine.progress import weights_record

        segmenter.weights = weights_record(checkpoint)  # the bundled or downloaded file too
    return segmenter


def weights_for(name: str, checkpoint: str | Path | None, allow_random_weights: bool = False) -> str | Path | None:
    """The checkpoint ``name`` loads: ``checkpoint``, else the bundled weights, else those ``longvos download``
    cached, else ``None`` (random weights),
    which is refused with one line unless ``allow_random_weights``. Unknown names are a ``ValueError``."""
    from longvos.models.registry import model_entry

    model_entry(name)  # an unknown model is reported as such, not as missing weights
    if checkpoint is not None:
        return checkpoint
    bundled = bundled_checkpoint(name) or downloaded_checkpoint(name)
    if bundled is None and not allow_random_weights:
        raise InputError(f"model {name!r} ships no weights and no checkpoint was given, so its masks would be "
                         f"meaningless: pass --checkpoint PATH (Python: checkpoint=...), or --allow-random-weights "
                         f"(Python: allow_random_weights=True) to run it with random weights on purpose"
                         + download_hint(name))
    return bundled


WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


def downloaded_checkpoint(name: str) -> Path | None:
    """The checkpoint ``longvos download <name>`` converted and cached (``$LONGVOS_HOME``), if any."""
    from longvos.download import cached_checkpoint

    return cached_checkpoint(name)


def download_hint(name: str) -> str:
    from longvos.download import OFFICIAL_CHECKPOINTS

    return f"; `longvos download {name}` fetches its official weights" if name in OFFICIAL_CHECKPOINTS else ""


def bundled_checkpoint(name: str) -> Path | None:
    """The weights the package ships for ``name`` (``longvos/weights/<name>.pt`` or ``.pth``), if any."""
    return next((p for p in (WEIGHTS_DIR / f"{name}.pt", WEIGHTS_DIR / f"{name}.pth") if p.is_file()), None)
