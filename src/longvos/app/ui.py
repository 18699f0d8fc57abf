"""The page, in Gradio: 1. upload a video; 2. mark objects on its first frame (a box from two corner clicks, clicks
on (+) and off (-) an object, a typed box, or a mask PNG), object after object; 3. segment, with a progress bar;
4. watch the overlay video and download the masks as a zip.

Each browser session keeps two small values between events: its job id and its :class:`~longvos.app.marks.Marks`.
Every mark turns into the first-frame mask at once, through the shared prompt code (GrabCut, as behind
``segment --box``), written to the job's ``prompt.png``: the file the run starts from, and the preview shows. Each
object's GrabCut result is kept (:class:`ForegroundCache`, keyed by the object's marks), so an edit runs GrabCut for
the object it changed only; GrabCut itself works on a copy of the frame of about 1 MP at most. Marks
are drawn on the first frame decoded at upload (``first.png``): a click never decodes the video. A change of the
marks, and the start of a run, clear the results of an earlier run from the page. The uploaded video is never sent
back to its own component (Gradio would probe it, and re-encode it where ffmpeg is installed).
Errors reach the page as one line naming no server path (:func:`~longvos.app.workspace.public_message`), and no
uploaded file name is ever shown, used as a file name or echoed (Gradio renders error text as HTML).
"""
from __future__ import annotations

import functools
import html
import inspect
import re
import secrets
import shutil
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from longvos.app.marks import BOX, NEGATIVE, POSITIVE, Marks, draw_marks
from longvos.app.runner import JobRunner
from longvos.app.workspace import Job, Workspace, image_size, public_message
from longvos.io.errors import InputError, LongvosError
from longvos.io.masks import read_index_mask, write_index_png
from longvos.io.writer import atomic_write
from longvos.prompts import ObjectPrompt, compose_mask, object_foreground, parse_box, scaled_for_grabcut

MAX_MASK_BYTES = 64 << 20
#: Objects an uploaded mask may hold (PNG ids go to 254). Each object costs the model a pass on every frame -- the
#: default mavos-lite runs one object per pass, with its own memory -- so this bounds a run's time and memory.
MAX_MASK_OBJECTS = 64
#: GrabCut results kept for the objects of all sessions (one bit a pixel: an 8K frame's object takes 4 MiB), so that
#: a click runs GrabCut for the object it edits only; the least recently used go first.
FOREGROUND_CACHE_BYTES = 128 << 20
#: Events that decode frames or run GrabCut (memory-heavy) run one at a time, across all sessions, in the order they
#: came; more wait in the queue. One at a time also keeps a session's marks in order: Gradio would otherwise run two
#: quick clicks of one session at once, and the second would start from the marks before the first.
IMAGE_WORK_LIMIT = 1
_MASK_FILE = re.compile(r"mask-[0-9a-f]{16}\.png")
TOOLS = [("Box: click two corners", BOX), ("+ click: on the object", POSITIVE), ("− click: not the object", NEGATIVE)]
#: System fonts only: Gradio's default theme loads its fonts from Google, and the app must work with no network.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
CSS = "#first-frame img { cursor: crosshair; }"


