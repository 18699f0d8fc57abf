"""Shared test fixtures: paths to the real data and golden outputs in ../shared (never copied into the repo)."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LONGVOS_SHARED", REPO.parent / "shared")).resolve()
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"
DEV = DATA / "dev" / "davis2016-dev"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data not found at {SHARED}; set LONGVOS_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def golden_dir(shared_dir) -> Path:
    return shared_dir / "golden"


@pytest.fixture(scope="session")
def dev_dir(shared_dir) -> Path:
    return shared_dir / "data" / "dev" / "davis2016-dev"


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

