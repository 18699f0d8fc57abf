"""Shared test fixtures: paths to the real data and golden outputs in ../shared (never copied into the repo).

Tests that need that data skip, with one reason, where it is missing: those that take the ``shared_dir``,
``golden_dir`` or ``dev_dir`` fixture, those marked ``@pytest.mark.shared``, and those that reach a path under it
through a module-level constant (``from conftest import DEV``, ``FIXTURE = GOLDEN / ...``), directly, through a
helper function of their module or through a fixture. Where the data must be there (``CI=true`` or
``LONGVOS_REQUIRE_SHARED=1``) a missing folder fails those tests instead of skipping them.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import shutil
import sys
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from longvos.models.base import VOSModel

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
SHARED = Path(os.environ.get("LONGVOS_SHARED") or REPO.parent / "shared").resolve()
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"
DEV = DATA / "dev" / "davis2016-dev"

#: The fixtures that hand out paths into the shared data.
SHARED_FIXTURES = frozenset({"shared_dir", "golden_dir", "dev_dir"})


def shared_data_present() -> bool:
    return SHARED.is_dir()


def shared_data_required() -> bool:
    """CI (``CI=true``, as CI services set it) or ``LONGVOS_REQUIRE_SHARED=1``: a missing folder is a failure."""
    return (os.environ.get("LONGVOS_REQUIRE_SHARED") == "1"
            or os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"))


def shared_data_reason() -> str:
    return (f"needs the shared test data (DAVIS frames and masks, golden outputs of the official code) at {SHARED}, "
            f"which does not exist: set LONGVOS_SHARED to its folder (README, 'Tests and their data')")


def _require_shared_data() -> None:
    if not shared_data_present():
        if shared_data_required():
            pytest.fail(shared_data_reason() + " [required: CI or LONGVOS_REQUIRE_SHARED=1]", pytrace=False)
        pytest.skip(shared_data_reason())


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    _require_shared_data()
    return SHARED


@pytest.fixture(scope="session")
def golden_dir(shared_dir) -> Path:
    return shared_dir / "golden"


@pytest.fixture(scope="session")
def dev_dir(shared_dir) -> Path:
    return shared_dir / "data" / "dev" / "davis2016-dev"


# ------------------------------------------------------------------------------------ which tests need the data
def _is_shared_path(value: object) -> bool:
    if isinstance(value, Path):
        value = str(value)
    return isinstance(value, str) and (value == str(SHARED) or value.startswith(str(SHARED) + os.sep))


def _shared_globals(module: types.ModuleType | None) -> frozenset[str]:
    """Names of a module's globals that hold a path into the shared data."""
    if module is None:
        return frozenset()
    return frozenset(name for name, value in vars(module).items() if _is_shared_path(value))


def _code_objects(code: types.CodeType):
    yield code
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _code_objects(constant)


def _reaches_shared_path(function: object, seen: set[int]) -> bool:
    """Whether ``function``, or a function of its own module that it calls, reads a shared-path global."""
    function = inspect.unwrap(getattr(function, "__func__", function))
    code = getattr(function, "__code__", None)
    if code is None or id(function) in seen:
        return False
    seen.add(id(function))
    module = sys.modules.get(getattr(function, "__module__", ""))
    names = _shared_globals(module)
    for block in _code_objects(code):
        for name in block.co_names:
            if name in names:
                return True
            helper = getattr(module, name, None) if module is not None else None
            helper = inspect.unwrap(helper) if callable(helper) else None  # functools.lru_cache and the like
            if (inspect.isfunction(helper) and helper.__module__ == function.__module__
                    and _reaches_shared_path(helper, seen)):
                return True
    return False


