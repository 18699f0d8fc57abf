"""Without the shared test data (../shared, $LONGVOS_SHARED) the tests that need it skip with one reason, and the
others pass; where CI requires the data (CI=true, LONGVOS_REQUIRE_SHARED=1) they fail instead of skipping.

Each case runs a small test module in a fresh pytest process with a copy of tests/conftest.py."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

#: Five ways a test reaches the shared data, and one test that does not.
PROBE = '''
import pytest
from conftest import DEV, GOLDEN

FIXTURE = GOLDEN / "davis_eval"


def expected():
    return (FIXTURE / "expected.json").read_text()


@pytest.fixture
def first_frame():
    return (DEV / "JPEGImages" / "blackswan" / "00000.jpg").read_bytes()


def test_takes_the_fixture(dev_dir):
    assert (dev_dir / "JPEGImages").is_dir()


def test_reads_a_constant():
    assert (DEV / "Annotations").is_dir()


def test_calls_a_helper():
    assert expected() == "{}"


def test_uses_a_module_fixture(first_frame):
    assert first_frame == b"jpg"


@pytest.mark.shared
def test_is_marked():
    pass


def test_needs_nothing():
    assert sum(range(4)) == 6
'''


def run_probe(tmp_path: Path, shared: Path, **env: str) -> subprocess.CompletedProcess:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    shutil.copy(CONFTEST, project / "conftest.py")
    (project / "test_probe.py").write_text(PROBE)
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("CI", "LONGVOS_REQUIRE_SHARED", "PYTEST_ADDOPTS")}
    environment.update(LONGVOS_SHARED=str(shared), OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_probe.py"],
                          cwd=project, env=environment, capture_output=True, text=True, timeout=300)


def test_missing_shared_data_skips_with_one_reason_and_the_rest_passes(tmp_path):
    result = run_probe(tmp_path, tmp_path / "no-such-folder")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "1 passed, 5 skipped" in out, out
    assert "FileNotFoundError" not in out and "Error" not in out.replace("errors", ""), out
    # One reason for all five, naming the folder and how to point at the data.
    assert "SKIPPED [5]" in out and f"{tmp_path / 'no-such-folder'}" in out and "LONGVOS_SHARED" in out, out
    assert "needs the shared test data" in out


@pytest.mark.parametrize("env", [{"CI": "true"}, {"LONGVOS_REQUIRE_SHARED": "1"}])
def test_where_the_data_is_required_its_absence_fails(tmp_path, env):
    result = run_probe(tmp_path, tmp_path / "no-such-folder", **env)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "1 passed" in out and "5 errors" in out and "skipped" not in out, out
    assert "needs the shared test data" in out and "FileNotFoundError" not in out, out


def test_present_shared_data_runs_every_test(tmp_path):
    shared = tmp_path / "shared"
    dev = shared / "data" / "dev" / "davis2016-dev"
    (dev / "JPEGImages" / "blackswan").mkdir(parents=True)
    (dev / "Annotations").mkdir()
    (dev / "JPEGImages" / "blackswan" / "00000.jpg").write_bytes(b"jpg")
    (shared / "golden" / "davis_eval").mkdir(parents=True)
    (shared / "golden" / "davis_eval" / "expected.json").write_text("{}")
    result = run_probe(tmp_path, shared, CI="true")
    assert result.returncode == 0 and "6 passed" in result.stdout, result.stdout + result.stderr
