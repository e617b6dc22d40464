"""Per-source validation F1 of one or more models, and where the threshold should be.

    python benchmarks/source_thresholds.py --models src/crackseg/weights/unet-r18 runs/x/best --data ../shared/data

For each model, on the validation split `crackseg train` carves (same --val-fraction / --split-seed), through the
one inference path (`CrackSegmenter.from_pretrained`, backend auto): each source's dataset-level F1 at the model's
stored threshold (with its precision and recall) and at 0.3, 0.5 and 0.7; the pooled F1; the mean of the
per-source F1s over all sources and over the first five (the sets of the earlier defaults); and the threshold where
that mean peaks, with how flat the curve is around it (the mean within ±0.1 of the peak). `--tta` scores each
model a second time with flip TTA.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from crackseg.data import find_all_pairs, split_pairs
from crackseg.evaluate.scores import load_pair
from crackseg.inference import CrackSegmenter
from crackseg.metrics import THRESHOLDS, scores, source_mean_f1_curve, sweep_counts

FIRST_FIVE = ("cfd", "crack500", "deepcrack", "uav-crack", "uav75")
REPORTED = (0.3, 0.5, 0.7)


def source_counts(segmenter: CrackSegmenter, pairs) -> dict[str, np.ndarray]:
    counts: dict[str, np.ndarray] = {}
    for pair in pairs:
        image, truth = load_pair(pair)
        swept = sweep_counts(segmenter.predict_prob(image), truth)
        counts[pair.source] = counts.get(pair.source, 0) + swept
    return dict(sorted(counts.items()))


def at(threshold: float) -> int:
    return int(np.argmin(np.abs(THRESHOLDS - threshold)))


def report(name: str, segmenter: CrackSegmenter, counts: dict[str, np.ndarray], photos: Counter) -> None:
    stored = segmenter.threshold
    columns = (stored, *REPORTED)
    print(f"\n{name}: {segmenter.describe()}; stored threshold {stored:g}")
    print("| source | photos | P | R | " + " | ".join(f"F1 @ {t:g}" for t in columns) + " |")
    print("|---|---|---|---|" + "---|" * len(columns))
    rows = {**counts, "pooled": sum(counts.values())}
    for source, c in rows.items():
        s = scores(*c.T)
        cells = [f"{s['precision'][at(stored)]:.3f}", f"{s['recall'][at(stored)]:.3f}"]
        cells += [f"{s['f1'][at(t)]:.3f}" for t in columns]
        print(f"| {source} | {photos[source] or ''} | " + " | ".join(cells) + " |")
    pooled = scores(*rows["pooled"].T)["f1"]
    curve = source_mean_f1_curve(counts)
    five = source_mean_f1_curve({s: c for s, c in counts.items() if s in FIRST_FIVE})
    for label, values in (
        (f"mean of the {len(counts)} per-source F1s", curve),
        ("mean of the first five", five),
    ):
        print(f"| {label} | | | | " + " | ".join(f"{values[at(t)]:.3f}" for t in columns) + " |")
    peak = int(np.argmax(curve))
    near = curve[max(0, peak - 10) : peak + 11]
    print(
        f"mean of per-source F1s peaks at {THRESHOLDS[peak]:g} ({curve[peak]:.3f}); within ±0.1 of it "
        f"{near.min():.3f}–{near.max():.3f}; pooled ODS {pooled.max():.3f} at {THRESHOLDS[int(np.argmax(pooled))]:g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="model folders or shipped names")
    parser.add_argument("--data", nargs="+", default=["../shared/data"])
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 or int8: one for every model compared")
    parser.add_argument("--tta", action="store_true", help="also score each model with flip TTA (predict --tta)")
    args = parser.parse_args()
    pairs = split_pairs(find_all_pairs(args.data, exclude_splits=("test",)), args.val_fraction, args.split_seed)[1]
    print(f"validation split: {len(pairs)} photos of {args.data}")
    for name in args.models:
        model = Path(name) if Path(name).exists() else name
        for tta in (False, True) if args.tta else (False,):
            segmenter = CrackSegmenter.from_pretrained(model, backend=args.backend, precision=args.precision, tta=tta)
            label = f"{name} with --tta" if tta else str(name)
            report(label, segmenter, source_counts(segmenter, pairs), Counter(p.source for p in pairs))


if __name__ == "__main__":
    main()
