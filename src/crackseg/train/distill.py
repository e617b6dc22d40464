"""A teacher's probability maps of every training photo, made once and kept beside the runs, so that a smaller
student can be trained on the labels and on the teacher's soft targets (`TrainConfig.teacher_maps`)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from crackseg.data import Pair, soft_target_path
from crackseg.io.atomic import atomic_write_bytes
from crackseg.io.images import encode_image, read_image

# The teacher is also run on the photo enlarged 2×: there thin cracks are several pixels wide, so the mean of the
# two maps keeps more of the hairlines the teacher half-sees at the photo's own scale.
TEACHER_SCALES = (1.0, 2.0)


def teacher_map(segmenter, image: np.ndarray, scales=TEACHER_SCALES) -> np.ndarray:
    """The mean crack probability over `scales` (flip TTA at scale 1, as the segmenter is set), at the image's size."""
    height, width = image.shape[:2]
    maps = []
    for scale in scales:
        if scale == 1:
            maps.append(segmenter.predict_prob(image))
            continue
        big = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_CUBIC)
        tta, segmenter.tta = segmenter.tta, False  # the enlarged pass is the costly one: no flips there
        try:
            prob = segmenter.predict_prob(big)
        finally:
            segmenter.tta = tta
        maps.append(cv2.resize(prob, (width, height), interpolation=cv2.INTER_AREA))
    return np.mean(maps, axis=0)


def write_teacher_maps(segmenter, pairs: list[Pair], out: str | Path, scales=TEACHER_SCALES) -> int:
    """Write `out/SOURCE/NAME.png` (8-bit probability) for each pair that has none yet; returns how many were made.
    Each file is written atomically, so an interrupted run resumes where it stopped."""
    made = 0
    for pair in tqdm(pairs, desc="teacher maps", mininterval=30):
        path = soft_target_path(Path(out), pair)
        if path.exists():
            continue
        prob = teacher_map(segmenter, read_image(pair.image), scales)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, encode_image(np.round(prob * 255).astype(np.uint8), ".png"))
        made += 1
    return made
