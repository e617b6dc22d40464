"""Do `--low-threshold` (hysteresis) and `--scales 1,2` find more thin cracks, and at what cost?

    python benchmarks/thin_options.py --data ../shared/data --model unet-lite0 --low 0.5 --scales 1,2

On the validation split `crackseg train` carves, through the one inference path: the pooled and per-source crack F1,
precision and recall of the default prediction (the model's threshold), of hysteresis (a weak threshold, `--low` ×
the model's, kept where it touches strong pixels: the same probability maps), and of the mean of the maps at the
`--scales` factors, with the seconds each prediction pass took.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

from crackseg.data import find_all_pairs, split_pairs
from crackseg.evaluate.scores import load_pair
from crackseg.inference import CrackSegmenter, Prediction
from crackseg.metrics import confusion, scores


def tally(counts: dict, source: str, pred: np.ndarray, truth: np.ndarray) -> None:
    c = confusion(pred, truth)
    for key in ("tp", "fp", "fn", "tn"):
        counts[source][key] += c[key]
        counts["all"][key] += c[key]


def report(name: str, counts: dict, seconds: float) -> None:
    line = f"{name:<28}{seconds:>7.0f} s"
    for source in sorted(counts, key=lambda s: (s != "all", s)):
        c = counts[source]
        s = scores(c["tp"], c["fp"], c["fn"], c["tn"])
        line += f"  {source} F1 {s['f1']:.3f} P {s['precision']:.3f} R {s['recall']:.3f};"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--model", default="unet-lite0", help="a shipped model's name or a model folder")
    parser.add_argument("--low", type=float, default=0.5, help="the weak threshold, as a share of the model's")
    parser.add_argument("--scales", default="1,2")
    parser.add_argument("--limit", type=int, help="only the first N validation photos")
    args = parser.parse_args()
    pairs = split_pairs(find_all_pairs([args.data], exclude_splits=("test",)), 0.1, 0)[1][: args.limit]
    segmenter = CrackSegmenter.from_pretrained(args.model)
    multi = CrackSegmenter.from_pretrained(args.model, scales=tuple(float(s) for s in args.scales.split(",")))
    print(f"{len(pairs)} validation photos; {segmenter.describe()}; threshold {segmenter.threshold}", flush=True)
    single, weak, scaled = (defaultdict(lambda: defaultdict(int)) for _ in range(3))
    seconds = {"one": 0.0, "scales": 0.0}
    low = args.low * segmenter.threshold
    for pair in pairs:
        image, truth = load_pair(pair)
        start = time.perf_counter()
        prob = segmenter.predict_prob(image)
        seconds["one"] += time.perf_counter() - start
        tally(single, pair.source, Prediction(prob, segmenter.threshold).mask, truth)
        tally(weak, pair.source, Prediction(prob, segmenter.threshold, low).mask, truth)
        start = time.perf_counter()
        tally(scaled, pair.source, Prediction(multi.predict_prob(image), segmenter.threshold).mask, truth)
        seconds["scales"] += time.perf_counter() - start
    report("one threshold", single, seconds["one"])
    report(f"hysteresis from {low:.2f}", weak, seconds["one"])
    report(f"scales {args.scales}", scaled, seconds["scales"])


if __name__ == "__main__":
    main()