def needs_shared_data(item: pytest.Item) -> bool:
    if item.get_closest_marker("shared") is not None:
        return True
    if SHARED_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(_is_shared_path(value) for value in callspec.params.values()):
        return True
    seen: set[int] = set()
    if _reaches_shared_path(getattr(item, "function", None), seen):
        return True
    fixture_info = getattr(item, "_fixtureinfo", None)
    for definitions in getattr(fixture_info, "name2fixturedefs", {}).values():
        if any(_reaches_shared_path(definition.func, seen) for definition in definitions):
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "shared: needs the shared test data (../shared or $LONGVOS_SHARED)")
    # A user's downloaded checkpoints (`longvos download`) must not change what the tests load.
    config._longvos_home = tempfile.mkdtemp(prefix="longvos-test-home-")  # type: ignore[attr-defined]
    os.environ["LONGVOS_HOME"] = config._longvos_home  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    home = getattr(config, "_longvos_home", None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


def pytest_report_header(config: pytest.Config) -> str:
    if shared_data_present():
        return f"shared test data: {SHARED}"
    what = "tests that need it FAIL (required)" if shared_data_required() else "tests that need it are skipped"
    return f"shared test data: {SHARED} is missing; {what}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if shared_data_present():
        return
    for item in items:
        if needs_shared_data(item):
            item.add_marker(pytest.mark.shared)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("shared") is not None:
        _require_shared_data()


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: Run torch on one CPU thread for the test: reproducible timings, and on an oversubscribed machine far faster than
#: several threads (spinning OpenMP workers of competing processes slow each other down by 10x or more).
one_thread = pytest.fixture(_one_torch_thread, name="one_thread")
#: The same for a whole module, its module-scoped fixtures (models, clips) included:
#: ``pytestmark = pytest.mark.usefixtures("one_thread_module")``.
one_thread_module = pytest.fixture(_one_torch_thread, scope="module", name="one_thread_module")


def optional_import(module: str, install: str):
    """Import an optional extra for a test. Without it the test is skipped, except where
    ``LONGVOS_REQUIRE_OPTIONAL=1`` (CI installs every extra), where its absence is an error, not a silent skip."""
    if os.environ.get("LONGVOS_REQUIRE_OPTIONAL") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"optional: {install}")



# ---------------------------------------------------------------------------------------------------------------------
# Helpers shared by several test modules (tests import them from here, never from another test module).
# ---------------------------------------------------------------------------------------------------------------------

