"""`longvos download`: fetch (from a local HTTP server on 127.0.0.1: no test reaches the internet), verify, convert
and cache an official checkpoint, after which `--model NAME` runs without `--checkpoint`; corrupted, truncated,
oversized, mis-keyed or web-page downloads are refused with one line and leave nothing in the cache."""
from __future__ import annotations

import hashlib
import http.server
import re
import threading
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch

from longvos.cli.main import main
from longvos.models.aot.official import _LAYER_RENAMES, _MCA_SLOTS, _TOP_LEVEL_RENAMES, aot_key_from_official
from longvos.models.registry import create_model, list_models

from conftest import noise_clip

MODEL = "deaot-mnv2"  # the smallest model with official weights (13 M parameters)


# ------------------------------------------------------------------------------------------------------ fixtures
def official_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our AOT-family state_dict under the official aot-benchmark/MAVOS key names (the converter's rules inverted)."""
    layer_rules = sorted(((ours, official) for official, ours in _LAYER_RENAMES), key=lambda rule: -len(rule[0]))
    top_rules = sorted(((ours, official) for official, ours in _TOP_LEVEL_RENAMES), key=lambda rule: -len(rule[0]))
    slots = {ours: official for official, ours in _MCA_SLOTS.items()}
    official: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if match := re.fullmatch(r"propagation\.layers\.(\d+)\.(.+)", key):
            index, rest = match.groups()
            ours, theirs = next(rule for rule in layer_rules if rest.startswith(rule[0]))
            name = f"LSTT.layers.{index}.{theirs}{rest[len(ours):]}"
        elif match := re.fullmatch(r"memory_fusion\.layers\.(\d+)\.(key|value|id_value)\.(.+)", key):
            index, slot, rest = match.groups()
            name = f"long_term_memory_attention.{index}.{slots[slot]}.joint_modulation.{rest}"
        else:
            ours, theirs = next(rule for rule in top_rules if key.startswith(rule[0]))
            name = theirs + key[len(ours):]
        assert aot_key_from_official(name) == key, (name, key)
        official[name] = tensor.clone()
    return official


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``/truncated/<file>`` announces the whole file but sends half of it and hangs up."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path.startswith("/truncated/"):
            data = (Path(self.directory) / self.path.removeprefix("/truncated/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client that stops reading early is expected here
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A local HTTP server on 127.0.0.1 and the folder it serves: an official-layout checkpoint of a randomly
    initialised MODEL, and a web page. Returns (base URL, folder, our state_dict)."""
    folder = tmp_path_factory.mktemp("served")
    torch.manual_seed(1)
    ours = {key: value.clone() for key, value in create_model(MODEL).state_dict().items()}
    torch.save({"state_dict": official_layout(ours)}, folder / "R50_DeAOTL_PRE_YTB_DAV.pth")
    (folder / "page.html").write_text("<!DOCTYPE html><html><body>Virus scan warning</body></html>")
    server = _QuietServer(("127.0.0.1", 0), partial(_Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder, ours
    server.shutdown()
    server.server_close()


@pytest.fixture
def cache(checkpoint_cache) -> Path:
    return checkpoint_cache


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def assert_nothing_stored(cache: Path) -> None:
    assert not cache.exists() or not list(cache.iterdir()), list(cache.iterdir())


# --------------------------------------------------------------------------------------------------------- tests
def test_download_verifies_converts_caches_and_then_the_model_needs_no_checkpoint(served, cache, tmp_path, capsys):
    base, folder, ours = served
    source = folder / "R50_DeAOTL_PRE_YTB_DAV.pth"
    assert main(["download", MODEL, "--url", f"{base}/{source.name}", "--sha256", sha256_of(source).upper(),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "SHA-256 verified" in out and f"all {len(ours)} tensors matched" in out, out
    assert sorted(p.name for p in cache.iterdir()) == [f"{MODEL}.pt"]  # no temporary files left

    from longvos.engine.segmenter import load_segmenter

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no random-weights warning: the cached weights load
        segmenter = load_segmenter(MODEL, device="cpu")
    loaded = segmenter.model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in ours.items())

    frames, mask = noise_clip(tmp_path / "clip", 2, ext="jpg", box=(10, 30, 20, 40))
    code = main(["segment", str(frames), "--mask", str(mask), "--model", MODEL, "--out", str(tmp_path / "masks"),
                 "--max-size", "64", "--threads", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert len(list((tmp_path / "masks").glob("*.png"))) == 2


def test_a_local_file_downloads_too_and_an_unknown_checksum_is_printed(served, cache, capsys):
    _, folder, _ = served
    source = folder / "R50_DeAOTL_PRE_YTB_DAV.pth"
    assert main(["download", MODEL, "--url", str(source), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert sha256_of(source) in out and "none published" in out, out
    assert (cache / f"{MODEL}.pt").is_file()


def test_a_wrong_sha256_is_refused_in_one_line_and_stores_nothing(served, cache, capsys):
    base, folder, _ = served
    assert main(["download", MODEL, "--url", f"{base}/R50_DeAOTL_PRE_YTB_DAV.pth", "--sha256", "0" * 64,
                 "--quiet"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "SHA-256 mismatch" in line and "0" * 64 in line and "nothing stored" in line, line
    assert_nothing_stored(cache)


def test_a_truncated_download_is_refused_in_one_line_and_stores_nothing(served, cache, capsys):
    base, _, _ = served
    assert main(["download", MODEL, "--url", f"{base}/truncated/R50_DeAOTL_PRE_YTB_DAV.pth", "--quiet"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "truncated download" in line, line
    assert_nothing_stored(cache)


def test_a_truncated_file_without_a_checksum_is_refused_in_one_line(served, cache, tmp_path, capsys):
    _, folder, _ = served
    data = (folder / "R50_DeAOTL_PRE_YTB_DAV.pth").read_bytes()
    half = tmp_path / "half.pth"
    half.write_bytes(data[: len(data) // 2])
    assert main(["download", MODEL, "--url", half.as_uri(), "--quiet"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "not a readable checkpoint" in line and "nothing stored" in line, line
    assert_nothing_stored(cache)


def test_a_checkpoint_of_another_model_is_refused_naming_every_missing_key(served, cache, capsys):
    base, _, _ = served
    # DeAOT weights for MAVOS: the official loader would leave the 9 MCA blocks random; here nothing is stored.
    assert main(["download", "mavos-mnv2", "--url", f"{base}/R50_DeAOTL_PRE_YTB_DAV.pth", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "does not fit mavos-mnv2" in err and "180 missing" in err and "nothing stored" in err, err
    assert err.count("  missing: memory_fusion.layers.") == 180
    assert_nothing_stored(cache)


def test_a_web_page_and_an_oversized_file_are_refused(served, cache, capsys):
    base, _, _ = served
    assert main(["download", MODEL, "--url", f"{base}/page.html", "--quiet"]) == 1
    assert "web page, not a checkpoint" in one_line_error(capsys.readouterr().err)
    assert main(["download", MODEL, "--url", f"{base}/R50_DeAOTL_PRE_YTB_DAV.pth", "--max-mb", "1",
                 "--quiet"]) == 1
    assert "more than the limit" in one_line_error(capsys.readouterr().err)
    assert main(["download", MODEL, "--url", f"{base}/missing.pth", "--quiet"]) == 1
    assert "HTTP 404" in one_line_error(capsys.readouterr().err)
    assert_nothing_stored(cache)


def test_without_a_url_it_says_where_the_checkpoint_is_published(cache, capsys):
    assert main(["download", "mavos-r50"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "https://drive.google.com/file/d/1Hp-j0hNWesSBle6HQxm6ghJE9b1THn1I" in line
    assert "github.com/Amshaker/MAVOS" in line and "--url" in line, line
    assert main(["download", "mavos-lite"]) == 1
    assert "has no official checkpoint" in one_line_error(capsys.readouterr().err)
    assert main(["download", "no-such-model"]) == 1
    assert "unknown model" in one_line_error(capsys.readouterr().err)
    assert main(["download", MODEL, "--url", "ftp://example.invalid/x.pth"]) == 1
    assert "only http://" in one_line_error(capsys.readouterr().err)
    assert main(["download", MODEL, "--url", "x.pth", "--sha256", "abc"]) == 1
    assert_nothing_stored(cache)


def test_every_registered_model_with_official_weights_has_an_entry(cache, capsys):
    from longvos.download import OFFICIAL_CHECKPOINTS

    assert set(OFFICIAL_CHECKPOINTS) == set(list_models()) - {"mavos-lite"}
    for entry in OFFICIAL_CHECKPOINTS.values():
        assert entry.page.startswith("https://github.com/") and entry.link.startswith("https://")
    assert main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in OFFICIAL_CHECKPOINTS) and str(cache) in out


# -------------------------------------------------- a cache that cannot be written, malformed files: one line each
def test_an_unwritable_cache_is_refused_in_one_line(served, tmp_path, monkeypatch, capsys):
    _, folder, _ = served
    blocker = tmp_path / "a-file"  # a path under a regular file: no folder can be made there, even as root
    blocker.write_text("")
    monkeypatch.setenv("LONGVOS_HOME", str(blocker / "sub"))
    assert main(["download", MODEL, "--url", str(folder / "R50_DeAOTL_PRE_YTB_DAV.pth"), "--quiet"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert str(blocker) in line and "checkpoint cache" in line, line


def test_a_cache_folder_where_no_file_can_be_created_is_refused_in_one_line(served, cache, monkeypatch, capsys):
    import errno
    import tempfile

    _, folder, _ = served
    real_mkstemp = tempfile.mkstemp

    def refusing_mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == cache:
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refusing_mkstemp)
    assert main(["download", MODEL, "--url", str(folder / "R50_DeAOTL_PRE_YTB_DAV.pth"), "--quiet"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert str(cache) in line and "Permission denied" in line, line
    assert_nothing_stored(cache)


def test_a_full_disk_while_writing_is_refused_in_one_line_and_stores_nothing(served, cache, monkeypatch, capsys):
    import builtins
    import errno

    import longvos.download

    base, _, _ = served

    class FullDisk:
        def __init__(self, path, mode):
            self.file = builtins.open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(longvos.download, "open", FullDisk, raising=False)  # the module's `open`, not builtins'
    assert main(["download", MODEL, "--url", f"{base}/R50_DeAOTL_PRE_YTB_DAV.pth", "--quiet"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "No space left on device" in line and str(cache) in line and "nothing stored" in line, line
    assert_nothing_stored(cache)


def test_a_folder_in_the_way_of_the_cached_checkpoint_is_refused_in_one_line(served, cache, capsys):
    _, folder, _ = served
    (cache / f"{MODEL}.pt").mkdir(parents=True)  # os.replace cannot put a file there
    assert main(["download", MODEL, "--url", str(folder / "R50_DeAOTL_PRE_YTB_DAV.pth"), "--quiet"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert str(cache / f"{MODEL}.pt") in line and "nothing stored" in line, line
    assert [p.name for p in cache.iterdir()] == [f"{MODEL}.pt"]  # no temporary files left
    assert (cache / f"{MODEL}.pt").is_dir()


@pytest.mark.parametrize("content", ["list", "longvos-without-state-dict", "longvos-state-dict-not-a-dict"])
def test_a_malformed_checkpoint_is_refused_in_one_line_and_stores_nothing(content, cache, tmp_path, capsys):
    from longvos.checkpoints import FORMAT_MARKER, FORMAT_VERSION

    header = {FORMAT_MARKER: FORMAT_VERSION, "model": MODEL}
    obj = {"list": [1, 2, 3], "longvos-without-state-dict": header,  # KeyError, ValueError inside the loaders
           "longvos-state-dict-not-a-dict": {**header, "state_dict": "x"}}[content]
    path = tmp_path / "odd.pth"
    torch.save(obj, path)
    assert main(["download", MODEL, "--url", str(path), "--quiet"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "nothing stored" in line, line
    assert_nothing_stored(cache)


def test_download_errors_are_input_errors():
    from longvos.download import DownloadError
    from longvos.io.errors import InputError

    assert issubclass(DownloadError, InputError)
