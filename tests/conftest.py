"""Shared test fixtures: paths to the real data and golden outputs in ../shared (never copied into the repo).

Tests that need that data skip, with one reason, where it is missing: those that take the ``shared_dir``,
``golden_dir`` or ``dev_dir`` fixture, those marked ``@pytest.mark.shared``, and those that reach a path under it
through a module-level constant (``from conftest import DEV``, ``FIXTURE = GOLDEN / ...``), directly, through a
helper function of their module or through a fixture. Where the data must be there (``CI=true`` or
``LONGVOS_REQUIRE_SHARED=1``) a missing folder fails those tests instead of skipping them.
"""
from __future__ import annotations

import importlib
import inspect
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
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


def call(server, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to a running app server: (status, headers, body), error statuses included."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(server.url.rstrip("/") + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


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
