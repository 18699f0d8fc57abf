"""`longvos download`: a chunked body cut short is a DownloadError naming the URL (never a bare IncompleteRead), and
the temporary files a killed download left in the cache are removed by the next download of the same checkpoint,
never those a running download holds. Servers run on 127.0.0.1: no test reaches the internet."""
from __future__ import annotations

import fcntl
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
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LONGVOS_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "checkpoints"


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
    assert sorted(name.rsplit(".", 1)[-1] for name in seen) == ["download", "part"]
    assert set(seen.values()) == {"locked"}, seen
    assert not list(cache.iterdir())
