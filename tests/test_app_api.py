"""The web app's events without a browser (a Gradio client, one session each), on a short real clip (mavos-lite with
fixed random weights, 64 px): a box gives exactly the PNGs `segment_video(boxes=...)` writes (the code behind
`segment --box`), an uploaded mask exactly those of `segment_video(mask)` with its palette kept; Undo brings back the
mask uploaded before; results of an earlier run are cleared when the marks change and when a run starts; the
progress bar follows the frames and stays below 100% until the zip is written; marking never decodes the video
again; clear one-line errors; and the `longvos app` command serves the page and stops cleanly."""
from __future__ import annotations

import io
import signal
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from longvos.engine.pipeline import segment_video
from longvos.io.masks import write_index_png
from longvos.io.palette import DAVIS_PALETTE
from longvos.io.video import open_video

from conftest import APP_MAX_SIZE, app_client, app_file, optional_import, serving_app, start_app

optional_import("gradio", "pip install 'longvos[app]'")
pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def app(app_segmenter):
    with serving_app(app_segmenter) as running:
        yield running


def app_error(call) -> str:
    """The message an event failed with, as the page shows it."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as error:
        call()
    return str(error.value)


def zipped_pngs(done: tuple) -> dict[str, bytes]:
    """The PNGs in the zip a finished segmentation offers for download, by entry name."""
    with zipfile.ZipFile(io.BytesIO(app_file(done[2]))) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def written_pngs(folder: Path) -> dict[str, bytes]:
    """The PNGs `segment_video` wrote into ``folder``, named as in the app's zip."""
    return {f"masks/{path.name}": path.read_bytes() for path in sorted(folder.glob("*.png"))}


def box_around(mask: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()) - margin, int(ys.min()) - margin, int(xs.max()) + margin, int(ys.max()) + margin


def no_results(outputs) -> bool:
    """Whether the result outputs (the last three: status, overlay, download) of an event are cleared."""
    status, overlay, download = outputs[-3:]
    return status == "" and overlay is None and download.get("value") is None and download.get("visible") is False


def test_a_box_gives_the_pngs_of_segment_box(app, app_segmenter, app_swan_clip, app_swan_mask, tmp_path,
                                             monkeypatch):
    import gradio as gr
    from gradio_client import handle_file

    sent_back = []  # videos sent to a page component: Gradio probes each, and re-encodes some where ffmpeg is
    postprocess = gr.Video.postprocess
    monkeypatch.setattr(gr.Video, "postprocess", lambda self, value: (sent_back.append(value),
                                                                      postprocess(self, value))[1])
    client = app_client(app)
    uploaded = client.predict(handle_file(str(app_swan_clip)), api_name="/upload_video")
    assert uploaded[1].startswith("6 frames, 320x180, 24 fps")
    assert [value for value in sent_back if value is not None] == []  # never sent back to its own component
    assert app_error(lambda: client.predict(api_name="/segment")) == (
        "mark at least one object on the first frame (a box, clicks or a mask file)")

    box = box_around(app_swan_mask, 6)
    marked = client.predict(",".join(map(str, box)), api_name="/set_box")
    assert marked[1] == "1 object ready; marking object 1."
    assert marked[2] == f"1. box {','.join(map(str, box))} (being marked)"
    assert marked[3]["value"] == f"longvos segment video.mp4 --box {','.join(map(str, box))} --out masks/"

    done = client.predict(api_name="/segment")
    assert done[0].startswith("Done: 6 frames")
    segment_video(app_swan_clip, None, tmp_path / "cli", model=app_segmenter, max_size=APP_MAX_SIZE, boxes=[box],
                  progress=False)
    got, expected = zipped_pngs(done), written_pngs(tmp_path / "cli")
    assert sorted(got) == sorted(expected) and len(got) == 6
    assert got == expected  # byte for byte

    (tmp_path / "overlay.mp4").write_bytes(app_file(done[1]))
    with open_video(tmp_path / "overlay.mp4") as overlay:
        assert len(overlay) == 6 and overlay.frame_size == (180, 320)
    assert [Path(value).name for value in sent_back if value is not None] == ["overlay.mp4"]


def test_the_app_takes_no_state_snapshots(app_segmenter, app_swan_clip, tmp_path, monkeypatch):
    """The web app never resumes a run, so it never pays for snapshots, whatever the options it was given."""
    import longvos.app.runner as runner
    from longvos.app.workspace import Workspace
    from longvos.engine.options import SegmentOptions

    workspace = Workspace(tmp_path)
    upload = workspace.root / ("ab" * 32) / "clip.mp4"
    upload.parent.mkdir()
    upload.write_bytes(app_swan_clip.read_bytes())
    job = workspace.create_job(upload)
    write_index_png(job.prompt_path, np.zeros((job.height, job.width), np.uint8) + 1)
    calls = []

    def recording_segment_video(video, masks, out_dir, options, **kwargs):
        calls.append(options)
        raise RuntimeError("stop here")

    monkeypatch.setattr(runner, "segment_video", recording_segment_video)
    job_runner = runner.JobRunner(workspace, SegmentOptions(model=app_segmenter, snapshot_every=10))
    with pytest.raises(RuntimeError, match="stop here"):
        job_runner.run(job)
    assert len(calls) == 1 and calls[0].snapshot_every == 0 and calls[0].progress is False
    assert calls[0].model is app_segmenter


