"""The web app (``longvos app``, the ``app`` extra: Gradio): upload a video, mark objects, segment, watch, download.

    from longvos.app.server import LongvosApp
    from longvos.engine.options import SegmentOptions
    app = LongvosApp(SegmentOptions(model=longvos.load_segmenter("mavos-lite")), port=7860)
    print(app.launch())   # serves on a background thread; app.close() stops it and deletes its work folder

Modules: ``server`` (launch and stop, the limits), ``ui`` (the Gradio page and its handlers), ``marks`` (boxes and
clicks -> prompts, drawn), ``runner`` (a job through ``segment_video``), ``workspace`` (the work folder, its quota),
``guard`` (host, origin, route, body-size and response-header checks around all of Gradio's app). Only ``server`` and ``ui`` import Gradio.
"""
