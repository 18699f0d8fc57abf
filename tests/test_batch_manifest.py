"""Batch manifests: CSV (with and without a header), JSONL and DAVIS-layout roots; relative paths; per-row faults
that fail only their row; and faults of the whole file that stop before anything runs."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from longvos.batch import ManifestError, read_manifest
from longvos.cli.main import main


def test_csv_with_header_resolves_paths_against_the_manifest_folder(tmp_path):
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "videos.csv"
    manifest.write_text("\ufeffVideo,mask,frame,name\n"  # a spreadsheet's BOM and capitalised header
                        "../clips/a.mp4,../masks/a.png,,\n"
                        "# a comment line\n"
                        "\n"
                        "/data/b,/masks/b7.png,7,bee\n")
    first, second = read_manifest(manifest)
    assert (first.name, first.video, first.mask, first.frame) == (
        "a", str(tmp_path / "clips" / "a.mp4"), str(tmp_path / "masks" / "a.png"), 0)
    assert (second.name, second.video, second.mask, second.frame) == ("bee", "/data/b", "/masks/b7.png", 7)
    assert first.origin == "videos.csv line 2" and second.origin == "videos.csv line 5"
    assert first.problem is None and second.problem is None


def test_csv_without_header_and_jsonl_give_the_same_items(tmp_path):
    (tmp_path / "plain.csv").write_text("clips/a.mp4,masks/a.png\nclips/frames,masks/f3.png,3\n")
    (tmp_path / "rows.jsonl").write_text('{"video": "clips/a.mp4", "mask": "masks/a.png"}\n\n'
                                         '{"video": "clips/frames", "mask": "masks/f3.png", "frame": 3}\n')
    from_csv, from_jsonl = read_manifest(tmp_path / "plain.csv"), read_manifest(tmp_path / "rows.jsonl")
    assert [(i.name, i.video, i.mask, i.frame) for i in from_csv] == \
           [(i.name, i.video, i.mask, i.frame) for i in from_jsonl]
    assert [i.name for i in from_csv] == ["a", "frames"] and from_csv[1].frame == 3


def test_row_faults_fail_only_their_row(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join([
        '{"video": "a.mp4", "mask": "a.png"}',
        '{"video": "b.mp4", "mask": "b.png", "frame": -1}',
        '{"video": "c.mp4"}',
        'not json',
        '{"video": "d.mp4", "mask": "d.png", "mask_path": "x"}',
        '["e.mp4", "e.png"]',
        '{"video": "other/a.mp4", "mask": "a2.png"}',
        '{"video": "f.mp4", "mask": "f.png", "name": "../escape"}',
        '{"video": "g.mp4", "mask": "g.png", "frame": "2"}',
    ]))
    items = read_manifest(manifest)
    problems = {item.origin: item.problem for item in items}
    assert problems["m.jsonl line 1"] is None and problems["m.jsonl line 9"] is None
    assert items[-1].frame == 2
    assert "frame must be a frame index" in problems["m.jsonl line 2"]
    assert problems["m.jsonl line 3"] == "no mask given"
    assert problems["m.jsonl line 4"].startswith("not valid JSON")
    assert "unknown key(s) mask_path" in problems["m.jsonl line 5"]
    assert "expected an object" in problems["m.jsonl line 6"]
    assert "same output folder 'a' as m.jsonl line 1" in problems["m.jsonl line 7"]
    assert "must be a plain folder name" in problems["m.jsonl line 8"]


def test_csv_with_too_many_values_in_a_row(tmp_path):
    (tmp_path / "m.csv").write_text("video,mask\na.mp4,a.png,4\n")
    (item,) = read_manifest(tmp_path / "m.csv")
    assert item.problem == "3 values but 2 columns (video, mask)"


@pytest.mark.parametrize("name, text, message", [
    ("m.txt", "a.mp4,a.png", "a manifest is a .csv or .jsonl file"),
    ("m.csv", "video,masks\na.mp4,a.png\n", "unknown column(s) masks"),
    ("m.csv", "name,video\nx,a.mp4\n", "no 'mask' column"),
    ("m.csv", "# nothing but a comment\n", "lists no videos"),
    ("m.jsonl", "", "lists no videos"),
])
def test_whole_file_faults_stop_before_anything_runs(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(tmp_path / name)


def test_missing_manifest_and_a_folder_that_is_not_davis(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "absent.csv")
    with pytest.raises(ManifestError, match="not a DAVIS-layout folder"):
        read_manifest(tmp_path)


def test_davis_layout_starts_each_sequence_at_its_first_annotation(dev_dir, tmp_path):
    root = tmp_path / "davis"
    for sequence, frames, annotated in [("car-shadow", range(4), [0, 2]), ("blackswan", range(1, 4), [2])]:
        (root / "JPEGImages" / sequence).mkdir(parents=True)
        (root / "Annotations" / sequence).mkdir(parents=True)
        for index in frames:
            shutil.copy(dev_dir / "JPEGImages" / sequence / f"{index:05d}.jpg", root / "JPEGImages" / sequence)
        for index in annotated:
            shutil.copy(dev_dir / "Annotations" / sequence / f"{index:05d}.png", root / "Annotations" / sequence)
    (root / "JPEGImages" / "unannotated").mkdir()
    items = read_manifest(root)
    assert [i.name for i in items] == ["blackswan", "car-shadow", "unannotated"]  # natural order
    swan, car, bare = items
    assert swan.frame == 1 and Path(swan.mask).name == "00002.png"  # frames 00001.. : 00002 is index 1
    assert car.frame == 0 and Path(car.mask).name == "00000.png" and car.video == str(root / "JPEGImages/car-shadow")
    assert bare.problem.startswith("no annotation in")


def test_cli_reports_a_bad_manifest_in_one_line(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("video,masks\na.mp4,a.png\n")
    code = main(["batch", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("longvos batch: error: ") and "unknown column(s) masks" in err
    assert len(err.splitlines()) == 1
    code = main(["batch", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--model", "mavos-mnv9"])
    assert code == 1 and "unknown model 'mavos-mnv9'" in capsys.readouterr().err