def test_undo_brings_back_the_mask_uploaded_before(app, app_swan_clip, app_swan_mask, tmp_path):
    from gradio_client import handle_file

    client = app_client(app)
    client.predict(handle_file(str(app_swan_clip)), api_name="/upload_video")
    other = np.zeros_like(app_swan_mask)
    other[20:90, 30:150] = 2
    write_index_png(tmp_path / "swan.png", app_swan_mask)
    write_index_png(tmp_path / "other.png", other)
    previews = []  # the mask drawn over the first frame (only the newest preview is kept on the server)
    for mask in ("swan.png", "other.png"):
        previews.append(app_file(client.predict(handle_file(str(tmp_path / mask)), api_name="/upload_mask")[1]))
    undone = client.predict(api_name="/undo")
    assert undone[1] == "The first-frame mask is the uploaded file. Marking the frame replaces it."
    assert app_file(undone[0]) == previews[0] != previews[1]


def test_results_are_cleared_when_the_marks_change_and_when_a_run_starts(app, app_swan_clip, app_swan_mask,
                                                                         monkeypatch):
    import longvos.app.runner as runner
    from gradio_client import handle_file

    client = app_client(app)
    client.predict(handle_file(str(app_swan_clip)), api_name="/upload_video")
    box = ",".join(map(str, box_around(app_swan_mask, 6)))
    client.predict(box, api_name="/set_box")
    done = client.predict(api_name="/segment")
    assert done[0].startswith("Done: 6 frames") and done[2]["visible"] is True
    assert no_results(client.predict("10,10,80,80", api_name="/set_box"))  # a new mask: the results are stale
    client.predict(box, api_name="/set_box")
    assert client.predict(api_name="/segment")[0].startswith("Done: 6 frames")

    def failing_segment_video(*_args, **_kwargs):
        raise runner.InputError("the model ran out of patience")

    monkeypatch.setattr(runner, "segment_video", failing_segment_video)
    job = client.submit(api_name="/segment")
    assert app_error(job.result) == "the model ran out of patience"
    assert [no_results(outputs) for outputs in job.outputs()] == [True]  # the earlier run's results went first


def test_the_progress_bar_follows_the_frames_and_the_zip(app, app_swan_clip, app_swan_mask, monkeypatch):
    import longvos.app.runner as runner
    from gradio_client import handle_file

    real_segment_video, real_zip_masks = runner.segment_video, runner.zip_masks
    zip_written_during = []

    def slow_segment_video(*args, on_frame, **kwargs):
        def slower(frame, result):
            time.sleep(0.3)
            on_frame(frame, result)

        return real_segment_video(*args, on_frame=slower, **kwargs)

    def slow_zip_masks(job):
        time.sleep(1.0)
        zip_written_during.append(job.zip_path.exists())
        real_zip_masks(job)

    monkeypatch.setattr(runner, "segment_video", slow_segment_video)
    monkeypatch.setattr(runner, "zip_masks", slow_zip_masks)
    client = app_client(app)
    client.predict(handle_file(str(app_swan_clip)), api_name="/upload_video")
    client.predict(",".join(map(str, box_around(app_swan_mask, 6))), api_name="/set_box")
    job = client.submit(api_name="/segment")
    seen = []
    while not job.done():
        for unit in job.status().progress_data or []:
            if (unit.desc, unit.progress) not in seen:
                seen.append((unit.desc, unit.progress))
        time.sleep(0.02)
    assert job.result()[0].startswith("Done: 6 frames") and zip_written_during == [False]
    frames = [(desc, fraction) for desc, fraction in seen if desc.startswith("Segmenting: frame")]
    assert len(frames) >= 3, seen
    for desc, fraction in frames:
        done = int(desc.split()[2])
        assert desc == f"Segmenting: frame {done} of 6" and fraction == pytest.approx(done / 7), seen
    assert seen[-1] == ("Writing the zip of the masks", pytest.approx(6 / 7)), seen  # not 100% before the zip


def test_marking_never_decodes_the_video_again(app, app_swan_clip, monkeypatch):
    from gradio_client import handle_file

    from longvos.io.video import VideoFileSource

    client = app_client(app)
    client.predict(handle_file(str(app_swan_clip)), api_name="/upload_video")

    def no_decoding(*_args, **_kwargs):
        raise AssertionError("the video was opened again to mark its first frame")

    for method in ("_build_index", "_decode_range", "__init__"):
        monkeypatch.setattr(VideoFileSource, method, no_decoding)
    assert client.predict("40,30,200,150", api_name="/set_box")[1] == "1 object ready; marking object 1."
    assert client.predict(api_name="/new_object")[1] == "1 object ready; marking object 2."
    assert client.predict(api_name="/undo")[1] == "1 object ready; marking object 1."