def load_script(name: str) -> types.ModuleType:
    """``scripts/<name>.py`` imported as a module (its ``main`` is not run), for tests of its functions; the script
    itself is run as a subprocess from ``SCRIPTS / f"{name}.py"``."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_mp4(frames: list, path: Path, gop: int = 6, fps: int = 24, faststart: bool = False) -> Path:
    """Encode RGB frames losslessly-ish (x264, small GOP so that seeking has keyframes to land on); ``faststart``
    puts the index at the front, as cameras and web tools write them (a cut file still opens)."""
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(gop), "crf": "10", "bf": "2"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def seeded_checkpoint(tmp_path_factory) -> Path:
    """mavos-lite with weights from seed 0, shared by every test in the session (random weights would differ
    between worker processes)."""
    from longvos.checkpoints import save_model
    from longvos.models.registry import create_model

    path = tmp_path_factory.getbasetemp() / "mavos-lite-seed0.pt"
    if not path.is_file():
        torch.manual_seed(0)
        save_model(create_model("mavos-lite"), path)
    return path


def copy_clip(dev_dir: Path, sequence: str, frames: int, destination: Path) -> Path:
    """The first ``frames`` JPEGs of a DAVIS sequence, copied into ``destination/sequence``."""
    folder = destination / sequence
    folder.mkdir(parents=True)
    for path in sorted((dev_dir / "JPEGImages" / sequence).glob("*.jpg"))[:frames]:
        shutil.copy(path, folder / path.name)
    return folder


def annotation(dev_dir: Path, sequence: str, index: int) -> Path:
    return dev_dir / "Annotations" / sequence / f"{index:05d}.png"


# -- the web app (tests/test_app_*.py) -----------------------------------------------------------------------------

#: The app tests' network size: small enough that a run of a few frames takes well under a second.
APP_MAX_SIZE = 64
# The app tests drive the app with Gradio's client, whose huggingface_hub would look up huggingface.co and send
# telemetry: tests never reach the network. Set before any test module imports it (huggingface_hub reads them once).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def app_swan_clip(dev_dir, tmp_path_factory) -> Path:
    """Six blackswan frames at 320x180 as an H.264 mp4: a short real video for the app."""
    import numpy as np
    from PIL import Image

    frames = [np.asarray(Image.open(p).convert("RGB").resize((320, 180)))
              for p in sorted((dev_dir / "JPEGImages" / "blackswan").glob("*.jpg"))[:6]]
    return write_mp4(frames, tmp_path_factory.mktemp("app-clip") / "swan.mp4")


@pytest.fixture(scope="session")
def app_swan_mask(dev_dir):
    """The swan's first-frame mask at the clip's 320x180."""
    import numpy as np
    from PIL import Image

    from longvos.io.masks import read_index_mask

    ids = read_index_mask(dev_dir / "Annotations" / "blackswan" / "00000.png").ids
    return np.asarray(Image.fromarray(ids).resize((320, 180), Image.NEAREST))


@pytest.fixture(scope="session")
def app_segmenter(tmp_path_factory):
    """mavos-lite with the seed-0 weights (fast and deterministic), on the CPU, for the app tests."""
    from longvos.engine.segmenter import load_segmenter

    return load_segmenter("mavos-lite", seeded_checkpoint(tmp_path_factory), "cpu")


@contextlib.contextmanager
def serving_app(segmenter, max_size: int = APP_MAX_SIZE, **settings):
    """A running :class:`~longvos.app.server.LongvosApp` on a free port of 127.0.0.1 (Gradio keeps its cache folder
    in the environment, so one at a time per process); closed, and its work folder deleted, afterwards."""
    from longvos.app.server import LongvosApp
    from longvos.engine.options import SegmentOptions

    app = LongvosApp(SegmentOptions(model=segmenter, max_size=max_size), port=0, **settings)
    try:
        app.launch()
        yield app
    finally:
        app.close()


def app_client(app_or_url):
    """A Gradio client of a running app (one browser session); it downloads nothing by itself."""
    from gradio_client import Client

    return Client(getattr(app_or_url, "url", app_or_url), verbose=False, download_files=False)


def app_file(value) -> bytes:
    """The bytes of a file an app event returned (its ``{"url": ...}`` or an update holding one)."""
    import urllib.request

    value = value.get("value", value)
    with urllib.request.urlopen(value["url"], timeout=60) as response:
        return response.read()


def start_app(python_args: list[str], temp: Path, *options: str, env: dict[str, str] | None = None):
    """``python <python_args> app --port 0 ...`` (mavos-lite, CPU, one thread) with ``TMPDIR=temp``, ``HOME`` and
    the working directory in empty folders beside it: the process and its "serving" line."""
    import subprocess

    for folder in (temp, temp.with_name("home"), temp.with_name("cwd")):
        folder.mkdir()
    command = [sys.executable, *python_args, "app", "--port", "0", "--model", "mavos-lite", "--device", "cpu",
               "--threads", "1", "--max-size", "48", *options]
    environment = {**os.environ, "TMPDIR": str(temp), "HOME": str(temp.with_name("home")), "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
                   **(env or {})}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environment, cwd=temp.with_name("cwd"))
    line = process.stdout.readline()
    assert line.startswith("longvos app: serving http://127.0.0.1:"), (line, process.stderr.read())
    return process, line


#: Overrides that make a training run tiny: 33-pixel crops, 3-frame clips, 3 steps, one thread, no workers or logs.
TINY = ["data.size=33", "data.clip_len=3", "data.workers=0", "data.min_object_pixels=5", "data.max_objects=3",
        "model.pretrained_encoder=false", "optim.batch_size=1", "optim.steps=3", "run.log_every=1",
        "run.checkpoint_every=100", "run.tensorboard=false", "run.progress=false", "run.threads=1"]


def config_from_dict(values: dict):
    """A training config from :meth:`TrainConfig.to_dict` output (the inverse of ``to_dict``)."""
    from longvos.train.config import TrainConfig, update_config

    config = TrainConfig()
    update_config(config, values, source="checkpoint")
    return config


# ---------------------------------------------------------------------------------------------------------------
# An exact oracle model for engine tests (test_session_engine, test_session_errors, test_session_pipeline)


@dataclass
class RepeatState:
    object_ids: list[int] = field(default_factory=list)
    masks_NHW: torch.Tensor | None = None
    seen_sizes: list[tuple[int, int]] = field(default_factory=list)

    def nbytes(self) -> int:
        return 0 if self.masks_NHW is None else self.masks_NHW.numel() * 4


class RepeatLastMask(VOSModel):
    """Predicts every object exactly where it was last given; input sizes snap down to multiples of 8."""

    name = "repeat-last-mask"

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return max(8, height // 8 * 8), max(8, width // 8 * 8)

    def new_state(self, mem_gap: int | None = None) -> RepeatState:
        if mem_gap not in (None, 1):
            raise ValueError(f"this model has no memory interval; mem_gap={mem_gap} does not apply")
        return RepeatState()

    def step(self, state, image_B3HW, masks=None):
        height, width = image_B3HW.shape[-2:]
        state.seen_sizes.append((height, width))
        if state.masks_NHW is None:
            state.masks_NHW = torch.zeros(0, height, width)
        for object_id, mask_HW in (masks or {}).items():
            if object_id not in state.object_ids:
                state.object_ids.append(object_id)
                state.masks_NHW = torch.cat([state.masks_NHW, torch.zeros(1, height, width)])
            state.masks_NHW[:, mask_HW > 0.5] = 0
            state.masks_NHW[state.object_ids.index(object_id)] = mask_HW
        background = 1 - state.masks_NHW.sum(0, keepdim=True)
        return torch.cat([background, state.masks_NHW])

    def remove_objects(self, state, object_ids):
        keep = [i for i, o in enumerate(state.object_ids) if o not in object_ids]
        state.object_ids = [state.object_ids[i] for i in keep]
        state.masks_NHW = state.masks_NHW[keep]


# -- interrupting a run (resume tests) -------------------------------------------------------------------------------

class StopRun(Exception):
    """Raised by :func:`stop_after_frames` to interrupt ``segment_video`` as a crash would."""


def stop_after_frames(frames: int):
    """An ``on_frame`` callback that raises :class:`StopRun` once ``frames`` frames have been segmented."""
    seen = []

    def on_frame(*_args) -> None:
        seen.append(1)
        if len(seen) >= frames:
            raise StopRun

    return on_frame


def noise_clip(root: Path, frames: int, folder: str = "frames", ext: str = "png",
               box: tuple[int, int, int, int] = (10, 30, 10, 40)) -> tuple[Path, Path]:
    """``frames`` 48x64 noise frames in ``root / folder`` and a first-frame mask ``root / "mask.png"`` with object 1
    in ``box`` (rows y0:y1, columns x0:x1); returns both paths."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / folder).mkdir(parents=True)
    for index in range(frames):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / folder / f"{index:05d}.{ext}")
    mask = np.zeros((48, 64), np.uint8)
    y0, y1, x0, x1 = box
    mask[y0:y1, x0:x1] = 1
    Image.fromarray(mask).save(root / "mask.png")
    return root / folder, root / "mask.png"


