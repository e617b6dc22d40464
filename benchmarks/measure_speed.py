"""Time `crackseg.measure.measure` on a 4000×3000 mask with a realistic crack network.

    python benchmarks/measure_speed.py [--height 3000] [--width 4000] [--cracks 6] [--fragments 0] [--repeat 3]

The network: a few long meandering cracks that start at the image border, each throwing off shorter
branches, with widths wandering between 2 and 12 px along each crack, drawn with OpenCV. `--fragments N` adds N
short cracks (1–6 steps, no branches) scattered over the image, as a photo's segmentation leaves them; `--cracks 0
--fragments 150` is such a photo's sparse mask.
Prints the mask's make-up, the measurement's summary and the time per call (wall and CPU).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from crackseg.measure import measure


def walk(mask, rng, start, heading, width, steps, branch_rate, depth=0) -> None:
    """Draw one crack as a random walk of 25-px steps whose width drifts; it may throw off branches."""
    point = np.asarray(start, float)
    for _ in range(steps):
        heading += rng.normal(0, 0.25)
        width = float(np.clip(width + rng.normal(0, 0.6), 2, 12))
        nxt = point + 25 * np.array([np.cos(heading), np.sin(heading)])
        cv2.line(mask, tuple(np.round(point).astype(int)), tuple(np.round(nxt).astype(int)), 1, round(width))
        point = nxt
        if depth < 2 and rng.random() < branch_rate:
            side = rng.choice([-1, 1]) * rng.uniform(0.6, 1.3)
            walk(mask, rng, point, heading + side, width * 0.6, int(steps * 0.3), branch_rate, depth + 1)


def crack_network(
    height: int = 3000, width: int = 4000, n_cracks: int = 6, seed: int = 0, fragments: int = 0
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    for _ in range(n_cracks):
        start = rng.uniform([0, 0], [width, height])
        heading = np.arctan2(height / 2 - start[1], width / 2 - start[0]) + rng.normal(0, 0.5)
        walk(mask, rng, start, heading, rng.uniform(4, 12), int(rng.integers(60, 140)), branch_rate=0.04)
    for _ in range(fragments):
        start, heading = rng.uniform([0, 0], [width, height]), rng.uniform(0, 2 * np.pi)
        walk(mask, rng, start, heading, rng.uniform(2, 6), int(rng.integers(1, 7)), branch_rate=0.0)
    return mask.astype(bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--cracks", type=int, default=6, help="main cracks (each throws off branches)")
    parser.add_argument("--fragments", type=int, default=0, help="short cracks scattered over the image")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    mask = crack_network(args.height, args.width, args.cracks, fragments=args.fragments)
    print(f"mask {args.width}×{args.height}, crack pixels {mask.mean():.2%}")
    measure(mask[:512, :512])  # warm-up: imports and first-call costs stay out of the timing
    walls, cpus = [], []
    for _ in range(args.repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = measure(mask, pixel_size_mm=0.2)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    print(f"summary: {result.summary()}")
    print(f"classes: {sorted({c.crack_class for c in result.cracks})}")
    print(f"measure: {min(walls):.2f} s wall (best of {args.repeat}), {min(cpus):.2f} s CPU")


if __name__ == "__main__":
    main()