def test_an_uploaded_mask_keeps_its_palette_and_gives_the_pngs_of_segment_video(app, app_segmenter, app_swan_clip,
                                                                                 app_swan_mask, tmp_path):
    from gradio_client import handle_file

    client = app_client(app)
    client.predict(handle_file(str(app_swan_clip)), api_name="/upload_video")
    palette = DAVIS_PALETTE.copy()
    palette[1] = (250, 200, 0)
    write_index_png(tmp_path / "first.png", app_swan_mask, palette)
    write_index_png(tmp_path / "small.png", app_swan_mask[::2, ::2], palette)
    assert app_error(lambda: client.predict(handle_file(str(tmp_path / "small.png")), api_name="/upload_mask")) == (
        "the mask is 160x90 but the video is 320x180")
    crowd = np.zeros_like(app_swan_mask)
    crowd[:, :65] = np.arange(65)  # objects 1..64 in the first 65 columns, then one more
    write_index_png(tmp_path / "crowd.png", crowd)
    assert client.predict(handle_file(str(tmp_path / "crowd.png")), api_name="/upload_mask")[2].startswith(
        "The first-frame mask is the uploaded file")  # 64 objects: the most the app takes
    crowd[0, 100] = 65
    write_index_png(tmp_path / "crowd.png", crowd)
    assert app_error(lambda: client.predict(handle_file(str(tmp_path / "crowd.png")), api_name="/upload_mask")) == (
        "the mask holds 65 objects; the app segments at most 64 (`longvos segment` takes more)")
    marked = client.predict(handle_file(str(tmp_path / "first.png")), api_name="/upload_mask")
    assert marked[2] == "The first-frame mask is the uploaded file. Marking the frame replaces it."

    done = client.predict(api_name="/segment")
    segment_video(app_swan_clip, tmp_path / "first.png", tmp_path / "direct", model=app_segmenter,
                  max_size=APP_MAX_SIZE, progress=False)
    got = zipped_pngs(done)
    assert got == written_pngs(tmp_path / "direct") and len(got) == 6
    with zipfile.ZipFile(io.BytesIO(app_file(done[2]))) as archive, archive.open("masks/00003.png") as png:
        from PIL import Image

        assert Image.open(png).getpalette()[3:6] == [250, 200, 0]


def test_bad_input_gets_one_line_errors(app, app_swan_clip, tmp_path):
    from gradio_client import handle_file

    client = app_client(app)
    assert app_error(lambda: client.predict("10,10,50,50", api_name="/set_box")) == "upload a video first"
    (tmp_path / "notes.mp4").write_text("hello")
    message = app_error(lambda: client.predict(handle_file(str(tmp_path / "notes.mp4")), api_name="/upload_video"))
    assert message.startswith("the video: cannot open video") and "/" not in message and "\n" not in message

    client.predict(handle_file(str(app_swan_clip)), api_name="/upload_video")
    assert app_error(lambda: client.predict("400,10,500,90", api_name="/set_box")) == (
        "box (400, 10, 500, 90) for object 1: smaller than 4 px inside the 320x180 frame")
    assert app_error(lambda: client.predict("<b>1,2</b>", api_name="/set_box")) == (
        "a box is four numbers x0,y0,x1,y1 in pixels, with x0 &lt; x1 and y0 &lt; y1")  # escaped: rendered as HTML
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a PNG after all")
    message = app_error(lambda: client.predict(handle_file(str(tmp_path / "broken.png")), api_name="/upload_mask"))
    assert message.startswith("the mask: cannot read mask") and "/" not in message and "\n" not in message


def test_the_app_command_serves_the_page_and_stops_on_sigterm(tmp_path, tmp_path_factory):
    from conftest import seeded_checkpoint

    process, line = start_app(["-m", "longvos"], tmp_path / "tmp", "--checkpoint",
                              str(seeded_checkpoint(tmp_path_factory)))
    try:
        url = line.split()[3]
        with urllib.request.urlopen(url, timeout=30) as response:
            page = response.read().decode()
        assert '"title":"longvos: segment objects in a video"' in page  # the page title, in Gradio's config
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "stopped" in process.stderr.read()
        assert list((tmp_path / "tmp").iterdir()) == []
    finally:
        process.kill()
        process.wait()


def test_without_gradio_the_command_says_how_to_install_it(monkeypatch, capsys):
    import importlib.util

    from longvos.cli.main import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "gradio"
                        else find_spec(name, *args))
    assert main(["app", "--port", "0"]) == 1
    assert capsys.readouterr().err == "longvos app: error: longvos app needs Gradio: pip install 'longvos[app]'\n"