def moving_square_clip(folder: Path, frames: int, seed: int, height: int = 64, width: int = 96) -> Path:
    """PNG frames of a yellow square moving right over dark noise, and the first frame's mask (object 1) beside the
    folder; returns the mask's path."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(frames):
        image = (rng.random((height, width, 3)) * 60).astype(np.uint8)
        image[20:44, 10 + 3 * index:34 + 3 * index] = (230, 200, 40)
        Image.fromarray(image).save(folder / f"{index:05d}.png")
    mask = np.zeros((height, width), np.uint8)
    mask[20:44, 10:34] = 1
    Image.fromarray(mask).save(folder.parent / "mask.png")
    return folder.parent / "mask.png"


def tiny_davis_sequence(data: Path, frames: int = 4) -> Path:
    """A DAVIS-layout dataset at ``data`` with one sequence ``seq``: ``frames`` noise frames (48x64), each annotated,
    one object moving right. Returns ``data``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for kind in ("JPEGImages", "Annotations"):
        (data / kind / "seq").mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(data / "JPEGImages" / "seq"
                                                                                / f"{t:05d}.jpg")
        ids = np.zeros((48, 64), np.uint8)
        ids[5:20, 5 + t:20 + t] = 1
        Image.fromarray(ids).convert("P").save(data / "Annotations" / "seq" / f"{t:05d}.png")
    return data


@pytest.fixture
def checkpoint_cache(tmp_path, monkeypatch) -> Path:
    """A fresh LONGVOS_HOME; returns its checkpoint folder (where downloads go)."""
    monkeypatch.setenv("LONGVOS_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "checkpoints"
