"""Redraw the demo's first-frame mask, `src/longvos/assets/bigbuckbunny-mask-00000.png`, from its outline.

The outline below was traced by eye on frame 0 of the Big Buck Bunny clip (zoomed 4x with a 20-pixel grid): both
ears, the raised fist and the forearm behind it up to the rock, the body down to the grass and the outstretched hand.
GrabCut then moves the edge to the image's own edges within 5 pixels of the outline (the dark burrow makes the ears'
edges sharp there), and the largest connected part is kept.

    python scripts/make_demo_mask.py [--out PATH]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import av
import cv2
import numpy as np

from longvos.cli.demo import FIRST_FRAME_MASK, sample_video
from longvos.io.masks import write_index_png

#: (x, y) in the 1280x720 frame, clockwise from the tip of the bunny's left ear (the one on the image's left).
OUTLINE = [
    (301, 256), (310, 259), (318, 266), (326, 278), (334, 292), (340, 305), (345, 320), (347, 335), (349, 348),
    (360, 350), (375, 350), (380, 345), (382, 335), (386, 322), (392, 305), (400, 292), (410, 282), (420, 275),
    (430, 270), (432, 276), (428, 290), (422, 305), (414, 322), (405, 338), (396, 352),  # right ear, down its back
    (398, 365), (401, 380), (403, 400), (410, 420), (420, 445), (432, 470), (445, 490), (465, 505), (490, 512),
    (510, 520), (522, 530), (520, 542), (505, 546),  # the right arm to the fingertips
    (480, 552), (465, 560), (445, 562), (432, 556), (425, 545), (418, 530), (400, 520), (370, 516), (335, 512),
    (305, 498), (275, 475), (250, 462), (238, 452),  # the hand's underside and the body along the grass
    (238, 430), (242, 400), (246, 370), (247, 340), (240, 322), (230, 304), (222, 290),  # along the rock
    (232, 289), (248, 294), (262, 302), (276, 315), (292, 320), (302, 330), (308, 314), (302, 292), (299, 272),
]
#: How far (pixels) GrabCut may move the outline.
BAND = 5


def first_frame_rgb() -> np.ndarray:
    with av.open(str(sample_video())) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def demo_mask(frame_rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W]: 1 on the bunny, 0 elsewhere."""
    outline = np.zeros(frame_rgb.shape[:2], np.uint8)
    cv2.fillPoly(outline, [np.array(OUTLINE, np.int32)], 1)
    kernel = np.ones((2 * BAND + 1, 2 * BAND + 1), np.uint8)
    labels = np.full(outline.shape, cv2.GC_BGD, np.uint8)
    labels[cv2.dilate(outline, kernel) > 0] = cv2.GC_PR_BGD
    labels[outline > 0] = cv2.GC_PR_FGD
    labels[cv2.erode(outline, kernel) > 0] = cv2.GC_FGD
    cv2.setRNGSeed(0)  # GrabCut's colour models start from k-means: fixed seed, same mask on every run
    cv2.grabCut(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR), labels, None, np.zeros((1, 65)), np.zeros((1, 65)), 8,
                cv2.GC_INIT_WITH_MASK)
    bunny = np.isin(labels, [cv2.GC_FGD, cv2.GC_PR_FGD]).astype(np.uint8)
    count, parts, stats, _ = cv2.connectedComponentsWithStats(bunny)
    return (parts == 1 + np.argmax(stats[1:, cv2.CC_STAT_AREA])).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=FIRST_FRAME_MASK)
    args = parser.parse_args()
    mask = demo_mask(first_frame_rgb())
    write_index_png(args.out, mask)
    print(f"{args.out}: {int(mask.sum())} pixels of bunny")


if __name__ == "__main__":
    main()
