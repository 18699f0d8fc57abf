"""The atomic, bounded, ordered background writer."""
from __future__ import annotations

import sys
import threading
import time

import pytest

from longvos.io.writer import BackgroundWriter, atomic_write


def test_atomic_write_replaces_whole_files_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "frame.png"
    atomic_write(target, lambda path: path.write_text("first"))
    assert target.read_text() == "first"

    def fail_half_way(path):
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail_half_way)
    assert target.read_text() == "first"  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["frame.png"]  # no partial file left


def test_jobs_run_in_order_and_close_waits_for_them(tmp_path):
    done = []
    with BackgroundWriter(max_pending=2) as writer:
        for i in range(20):
            writer.submit(lambda i=i: (time.sleep(0.001), done.append(i)))
    assert done == list(range(20))


def test_queue_is_bounded():
    release = threading.Event()
    writer = BackgroundWriter(max_pending=2)
    writer.submit(release.wait)  # occupies the worker
    writer.submit(lambda: None)
    writer.submit(lambda: None)  # queue now full
    blocked = threading.Thread(target=writer.submit, args=(lambda: None,))
    blocked.start()
    blocked.join(timeout=0.3)
    assert blocked.is_alive()  # the producer waits instead of piling up work
    release.set()
    blocked.join(timeout=5)
    writer.close()


def test_worker_error_reaches_the_caller_and_later_jobs_are_dropped():
    done = []

    def broken():
        raise OSError("no space left on device")

    writer = BackgroundWriter(max_pending=4)
    writer.submit(lambda: done.append(0))
    writer.submit(broken)
    writer.submit(lambda: done.append(2))  # after the failure: must not run, so output stays a prefix
    with pytest.raises(OSError, match="no space left"):
        writer.flush()
    with pytest.raises(OSError, match="no space left"):
        writer.submit(lambda: done.append(3))
    with pytest.raises(OSError):
        writer.close()
    assert done == [0]


def test_context_exit_on_caller_error_keeps_the_callers_error():
    done = []
    with pytest.raises(KeyError):
        with BackgroundWriter() as writer:
            writer.submit(lambda: done.append(1))
            raise KeyError("model failed")
    assert done == [1]  # frames computed before the failure are still written


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python >= 3.11")
def test_context_exit_names_a_write_failure_in_the_callers_error():
    def disk_full():
        raise OSError("disk full")

    with pytest.raises(KeyError) as caught:
        with BackgroundWriter() as writer:
            writer.submit(disk_full)
            raise KeyError("model failed")
    assert any("disk full" in note for note in caught.value.__notes__)  # not lost: the run's error names it
