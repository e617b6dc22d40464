"""How do models fare on validation photos changed in ways the validation split does not show?

    python benchmarks/robustness_check.py --weights unet-r18 pspnet-r18 runs/NAME/best --limit 60
    python benchmarks/robustness_check.py --weights unet-r18 --scales 0.5 0.35 --backend openvino --precision bf16
    python benchmarks/robustness_check.py --weights unet-lite0 runs/NAME/best --hard --backend openvino

Each validation photo (split of `--split-seed`, as `evaluate --split-val`) gets `--distractors` generated straight
dark lines, road markings or stains (`crackseg.synthetic.add_distractor`, seeded per image, the same for every
model) and is scored against its unchanged mask. Printed per model: dataset-level crack F1 and precision at the
model's stored threshold on the clean and on the distracted photos, and how many predicted crack pixels the
distractors added (as a share of the true crack pixels). The distractors come from the same generator as
`train --distractor-prob`, so a model trained with it is tested on its own augmentation: this checks that the
augmentation did what it is meant to, not how a model fares on real markings and shadows.

`--hard`: also the photos with as many of the hard negatives instead (sealed joints, cast-shadow edges, tined
grooves, bolts and panel edges: `synthetic.DISTRACTOR_KINDS` beyond the classic three), as `train --distractors
all` draws them.

`--scales`: also each photo and its mask down-scaled by these factors (area interpolation; a pixel is crack where
more than a quarter of its area was), as a wide survey frame sees a crack: thinner and shorter. Printed per model
and source: dataset-level crack F1 at each scale.
"""

from __future__ import annotations

import argparse
import zlib
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch

from crackseg.data import find_pairs, split_pairs
from crackseg.evaluate.scores import load_pair
from crackseg.inference import CrackSegmenter, is_weights_path
from crackseg.metrics import confusion, scores
from crackseg.synthetic import CLASSIC_KINDS, DISTRACTOR_KINDS, add_distractor

HARD_KINDS = tuple(k for k in DISTRACTOR_KINDS if k not in CLASSIC_KINDS)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def distracted(image: np.ndarray, name: str, count: int, seed: int, kinds=CLASSIC_KINDS) -> np.ndarray:
    """The photo with `count` distractors, seeded by its name so every model sees the same ones."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    for _ in range(count):
        image = add_distractor(image, rng, kinds)
    return image


def down_scaled(image: np.ndarray, truth: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    height, width = truth.shape
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return small, cv2.resize(truth.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.25


def conditions(image, truth, name: str, args):
    """(condition, photo, mask) triples: the photo as it is, with distractors, and at each --scales factor."""
    yield "clean", image, truth
    yield "distracted", distracted(image, name, args.distractors, args.seed), truth
    if args.hard:
        yield "hard", distracted(image, name, args.distractors, args.seed, HARD_KINDS), truth
    for factor in args.scales:
        yield (f"x{factor:g}", *down_scaled(image, truth, factor))


def score_model(weights: str, pairs, args) -> dict:
    """Dataset-level scores per condition (all sources) and per (condition, source)."""
    is_path = is_weights_path(weights)
    segmenter = CrackSegmenter.from_pretrained(
        Path(weights) if is_path else weights,
        backend=args.backend,
        precision=args.precision,
    )
    totals = defaultdict(lambda: np.zeros(3, np.int64))
    for pair in pairs:
        image, truth = load_pair(pair)
        for condition, photo, mask in conditions(image, truth, pair.name, args):
            c = confusion(segmenter.predict(photo).mask, mask)
            for key in (condition, (condition, pair.source)):
                totals[key] += (c["tp"], c["fp"], c["fn"])
    return {
        key: scores(*counts) | {"fp": int(counts[1]), "crack": int(counts[0] + counts[2])}
        for key, counts in totals.items()
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="+", default=["unet-r18", "pspnet-r18"], help="shipped names or paths")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="only the first N validation photos")
    p.add_argument("--distractors", type=int, default=2, help="distractors per photo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hard", action="store_true", help="also score photos with the hard negatives")
    p.add_argument("--scales", type=float, nargs="*", default=[], help="also down-scaled by these factors")
    p.add_argument("--backend", default="torch")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int)
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    _, val = split_pairs(find_pairs(args.data), seed=args.split_seed)
    pairs = val[: args.limit or None]
    print(f"{len(pairs)} validation photos of {args.data}, {args.distractors} distractors each, seed {args.seed}")
    noisy_kinds = ["distracted"] + ["hard"] * args.hard
    results = {weights: score_model(weights, pairs, args) for weights in args.weights}
    for kind in noisy_kinds:
        print(f"{'model':<32}{'F1 clean':>9}{'F1 ' + kind[:5]:>9}{'P clean':>9}{'P ' + kind[:5]:>9}", end="")
        print(f"{'added FP / crack px':>21}")
        for weights, r in results.items():
            clean, noisy = r["clean"], r[kind]
            added = (noisy["fp"] - clean["fp"]) / max(clean["crack"], 1)
            print(
                f"{weights:<32}{clean['f1']:>9.3f}{noisy['f1']:>9.3f}{clean['precision']:>9.3f}"
                f"{noisy['precision']:>9.3f}{added:>21.3f}"
            )
    scaled = ["clean"] + [f"x{factor:g}" for factor in args.scales]
    if args.scales:
        sources = sorted({pair.source for pair in pairs})
        print(f"\ndataset-level crack F1 down-scaled (clean = x1)\n{'model':<32}{'scale':>7}{'all':>7}", end="")
        print("".join(f"{source:>11}" for source in sources))
        for weights, r in results.items():
            for condition in scaled:
                row = "".join(f"{r[(condition, source)]['f1']:>11.3f}" for source in sources)
                print(f"{weights:<32}{condition:>7}{r[condition]['f1']:>7.3f}{row}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
