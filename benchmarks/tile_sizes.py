"""Which tile size and overlap: accuracy, repeatability and cost of each on photos of a survey's size.

    python benchmarks/tile_sizes.py --data ../shared/data                          # 256:0.25 against 384:0.167
    python benchmarks/tile_sizes.py --data ../shared/data --tiles 256:0.25,384:0.167,512:0.125 --precision bf16

The validation photos are small (most under 640 px a side), so how a photo is cut into tiles hardly touches their
figures. Here every tile size runs on mosaics of them instead (`compare_controls.mosaics`: 3×3 validation photos of
one source and size laid edge to edge, 900+ px a side, their masks laid alike), with one engine for all (default
OpenVINO fp32, so that no int8 calibration per tile size enters the figures). Printed per TILE:OVERLAP: the tiles
run, crack F1, precision and recall pooled over the mosaics against their labels, the agreement (pooled F1) of the
masks of each mosaic and of its copy shifted by SHIFT px (compared where both are), the seconds taken, and the
false cracks on surfaces with no crack: crack pixels per megapixel of generated textured surface
(`synthetic.textured_background`, TEXTURE_PX² each, TEXTURE_SEEDS), at the model's threshold.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
from compare_controls import DEFAULT_DATA, mosaics

from crackseg.inference import CrackSegmenter
from crackseg.metrics import confusion, scores
from crackseg.synthetic import textured_background

SHIFT = (25, 40)  # px down and right: less than any tile, off the network's 32 px lattice
TEXTURE_PX, TEXTURE_SEEDS = 2000, (0, 1)


def score(segmenter: CrackSegmenter, made: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Label figures, shift agreement, tiles and seconds of one segmenter over the mosaics, and its false cracks on
    generated surfaces (`false_cracks`)."""
    labels, shifted, tiles = Counter(), Counter(), []

    def mask_of(photo: np.ndarray) -> np.ndarray:
        totals = []
        prob = segmenter.predict_prob(photo, progress=lambda done, total: totals.append(total))
        tiles.append(totals[0])  # the call's tile total, reported before its first batch
        return prob >= segmenter.threshold

    start = time.perf_counter()
    for photo, truth in made:
        mask = mask_of(photo)
        labels.update(confusion(mask, truth))
        dy, dx = SHIFT
        moved = mask_of(np.ascontiguousarray(photo[dy:, dx:]))
        shifted.update(confusion(moved, mask[dy:, dx:]))
    seconds = time.perf_counter() - start
    found = scores(labels["tp"], labels["fp"], labels["fn"])
    return {
        "texture": false_cracks(segmenter),
        "tiles": sum(tiles),
        "f1": found["f1"],
        "precision": found["precision"],
        "recall": found["recall"],
        "shift": scores(shifted["tp"], shifted["fp"], shifted["fn"])["f1"],
        "seconds": seconds,
    }


def false_cracks(segmenter: CrackSegmenter) -> float:
    """Crack pixels per megapixel the segmenter finds on generated surfaces without a crack."""
    found = 0
    for seed in TEXTURE_SEEDS:
        grey = textured_background(TEXTURE_PX, TEXTURE_PX, np.random.default_rng(seed)).astype(np.uint8)
        found += int((segmenter.predict_prob(np.repeat(grey[:, :, None], 3, axis=2)) >= segmenter.threshold).sum())
    return found / (len(TEXTURE_SEEDS) * TEXTURE_PX**2 / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", help="a shipped model (default: the default model)")
    parser.add_argument("--tiles", default="256:0.25,384:0.167", help="TILE:OVERLAP pairs, separated by commas")
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--limit", type=int, help="at most this many mosaics")
    args = parser.parse_args()
    made = mosaics(args.data, args.limit)
    print(f"{len(made)} mosaics, {min(min(p.shape[:2]) for p, _ in made)}+ px a side; shift {SHIFT} px")
    columns = ("tiles", 6), ("F1", 7), ("P", 7), ("R", 7), ("shift F1", 9), ("seconds", 8), ("texture", 8)
    print(f"{'tile:overlap':<14} " + " ".join(f"{name:>{width}}" for name, width in columns))
    for pair in args.tiles.split(","):
        tile, overlap = pair.split(":")
        segmenter = CrackSegmenter.from_pretrained(
            args.model, backend=args.backend, precision=args.precision, tile=int(tile), overlap=float(overlap)
        )
        r = score(segmenter, made)
        print(
            f"{pair:<14} {r['tiles']:>6} {r['f1']:>7.4f} {r['precision']:>7.4f} {r['recall']:>7.4f} "
            f"{r['shift']:>9.4f} {r['seconds']:>8.1f} {r['texture']:>8.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