class AppPage:
    """The Gradio Blocks of the app and the handlers behind them."""

    def __init__(self, workspace: Workspace, runner: JobRunner):
        self.workspace, self.runner = workspace, runner
        self.foregrounds = ForegroundCache(FOREGROUND_CACHE_BYTES)

    # -- layout ---------------------------------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="longvos: segment objects in a video", analytics_enabled=False) as blocks:
            job_id = gr.State(None, delete_callback=self.workspace.discard)  # its session ended: delete its files
            marks = gr.State(Marks())
            gr.Markdown("# longvos\nSegment objects through a whole video: mark them on the first frame, the "
                        "model follows them.")
            with gr.Row():
                with gr.Column():
                    video = gr.Video(label="1. Video", sources=["upload"], include_audio=True,
                                     elem_id="video-input")
                    upload_status = gr.Markdown(elem_id="upload-status")
                with gr.Column():
                    frame = gr.Image(label="2. Mark the objects on the first frame", interactive=False,
                                     buttons=[], elem_id="first-frame")
                    tool = gr.Radio(TOOLS, value=BOX, label="Tool", elem_id="tool")
                    with gr.Row():
                        new_object = gr.Button("New object", elem_id="new-object")
                        undo = gr.Button("Undo", elem_id="undo")
                        clear = gr.Button("Clear all", elem_id="clear")
                    with gr.Row():
                        box_text = gr.Textbox(label="or type a box: x0,y0,x1,y1", elem_id="box-text", scale=3)
                        set_box = gr.Button("Set box", elem_id="set-box", scale=1)
                    mask_file = gr.File(label="or upload a first-frame mask (index PNG)", file_types=[".png"],
                                        elem_id="mask-input")
                    prompt_status = gr.Markdown(elem_id="prompt-status")
                    objects = gr.Markdown(elem_id="objects")
                    command = gr.Textbox(label="Same first mask as", interactive=False, visible=False,
                                         elem_id="segment-command")
            run = gr.Button("3. Segment the video", variant="primary", elem_id="run")
            run_status = gr.Markdown(elem_id="run-status")
            with gr.Row():
                overlay = gr.Video(label="4. Overlay", interactive=False, elem_id="overlay")
                download = gr.DownloadButton("Download masks (zip of PNGs)", visible=False, elem_id="download-masks")

            result_outputs = [run_status, overlay, download]
            prompt_outputs = [marks, frame, prompt_status, objects, command, *result_outputs]
            image_work = {"concurrency_limit": IMAGE_WORK_LIMIT, "concurrency_id": "image-work",
                          "api_visibility": "undocumented"}
            video.upload(self._page_errors(self.upload_video), [job_id, video], [job_id, video, upload_status,
                                                                         *prompt_outputs],
                         api_name="upload_video", **image_work)
            frame.select(self._page_errors(self.click), [job_id, marks, tool], prompt_outputs, api_name="click",
                         **image_work)
            set_box.click(self._page_errors(self.type_box), [job_id, marks, box_text], prompt_outputs,
                          api_name="set_box", **image_work)
            mask_file.upload(self._page_errors(self.upload_mask), [job_id, marks, mask_file],
                             [mask_file, *prompt_outputs], api_name="upload_mask", **image_work)
            for button, edit in ((new_object, Marks.new_object), (undo, Marks.undo), (clear, _cleared)):
                button.click(self._page_errors(functools.partial(self.edit, edit)), [job_id, marks], prompt_outputs,
                             api_name=button.elem_id.replace("-", "_"), **image_work)
            run.click(self._page_errors(self.segment), [job_id], result_outputs, api_name="segment",
                      concurrency_limit=1, concurrency_id="segment", api_visibility="undocumented")
        return blocks

    # -- handlers -------------------------------------------------------------------------------------------------

    def upload_video(self, previous_job_id: str | None, upload: str | None) -> tuple[Any, ...]:
        self.workspace.discard(previous_job_id)  # one video per session: the earlier one's files go
        if upload is None:  # the upload was cleared
            return (None, gr.skip(), "", Marks(), None, "", "", gr.update(visible=False), *_no_results())
        job = self.workspace.create_job(upload)
        marks = Marks()
        return (job.id, gr.skip(), f"{job.describe()}. Now mark the objects on the first frame.",
                *self._show(job, marks), *_no_results())

    def click(self, job_id: str | None, marks: Marks, tool: str, event: gr.SelectData) -> tuple[Any, ...]:
        job = self.workspace.job(job_id)
        try:
            x, y = (int(round(float(v))) for v in event.index)
        except (TypeError, ValueError, OverflowError):  # a crafted request: not two finite numbers
            raise InputError(f"a click is two numbers (x, y), got {event.index!r:.80}") from None
        if not (0 <= x < job.width and 0 <= y < job.height):
            raise InputError(f"the click ({x}, {y}) is outside the {job.width}x{job.height} frame")
        edited = marks.click(x, y, tool)
        if edited.objects == marks.objects and edited.mask_file == marks.mask_file:
            return (*self._show(job, edited), *_unchanged_results())  # a box's first corner: the mask is unchanged
        return self._apply(job, edited)

    def type_box(self, job_id: str | None, marks: Marks, text: str) -> tuple[Any, ...]:
        job = self.workspace.job(job_id)
        try:
            box = parse_box(text or "")
        except InputError:  # its message quotes the text: never echoed (error text is rendered as HTML)
            raise InputError("a box is four numbers x0,y0,x1,y1 in pixels, with x0 < x1 and y0 < y1") from None
        return self._apply(job, marks.set_box(box))

    def edit(self, edit: Callable[[Marks], Marks], job_id: str | None, marks: Marks) -> tuple[Any, ...]:
        job, edited = self.workspace.job(job_id), edit(marks)
        if edited is marks:  # nothing to undo, an object with no marks yet: the mask is unchanged
            return (*self._show(job, marks), *_unchanged_results())
        return self._apply(job, edited)

    def upload_mask(self, job_id: str | None, marks: Marks, upload: str | None) -> tuple[Any, ...]:
        """A first-frame mask PNG, validated like ``segment --mask`` validates one; its size is read from its
        header and must be the video's before a pixel is decoded. It replaces the marks (Undo brings them back)."""
        job = self.workspace.job(job_id)
        if upload is None:
            return (None, *self._show(job, marks), *_unchanged_results())
        path = self.workspace.upload_path(upload)  # a file this server received, or refused untouched
        try:
            if path.stat().st_size > MAX_MASK_BYTES:
                raise InputError(f"the mask is over {MAX_MASK_BYTES >> 20} MiB; a mask is a PNG the size of the video")
            width, height = image_size(path, "the mask")
            if (height, width) != (job.height, job.width):
                raise InputError(f"the mask is {width}x{height} but the video is {job.width}x{job.height}")
            mask = read_index_mask(path, (job.height, job.width), what="the video")
            objects = np.count_nonzero(np.bincount(mask.ids.ravel())[1:])
            if objects > MAX_MASK_OBJECTS:
                raise InputError(f"the mask holds {objects} objects; the app segments at most {MAX_MASK_OBJECTS} "
                                 f"(`longvos segment` takes more)")
        except InputError as err:  # it may name Gradio's copy of the file: name "the mask" instead
            self.workspace.drop_upload(path)
            raise InputError(str(err).replace(str(path), "the mask")) from None
        name = f"mask-{secrets.token_hex(8)}.png"  # one file per upload: Undo brings back the one it used
        self.workspace.adopt_upload(path, job.folder / name)
        edited = marks.from_mask_file(name)
        kept = edited.mask_files()
        for old in job.folder.glob("mask-*.png"):  # masks no step of the undo chain uses any more
            if old.name not in kept:
                old.unlink(missing_ok=True)
        return (None, *self._apply(job, edited))

    def segment(self, job_id: str | None, progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, ...]]:
        """Clears the results of an earlier run first (they stay cleared if this one fails), then runs."""
        job = self.workspace.job(job_id)
        yield _no_results()
        progress(0, desc="Segmenting")
        summary = self.runner.run(job, lambda fraction, stage: progress(fraction, desc=stage))
        yield (f"Done: {summary.frames} frames in {summary.seconds:.1f} s ({summary.fps:.1f} frames/s).",
               str(job.overlay_path), gr.update(value=str(job.zip_path), visible=True))

    # -- the first-frame mask and its preview ---------------------------------------------------------------------

    def _apply(self, job: Job, marks: Marks) -> tuple[Any, ...]:
        """Make the first-frame mask of ``marks`` (the uploaded file's, or GrabCut's from the marks) the job's
        ``prompt.png``, and show it; the results of an earlier run, made from another mask, are cleared."""
        if marks.mask_file is not None:
            if not _MASK_FILE.fullmatch(marks.mask_file):
                raise InputError("the uploaded mask is not on the server any more; upload it again")
            shutil.copyfile(job.folder / marks.mask_file, job.prompt_path)
        else:
            prompts, object_ids = marks.prompts()
            if prompts:
                ids = self._prompt_mask(job, prompts, object_ids)
                atomic_write(job.prompt_path, lambda path: write_index_png(path, ids))
            else:
                job.prompt_path.unlink(missing_ok=True)
        return (*self._show(job, marks), *_no_results())

    def _prompt_mask(self, job: Job, prompts: list[ObjectPrompt], object_ids: list[int]) -> np.ndarray:
        """What :func:`~longvos.prompts.prompt_mask` makes of ``prompts`` on the first frame, with GrabCut run only
        for the objects whose marks have no result in :attr:`foregrounds` yet."""
        shape = (job.height, job.width)
        image = small = None
        foregrounds = []
        for prompt, object_id in zip(prompts, object_ids):
            foreground = self.foregrounds.get((job.id, prompt), shape)
            if foreground is None:
                if image is None:  # the frame, and GrabCut's smaller copy of it, once per event
                    image = _first_frame(job)
                    small = scaled_for_grabcut(image)
                foreground = object_foreground(image, prompt, object_id, small=small)
                self.foregrounds.put((job.id, prompt), foreground)
            foregrounds.append(foreground)
        return compose_mask(shape, foregrounds, object_ids)

    def _show(self, job: Job, marks: Marks) -> tuple[Any, ...]:
        """The updates of the marking panel: the marks, the preview image, the status line, the list of objects and
        the command (without the results)."""
        mask = read_index_mask(job.prompt_path, allow_empty=True) if job.prompt_path.is_file() else None
        picture = draw_marks(_first_frame(job), None if mask is None else mask.ids, marks,
                             None if mask is None else mask.palette)
        for old in job.folder.glob("preview-*.png"):  # the page has loaded it already; only the newest is kept
            old.unlink(missing_ok=True)
        preview = job.folder / f"preview-{secrets.token_hex(4)}.png"  # a new URL: the browser never shows a stale one
        Image.fromarray(picture).save(preview, compress_level=1)
        command = marks.segment_command()
        return (marks, str(preview), marks.describe(), marks.listing(),
                gr.update(value=command or "", visible=command is not None))

    # -- errors ---------------------------------------------------------------------------------------------------

    def _page_errors(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """``handler`` (a function or a generator function) with every error turned into one line for the page
        (:class:`gr.Error`): the message of a library error, an unexpected one only by its type (the server's log has
        the traceback)."""

        def page_error(err: Exception) -> gr.Error:
            if isinstance(err, (LongvosError, OSError, ValueError)):
                message = public_message(err, self.workspace)
            else:  # a bug: the page gets one line, the log the details
                traceback.print_exc(file=sys.stderr)
                message = f"internal error ({type(err).__name__}); the server's log has the details"
            return gr.Error(html.escape(message, quote=False), print_exception=False)

        if inspect.isgeneratorfunction(handler):
            @functools.wraps(handler)
            def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
                try:
                    yield from handler(*args, **kwargs)
                except Exception as err:  # noqa: BLE001 - see page_error
                    raise page_error(err) from None

            return generator

        @functools.wraps(handler)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - see page_error
                raise page_error(err) from None

        return wrapped


class ForegroundCache:
    """GrabCut results (boolean arrays, kept one bit a pixel) by key (a job and an object's marks), at most
    ``max_bytes`` of them; the least recently used go first. Shared by the sessions (thread-safe)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.size = max_bytes, 0
        self._entries: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, shape: tuple[int, int]) -> np.ndarray | None:
        with self._lock:
            packed = self._entries.get(key)
            if packed is None:
                return None
            self._entries.move_to_end(key)
        return np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)

    def put(self, key: Any, foreground: np.ndarray) -> None:
        packed = np.packbits(foreground, axis=None)
        if packed.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            self.size -= 0 if old is None else old.nbytes
            self._entries[key] = packed
            self.size += packed.nbytes
            while self.size > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.size -= dropped.nbytes

    def __len__(self) -> int:
        return len(self._entries)


def _first_frame(job: Job) -> np.ndarray:
    """The first frame, as decoded at upload."""
    with Image.open(job.first_frame_path) as image:
        return np.asarray(image.convert("RGB"))


def _cleared(marks: Marks) -> Marks:
    return Marks(previous=marks)


def _no_results() -> tuple[Any, ...]:
    return "", None, gr.update(value=None, visible=False)


def _unchanged_results() -> tuple[Any, ...]:
    return gr.skip(), gr.skip(), gr.skip()

