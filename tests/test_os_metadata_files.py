"""The files operating systems leave in any folder a user opens (``.DS_Store``, ``Thumbs.db``, ``desktop.ini``,
AppleDouble ``._*``) make no output folder "used": a `segment` folder, a batch folder (and its video folders) and an
eval folder (and its prediction folders) are resumed, rerun and overwritten as if they were not there, and no run
deletes them. The refusal lives in one place (``refuse_used_folder``); the output list (``logged_names``,
``log_outputs(once=True)``) is public and names each of eval's files once."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from longvos.engine.outputs import (OUTPUTS_FILE, clear_outputs, is_os_metadata, log_outputs, logged_names,
                                    prepare_output_folder, refuse_used_folder)
from longvos.io.errors import InputError

from conftest import noise_clip, tiny_davis_sequence

METADATA = {".DS_Store": b"finder", "Thumbs.db": b"explorer", "desktop.ini": b"[.ShellClassInfo]",
            "._00000.png": b"appledouble", "._.00001.partial.png": b"appledouble of a temporary file"}


def add_metadata(folder: Path) -> None:
    for name, data in METADATA.items():
        (folder / name).write_bytes(data)


def metadata_of(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in METADATA if (folder / name).is_file()}


def test_which_names_are_os_metadata():
    assert all(is_os_metadata(name) for name in [*METADATA, ".ds_store", "THUMBS.DB", "Desktop.ini", "._x"])
    assert not any(is_os_metadata(name) for name in ["DS_Store", "thumbs.db.png", "_x", ".x", "notes.txt"])


def test_os_metadata_files_do_not_make_a_folder_used(tmp_path):
    add_metadata(tmp_path)
    (tmp_path / "THUMBS.DB").write_bytes(b"")  # compared ignoring case
    refuse_used_folder(tmp_path, "advice")
    (tmp_path / "._folder").mkdir()  # a folder of that name is not the OS's file
    with pytest.raises(InputError, match=r"is not empty \(\._folder\): advice"):
        refuse_used_folder(tmp_path, "advice")


def test_overwrite_deletes_longvos_files_and_never_os_metadata(tmp_path):
    out = tmp_path / "out"
    (out / "objects" / "1").mkdir(parents=True)
    log_outputs(out, "00000.png", "objects/1/00000.png")
    for name in ("00000.png", "objects/1/00000.png", ".00001.partial.png"):
        (out / name).write_bytes(b"mask")
    add_metadata(out)
    add_metadata(out / "objects" / "1")
    with pytest.raises(InputError, match="not empty"):  # longvos's outputs are there: used, without --overwrite
        prepare_output_folder(out, overwrite=False)
    prepare_output_folder(out, overwrite=True)
    assert metadata_of(out) == METADATA and metadata_of(out / "objects" / "1") == METADATA
    assert not (out / "00000.png").exists() and not (out / ".00001.partial.png").exists()
    assert not (out / "objects" / "1" / "00000.png").exists() and not (out / OUTPUTS_FILE).exists()
    assert clear_outputs(out) == []  # nothing more to delete
    prepare_output_folder(out, overwrite=False)  # metadata only: a new run may start there


def test_log_outputs_once_names_each_file_once(tmp_path):
    assert logged_names(tmp_path) is None
    log_outputs(tmp_path, "a.png", "b.png", once=True)
    log_outputs(tmp_path, "b.png", "c.png", "c.png", once=True)
    log_outputs(tmp_path, once=True)
    assert logged_names(tmp_path) == ["a.png", "b.png", "c.png"]
    assert (tmp_path / OUTPUTS_FILE).read_text().count('"c.png"') == 1


# -- end to end: a batch resumed and overwritten, an eval rerun --------------------------------------------------

def test_a_batch_is_resumed_and_overwritten_beside_os_metadata(tmp_path, one_thread):
    from longvos.batch import BatchOptions, WorkItem, run_batch

    video, mask = noise_clip(tmp_path / "inputs", 3, folder="vid")
    items = [WorkItem("vid", str(video), str(mask))]
    options = BatchOptions(model="mavos-lite", allow_random_weights=True, max_size=32, threads=1)
    out = tmp_path / "out"

    def batch(**flags):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # random weights
            return run_batch(items, out, options, devices=["cpu"], workers=1, progress=False, **flags)

    assert [r.status for r in batch().results] == ["done"]
    add_metadata(out)
    add_metadata(out / "vid")
    resumed = batch(resume=True)
    assert [(r.status, r.reason) for r in resumed.results] == [("skipped", resumed.results[0].reason)]
    assert [r.status for r in batch(overwrite=True).results] == ["done"]
    assert metadata_of(out) == METADATA and metadata_of(out / "vid") == METADATA


def test_an_eval_rerun_beside_os_metadata_keeps_them(tmp_path, capsys, one_thread):
    from longvos.cli.main import main

    data = tiny_davis_sequence(tmp_path / "data", frames=3)
    out = tmp_path / "out"

    def run_eval() -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # random weights
            return main(["eval", str(data), "--model", "mavos-lite", "--max-size", "0", "--out", str(out), "-j", "1",
                         "--quiet"])

    assert run_eval() == 0, capsys.readouterr().err
    listed = (out / OUTPUTS_FILE).read_text()
    add_metadata(out)
    add_metadata(out / "predictions" / "seq")
    assert run_eval() == 0, capsys.readouterr().err
    assert metadata_of(out) == METADATA and metadata_of(out / "predictions" / "seq") == METADATA
    assert (out / OUTPUTS_FILE).read_text() == listed  # each of eval's files listed once, the OS's files never
