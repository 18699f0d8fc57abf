"""The web app (``longvos app``): upload a video, mark objects, segment, watch and download, in a browser.

    from longvos import load_model
    from longvos.app import AppServer
    server = AppServer(load_model("mavos-lite"), port=7860)
    server.serve_forever()
"""
from __future__ import annotations

from longvos.app.server import AppServer

__all__ = ["AppServer"]
