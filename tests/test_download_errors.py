"""`longvos download`: a chunked body cut short is a DownloadError naming the URL (never a bare IncompleteRead), and
the temporary files a killed download left in the cache are removed by the next download of the same checkpoint,
never those a running download holds. Servers run on 127.0.0.1: no test reaches the internet."""
from __future__ import annotations

import os
import socketserver
import threading
import time
import warnings
from pathlib import Path

import pytest

from longvos.cli.main import main
from longvos.download import STALE_SECONDS, DownloadError, download_checkpoint

MODEL = "deaot-mnv2"


class _CutChunk(socketserver.StreamRequestHandler):
    """Answers any request with a chunked body that announces a 0x400-byte chunk, sends 100 bytes and hangs up."""

    def handle(self):
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # the request's head
            pass
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n400\r\n" + b"x" * 100)
        self.wfile.flush()


@pytest.fixture(scope="module")
def cut_chunk_url():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _CutChunk)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/R50_DeAOTL_PRE_YTB_DAV.pth"
    server.shutdown()
    server.server_close()


@pytest.fixture
def cache(checkpoint_cache) -> Path:
    return checkpoint_cache


def test_a_chunked_body_cut_short_is_refused_in_one_line_naming_the_url(cut_chunk_url, cache, capsys):
    assert main(["download", MODEL, "--url", cut_chunk_url, "--quiet"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert cut_chunk_url in lines[0] and "truncated download" in lines[0], lines[0]
    assert not list(cache.iterdir())  # nothing stored, no temporary file left


def test_a_chunked_body_cut_short_is_a_download_error_for_api_callers(cut_chunk_url, cache):
    with pytest.raises(DownloadError, match="truncated") as caught:
        download_checkpoint(MODEL, cut_chunk_url, progress=False)
    assert cut_chunk_url in str(caught.value)


def _aged(path: Path, size: int = 1000, seconds: float = 2 * STALE_SECONDS) -> Path:
    path.write_bytes(b"\0" * size)
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_a_killed_downloads_temporary_files_are_removed_by_the_next_download(cut_chunk_url, cache, tmp_path):
    """Stale files of this checkpoint go; a running download's (locked), a fresh one and another model's stay."""
    fcntl = pytest.importorskip("fcntl")  # inside the lock tests: the module is collected on Windows too
    cache.mkdir(parents=True)
    stale = [_aged(cache / f".{MODEL}.k1ll3d_x.download"), _aged(cache / f".{MODEL}.k1ll3d_y.pt.part")]
    running = _aged(cache / f".{MODEL}.running1.download")
    fresh = _aged(cache / f".{MODEL}.justmade.pt.part", seconds=0)
    other = [_aged(cache / ".deaot-r50.k1ll3d_z.download"), _aged(cache / f".{MODEL}-x.k1ll3d_w.download"),
             _aged(cache / f"{MODEL}.pt.download"), _aged(cache / "notes.download")]
    target = tmp_path / "elsewhere.download"
    target.write_bytes(b"mine")
    link = cache / f".{MODEL}.alinkto_.download"
    link.symlink_to(target)
    with open(running, "rb") as held:  # another download, still running, holds its file
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DownloadError, match="truncated"):  # the cleanup comes first, whatever the download does
            download_checkpoint(MODEL, cut_chunk_url, progress=False)
    assert not any(path.exists() for path in stale)
    assert running.exists() and fresh.exists() and all(path.exists() for path in other)
    assert link.is_symlink() and target.read_bytes() == b"mine"  # links are not followed, nor removed
    assert sorted(path.name for path in cache.iterdir()) == sorted(
        path.name for path in [running, fresh, *other, link])  # and the failed download left nothing


def test_a_running_download_locks_its_temporary_files(cut_chunk_url, cache, monkeypatch):
    """While a download runs, its temporary files are locked (so another download leaves them alone)."""
    fcntl = pytest.importorskip("fcntl")
    import longvos.download as download

    seen = {}

    def fetch(url, destination, **kwargs):
        for path in destination.parent.iterdir():
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen[path.name] = "free"
            except BlockingIOError:
                seen[path.name] = "locked"
            finally:
                os.close(fd)
        assert download._remove_stale_temporaries(destination.parent, MODEL) == []
        raise DownloadError("stop here")

    monkeypatch.setattr(download, "fetch", fetch)
    with warnings.catch_warnings(), pytest.raises(DownloadError, match="stop here"):
        download_checkpoint(MODEL, cut_chunk_url, progress=False)
    assert sorted(name.rsplit(".", 1)[-1] for name in seen) == ["download", "lock", "part"]  # the download's lock
    assert set(seen.values()) == {"locked"}, seen
    assert not list(cache.iterdir())


class _Killed(Exception):
    """Stands for a kill during the conversion (atomic_write cleans up after an exception; a kill cleans nothing)."""


def test_a_download_killed_while_converting_leaves_nothing_the_next_one_keeps(cut_chunk_url, cache, monkeypatch):
    """The converted checkpoint is written by atomic_write under its own temporary name (``..<name>.<random>
    .pt.partial.part``): a download killed while converting leaves it (a checkpoint's worth of bytes), and the next
    download removes it unless the download it belongs to still runs."""
    fcntl = pytest.importorskip("fcntl")
    import torch

    import longvos.download as download
    from longvos.checkpoints import write_checkpoint_file

    written = []

    def fetch(url, destination, **kwargs):
        destination.write_bytes(b"fetched")
        return "0" * 64, 7

    def convert(source, destination, name, family):
        write_checkpoint_file({"state_dict": {}}, destination)  # how _convert's save_model writes it

    def save(obj, path):
        written.append(Path(path).name)
        Path(path).write_bytes(b"half a checkpoint")
        raise _Killed

    monkeypatch.setattr(download, "fetch", fetch)
    monkeypatch.setattr(download, "_convert", convert)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(_Killed):
        download_checkpoint(MODEL, cut_chunk_url, progress=False)
    (leftover,) = written
    assert leftover.startswith(f"..{MODEL}.") and leftover.endswith(".pt.partial.part"), leftover
    owner = cache / f".{MODEL}.{leftover[len(MODEL) + 3:-len('.pt.partial.part')]}.pt.part"

    # Its download still runs (it holds the lock of its own .pt.part): both stay, however old.
    partial = _aged(cache / leftover)
    _aged(owner)
    with open(owner, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert download._remove_stale_temporaries(cache, MODEL) == []
    # Killed: both go; and so does one whose download file is gone already.
    assert sorted(download._remove_stale_temporaries(cache, MODEL)) == sorted([owner, partial])
    _aged(cache / leftover)
    assert download._remove_stale_temporaries(cache, MODEL) == [partial]
    # A fresh one stays (the moment between a download's start and its lock).
    _aged(cache / leftover, seconds=0)
    assert download._remove_stale_temporaries(cache, MODEL) == [] and partial.exists()


class _WindowsLikeOs:
    """``os`` as :mod:`longvos.download` sees it, except that a file it holds open cannot be deleted (Windows)."""

    def __init__(self):
        self.open_files: dict[int, Path] = {}

    def __getattr__(self, name):
        return getattr(os, name)

    def open(self, path, flags, *args):
        fd = os.open(path, flags, *args)
        self.open_files[fd] = Path(path)
        return fd

    def close(self, fd):
        self.open_files.pop(fd, None)
        os.close(fd)


def test_without_locks_a_stale_file_is_closed_before_it_is_deleted(cache, monkeypatch):
    """Where files cannot be locked (Windows), the cleanup tells a stale file by its age alone, and must close it
    before deleting it: Windows refuses to delete an open file."""
    import longvos.download as download
    import longvos.io.locks as locks

    cache.mkdir(parents=True)
    fake_os = _WindowsLikeOs()
    unlink = Path.unlink

    def windows_unlink(path, missing_ok=False):
        if path in fake_os.open_files.values():
            raise PermissionError(13, "The process cannot access the file because it is being used", str(path))
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(locks, "fcntl", None)
    monkeypatch.setattr(download, "os", fake_os)
    monkeypatch.setattr(Path, "unlink", windows_unlink)
    day = download.STALE_SECONDS_WITHOUT_LOCKS
    stale = [_aged(cache / f".{MODEL}.k1ll3d_x.download", seconds=2 * day),
             _aged(cache / f"..{MODEL}.k1ll3d_y.pt.partial.part", seconds=2 * day)]
    recent = _aged(cache / f".{MODEL}.running1.pt.part", seconds=day / 2)  # may be a running download's
    assert sorted(download._remove_stale_temporaries(cache, MODEL)) == sorted(stale)
    assert not any(path.exists() for path in stale) and recent.exists()
    assert fake_os.open_files == {}  # nothing left open


class _BusyLocks:
    """``fcntl`` whose locks are held by another process for the first ``busy`` tries."""

    LOCK_EX, LOCK_NB = 2, 4

    def __init__(self, busy: int):
        self.busy, self.tries = busy, 0

    def flock(self, fd, operation):
        self.tries += 1
        if self.tries <= self.busy:
            raise BlockingIOError(11, "Resource temporarily unavailable")


def test_a_lock_held_for_a_moment_is_waited_for_not_taken_for_a_file_system_without_locks(tmp_path, monkeypatch):
    """Another download's cleanup locks each temporary file it looks at, for a moment: a new download's own file may
    be among them. BlockingIOError is an OSError, but it means "held", not "no locks here"."""
    import longvos.download as download
    import longvos.io.locks as locks

    busy = _BusyLocks(3)
    monkeypatch.setattr(locks, "fcntl", busy)
    fd = os.open(tmp_path / "file", os.O_CREAT | os.O_RDWR)
    try:
        assert download._lock(fd) is True and busy.tries == 4
    finally:
        os.close(fd)


def test_a_lock_held_for_long_fails_the_download_in_one_line_and_leaves_nothing(cut_chunk_url, cache, monkeypatch,
                                                                                 capsys):
    import longvos.download as download
    import longvos.io.locks as locks

    monkeypatch.setattr(locks, "fcntl", _BusyLocks(10**9))
    monkeypatch.setattr(download, "LOCK_WAIT_SECONDS", 0.05)
    with pytest.raises(DownloadError, match="another longvos download of it is running"):  # its lock, first
        download_checkpoint(MODEL, cut_chunk_url, progress=False)
    assert [path.name for path in cache.iterdir()] == [f".{MODEL}.lock"]  # the (empty) lock file: "held" here
    assert main(["download", MODEL, "--url", cut_chunk_url, "--quiet"]) == 1
    line = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(line) == 1 and "another longvos download of it is running" in line[0], line


def test_a_second_download_of_a_checkpoint_waits_for_none_and_replaces_nothing(cut_chunk_url, cache, monkeypatch):
    """Two downloads of one checkpoint both converted, and the last to finish (one without --sha256) replaced the
    other's verified file: the second is refused while the first runs."""
    import longvos.download as download

    real_fetch, second = download.fetch, []

    def fetch(url, destination, **kwargs):
        with pytest.raises(DownloadError, match=f"{MODEL}: another longvos download of it is running") as caught:
            download_checkpoint(MODEL, cut_chunk_url, progress=False)
        second.append(str(caught.value))
        return real_fetch(url, destination, **kwargs)

    monkeypatch.setattr(download, "fetch", fetch)
    with pytest.raises(DownloadError, match="truncated"):
        download_checkpoint(MODEL, cut_chunk_url, progress=False)
    assert len(second) == 1 and not list(cache.iterdir())  # the lock went with the download


class _Trickle(socketserver.StreamRequestHandler):
    """Announces 100,000 bytes and sends one every 0.05 s."""

    def handle(self):
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n")
        try:
            for _ in range(100_000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:  # the client gave up
            pass


def test_a_trickling_server_is_given_up_at_the_minimum_rate(cache, monkeypatch):
    """Each read has a timeout, which a byte every few seconds never reaches: the download ran for days."""
    import longvos.download as download

    monkeypatch.setattr(download, "RATE_GRACE_SECONDS", 1)
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        with pytest.raises(DownloadError, match=r"too slow, \d+ bytes in \d+ s \(under 8 KiB/s after the first 1 s\)"):
            download_checkpoint(MODEL, f"http://127.0.0.1:{server.server_address[1]}/x.pth", progress=False)
        assert time.monotonic() - started < 10
    finally:
        server.shutdown()
        server.server_close()
    assert not list(cache.iterdir())


def test_an_error_quoting_a_server_cannot_drive_the_terminal(capsys):
    """A status line or a checkpoint key can carry escape sequences: the one line a command prints escapes them."""
    from longvos.cli.main import CommandError, error_message
    from longvos.io.errors import one_line

    reason = "Not Found \x1b[2J\x1b[1;31mPWNED\x1b[0m\rlongvos download: OK"
    for line in (one_line(DownloadError(f"http://x: HTTP 404 {reason}")), error_message(CommandError(reason))):
        assert "\x1b" not in line and "\r" not in line and "\\x1b[2J" in line, line
