"""The published protocol's inputs: what SCSegamba's test and evaluation scripts do to a photo, its ground truth
and the network's output before counting (github.com/Karl1109/SCSegamba: test.py and eval/evaluate.py, read in the
fork whu-lyh/SCSegamba, and the crack dataset class under datasets/, read in public copies of it).

- the photo is resized to 512×512 bicubically (cv2.INTER_CUBIC), whatever its size and aspect;
- the ground truth likewise (bicubic too, not nearest), then a pixel is a crack when its resized 0/255 value is
  above 127;
- the prediction is divided by its own maximum and stored as an 8-bit PNG (×255, rounded, clipped), which the
  evaluation reads back, so only 256 levels reach the thresholds. The script divides its network's raw output
  (logits; negative ones become 0 in the PNG); crackseg's models give probabilities, and those are divided.
The counting itself is `metrics.paper_sweep_counts`.
"""

from __future__ import annotations

import cv2
import numpy as np

from crackseg.metrics import paper_sweep_counts

PAPER_SIZE = 512  # both sides, as the script's --load_width / --load_height


def paper_image(image: np.ndarray) -> np.ndarray:
    """The photo as the protocol feeds it to the network: 512×512, bicubic."""
    return cv2.resize(image, (PAPER_SIZE, PAPER_SIZE), interpolation=cv2.INTER_CUBIC)


def paper_truth(mask: np.ndarray) -> np.ndarray:
    """The ground truth as the protocol scores against it: the 0/255 mask resized bicubically, then > 127."""
    values = np.where(np.asarray(mask, bool), 255, 0).astype(np.uint8)
    return cv2.resize(values, (PAPER_SIZE, PAPER_SIZE), interpolation=cv2.INTER_CUBIC) > 127


def paper_levels(prob: np.ndarray) -> np.ndarray:
    """The prediction divided by its own maximum, as the 8-bit map the script writes (all 0 when nothing is
    predicted: the script's 0/0 becomes 0 in the PNG too). Rounds half to even, as OpenCV's conversion does."""
    prob = np.asarray(prob, np.float64)
    peak = prob.max()
    if not peak > 0:
        return np.zeros(prob.shape, np.uint8)
    return np.clip(np.rint(255 * prob / peak), 0, 255).astype(np.uint8)


def paper_counts(segmenter, image: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """One photo's (100, 4) sweep counts under the protocol; `truth` is already `paper_truth`."""
    return paper_sweep_counts(paper_levels(segmenter.predict_prob(paper_image(image))), truth)
