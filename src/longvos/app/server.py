"""``LongvosApp``: the Gradio page served with the app's limits, and its clean stop.

What it guarantees (``tests/test_app_*.py`` check each):

- it listens on 127.0.0.1 unless ``allow_remote`` (it has no login: anyone who reaches the port can use it), and
  answers only requests addressed to a loopback name (with ``allow_remote``, also to the bound address and
  ``public_names``); changes from another site's page are refused, and only the routes the page uses are served
  (:mod:`longvos.app.guard`, which wraps all of Gradio's app, Gradio's own middleware included);
- uploads are at most ``max_upload_bytes`` each, other request bodies 1 MiB, and every file the app and Gradio
  write lies in the work folder (:mod:`longvos.app.workspace`), under its disk quota; :meth:`LongvosApp.close`
  deletes it, also where a job did not stop in time;
- Gradio's queue runs one segmentation at a time (``concurrency_limit=1``) and one image event at a time (frame
  decoding, GrabCut: ``IMAGE_WORK_LIMIT``), and holds at most ``max_queue`` waiting events (more are refused: "queue
  full"); each run is stopped after ``max_minutes``;
- no telemetry, no call to the network: Gradio's analytics are off (``GRADIO_ANALYTICS_ENABLED=False`` before Gradio
  is imported, and ``analytics_enabled=False``), so is the Hugging Face Hub's telemetry
  (``HF_HUB_DISABLE_TELEMETRY``, and ``HF_HUB_OFFLINE`` unless set); the theme uses system fonts (Gradio's default
  downloads Google fonts); no share link, no server-side rendering, PWA, MCP server or run history, no footer links
  to gradio.app;
- errors reach the page as one line naming no server path.

The environment is changed only while an app is open (from :class:`LongvosApp` to :meth:`~LongvosApp.close`, which
puts it back; importing this module changes nothing). Gradio reads its cache folder from the environment
(``GRADIO_TEMP_DIR``), so a process serves one app at a time; some of its modules keep the folder they saw first,
and :meth:`~LongvosApp.launch` points them at this app's work folder. Matplotlib's folder (``MPLCONFIGDIR``, unless
set) is put in the work folder too.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from longvos.app.guard import RemoteNotAllowed, RequestGuard, is_loopback
from longvos.app.workspace import MAX_VIDEO_FRAMES, Workspace
from longvos.engine.options import SegmentOptions

#: Gradio sends usage statistics by default, and its analytics go through the Hugging Face Hub's telemetry: both off,
#: before Gradio (and huggingface_hub, which read these once) are imported. The app never needs the Hub.
OFFLINE_ENVIRONMENT = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
#: Gradio modules that keep the cache folder they saw when first imported (``GRADIO_TEMP_DIR``) as
#: ``DEFAULT_TEMP_DIR``: a second app in one process would write there, outside its own work folder.
GRADIO_TEMP_DIR_MODULES = ("gradio.route_utils", "gradio.routes", "gradio.screen_recording_utils", "gradio.mcp")


class LongvosApp:
    """The app for ``options`` (a :class:`~longvos.engine.options.SegmentOptions` whose ``model`` is a loaded
    Segmenter, shared by every run). :meth:`launch` serves it; :meth:`close` stops it and deletes the work folder.

    ``workdir`` is where the work folder is made (default: the system's temporary folder); ``quota_bytes`` bounds
    its size, ``max_jobs`` the videos it keeps, ``max_frames`` their length. A non-loopback ``host`` needs
    ``allow_remote=True``; requests are then answered when addressed to a loopback name, the bound ``host`` (unless
    it is every interface) or one of ``public_names`` (the names or addresses users reach the app by).
    """

    def __init__(self, options: SegmentOptions, *, host: str = "127.0.0.1", port: int = 7860,
                 workdir: str | Path | None = None, max_jobs: int = 20, quota_bytes: int = 20 << 30,
                 max_upload_bytes: int = 4 << 30, max_queue: int = 16, max_minutes: float | None = 60.0,
                 max_frames: int = MAX_VIDEO_FRAMES, allow_remote: bool = False, public_names: Iterable[str] = (),
                 verbose: bool = False):
        if not allow_remote and not is_loopback(host):
            raise RemoteNotAllowed(f"{host or 'every interface'} is not a loopback address: anyone who can reach "
                                   f"it could use the app (it has no login); allow that explicitly "
                                   f"(allow_remote=True, `longvos app --allow-remote`)")
        self.host, self.port, self.allow_remote, self.verbose = host, port, allow_remote, verbose
        self.public_names = tuple(public_names)
        self.max_upload_bytes, self.max_queue = max_upload_bytes, max_queue
        self.workspace = Workspace(workdir, quota_bytes=quota_bytes, max_jobs=max_jobs, max_video_frames=max_frames)
        # Where Gradio keeps uploads and its cache, and where Matplotlib (which Gradio imports for every event,
        # where it is installed) writes its font cache and config: the work folder, not the home folder.
        environment = {**OFFLINE_ENVIRONMENT, "GRADIO_TEMP_DIR": str(self.workspace.root)}
        if "HF_HUB_OFFLINE" not in os.environ:
            environment["HF_HUB_OFFLINE"] = "1"
        if "MPLCONFIGDIR" not in os.environ:
            environment["MPLCONFIGDIR"] = str(self.workspace.root / "matplotlib")
        self._environment_before = {name: os.environ.get(name) for name in environment}  # put back by close()
        os.environ.update(environment)
        try:
            from longvos.app.runner import JobRunner
            from longvos.app.ui import THEME, CSS, AppPage  # imports Gradio

            self._point_gradio_at_the_work_folder()
            self.runner = JobRunner(self.workspace, options, None if not max_minutes else max_minutes * 60)
            self.blocks = AppPage(self.workspace, self.runner).build()
            self._theme, self._css = THEME, CSS
        except BaseException:
            self.workspace.remove()
            self._restore_environment()
            raise
        self.url: str | None = None
        self._closed = False

    def launch(self) -> str:
        """Start serving (on a background thread); returns the page's URL."""
        port = self.port or _free_port(self.host)  # Gradio cannot report a port the system picked
        self.blocks.queue(max_size=self.max_queue, default_concurrency_limit=1)
        self._point_gradio_at_the_work_folder()
        settings = {"workspace": self.workspace, "allow_remote": self.allow_remote, "host": self.host,
                    "public_names": self.public_names, "max_upload_bytes": self.max_upload_bytes,
                    "verbose": self.verbose}
        guarded = []

        @contextlib.asynccontextmanager
        async def guard_everything(app):
            # Starlette builds the app's middleware (Gradio's CORS and compression among it) for the lifespan
            # event, which uvicorn sends before it listens: wrapped here, the guard sees every request first.
            app.middleware_stack = RequestGuard(app.middleware_stack or app.build_middleware_stack(), **settings)
            guarded.append(app)
            yield

        try:
            self.blocks.launch(server_name=self.host, server_port=port, prevent_thread_lock=True, quiet=True,
                               share=False, inbrowser=False, show_error=False, ssr_mode=False, pwa=False,
                               mcp_server=False, enable_monitoring=False, footer_links=[], run_history=False,
                               max_file_size=self.max_upload_bytes, app_kwargs={"lifespan": guard_everything},
                               theme=self._theme, css=self._css)
        except OSError as err:
            raise OSError(f"cannot listen on {self.host}:{port}: {err.strerror or err}") from None
        host = self.host.strip("[]")
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        app = self.blocks.server_app
        if guarded != [app] or not isinstance(app.middleware_stack, RequestGuard):
            self.close()  # never serve without the guard
            raise RuntimeError("longvos app: the request guard could not be put in front of Gradio's app")
        self._point_gradio_at_the_work_folder()
        return self.url

    def close(self, timeout: float = 30.0) -> None:
        """Stop: cancel the running job (it stops after the frame it is on; waited for at most ``timeout``
        seconds), stop serving, and delete the work folder (also where the job did not stop in time: its writes
        then fail)."""
        if self._closed:
            return
        self._closed = True
        stopped = self.runner.stop(timeout)
        if not stopped:
            print(f"longvos app: warning: the running job did not stop within {timeout:g} s; its files are deleted "
                  f"anyway", file=sys.stderr)
        if self.url is not None:
            self.blocks.close(verbose=False)
        for attempt in range(5):  # a job still running may add a file while the folder is deleted
            self.workspace.remove()
            if not self.workspace.root.exists():
                break
            time.sleep(0.1 * (attempt + 1))
        self._restore_environment()

    def _point_gradio_at_the_work_folder(self) -> None:
        """Point the Gradio modules that keep the cache folder they saw first (maybe another app's, deleted since)
        at this app's work folder, and delete the folder Gradio makes for its "vibe editing" routes whenever it
        makes an app (the guard does not serve them)."""
        for name in GRADIO_TEMP_DIR_MODULES:
            module = sys.modules.get(name)
            if module is not None and hasattr(module, "DEFAULT_TEMP_DIR"):
                module.DEFAULT_TEMP_DIR = str(self.workspace.root)
        with contextlib.suppress(OSError):
            (self.workspace.root / "vibe_edit_history").rmdir()

    def _restore_environment(self) -> None:
        for name, value in self._environment_before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family) as probe:
        probe.bind((host.strip("[]"), 0))
        return probe.getsockname()[1]
