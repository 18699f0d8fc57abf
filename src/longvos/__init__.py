"""longvos: semi-supervised video object segmentation on long videos in constant memory."""
__version__ = "0.1.0"
