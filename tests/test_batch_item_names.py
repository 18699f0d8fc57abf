"""A batch item's name is one plain folder under --out on every system: checked with both path flavours (so these
run on Linux too), a name that Windows would read as a drive, a device, or a name it silently changes is refused in
one line; names of the batch's own files (the whole ``.longvos`` namespace, the summary's temporary name as
``atomic_write`` really names it) and of the files operating systems leave in folders are refused too."""
from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest

from longvos.batch.items import RECORD_START, SUMMARY_FILE, SUMMARY_PARTIAL, WorkItem, name_problem, output_folder
from longvos.engine.outputs import RECORD_PREFIX
from longvos.io.errors import InputError
from longvos.io.writer import atomic_write, partial_path

REFUSED_ON_WINDOWS = [
    "c:evil", "C:", "d:..", "a<b", "a>b", "a:b", 'a"b', "a|b", "a?b", "a*b",  # a drive, characters Windows refuses
    "a\tb", "a\nb", "\x1f", "a\x7fb", "a\x85b",  # control characters
    "bad.", "bad ", "...", " . ",  # Windows drops a trailing dot or space: "bad." would be the folder "bad"
    "CON", "con", "Prn", "aux.txt", "NUL.tar.gz", "nul .txt", "COM1", "com9.mp4", "LPT1", "lpt9", "COM¹", "conin$",
]
ACCEPTED = ["bike", "bike-1", "a.b", "été", "console", "com10", "lpt", "CONX", "nul-x.txt", " lead", "a b", "longvos",
            "longvos-x", "x.longvos-y", ".hidden", "_x"]


@pytest.mark.parametrize("name", REFUSED_ON_WINDOWS)
def test_names_windows_would_not_keep_inside_the_folder_are_refused(name):
    problem = name_problem(name)
    assert problem is not None and problem.startswith(f"name {name!r} must be a plain folder name ("), problem
    assert "\n" not in problem.replace(repr(name), "")  # one line (a name holding a line break is shown as its repr)
    with pytest.raises(InputError, match="must be a plain folder name"):
        output_folder(PureWindowsPath(r"D:\out"), WorkItem(name, "v.mp4", "m.png"))


@pytest.mark.parametrize("name", ACCEPTED)
def test_plain_names_are_accepted_and_stay_inside_on_both_flavours(name):
    assert name_problem(name) is None
    for out in (PurePosixPath("/data/out"), PureWindowsPath(r"D:\out")):
        joined = out / name
        assert joined.parent == out and joined.name == name


def test_a_drive_relative_name_would_escape_on_windows():
    """Why a name with a drive is refused: joined onto a Windows folder it leads to another drive."""
    assert (PureWindowsPath(r"D:\out") / "c:evil").drive == "c:"
    assert "no drive" in name_problem("c:evil")


def test_separators_and_dot_names_keep_their_message():
    for name in ("../escaped", "a/b", "a\\b", "a\0b", "", ".", ".."):
        assert name_problem(name) == f"name {name!r} must be a plain folder name"


@pytest.mark.parametrize("name", [".longvos-progress.json", ".LONGVOS-outputs", ".longvos-anything", ".longvos",
                                  ".longvosX", ".Longvos.d"])
def test_the_whole_longvos_record_namespace_is_refused(name):
    """Records are ``.longvos-*``; a name beginning ``.longvos`` without the dash is refused as well, so that no
    video folder can pass for a record whatever a later record is called."""
    assert RECORD_START == RECORD_PREFIX  # one prefix, from longvos.engine.outputs
    assert "taken by the batch's own files" in name_problem(name)


def test_the_summary_s_temporary_name_is_the_one_atomic_write_uses(tmp_path):
    used = []
    atomic_write(tmp_path / SUMMARY_FILE, lambda temporary: (used.append(temporary.name), temporary.write_text("x")))
    assert used == [SUMMARY_PARTIAL] == [partial_path(SUMMARY_FILE).name]
    assert "taken by the batch's own files" in name_problem(SUMMARY_PARTIAL.upper())


@pytest.mark.parametrize("name", [".DS_Store", "Thumbs.db", "DESKTOP.INI", "._bike"])
def test_names_of_os_metadata_files_are_refused(name):
    assert "operating systems leave" in name_problem(name)


def test_output_folder_joins_an_accepted_name(tmp_path):
    assert output_folder(tmp_path, WorkItem("bike", "v.mp4", "m.png")) == Path(tmp_path) / "bike"
