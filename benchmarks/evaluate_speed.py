"""Time `crackseg evaluate` (the function path: prediction, sweep, every metric, figures and report).

    python benchmarks/evaluate_speed.py --weights runs/NAME/best               # DeepCrack's 300 train images
    python benchmarks/evaluate_speed.py --weights runs/NAME/best --limit 20    # a quick check
    python benchmarks/evaluate_speed.py --arch pspnet --encoder resnet18        # random weights: timing only

The aim is under 2 minutes for the 300 DeepCrack images (544×384) on a 2-core CPU. The model is
loaded and run once before the clock starts; everything `evaluate` does after that is timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from crackseg.data import find_pairs
from crackseg.inference import CrackSegmenter
from crackseg.io.images import read_image
from crackseg.models.networks import ModelConfig, build_model
from crackseg.runs.evaluate import evaluate

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "deepcrack" / "train"


def random_segmenter(arch: str, encoder: str, size: int, tile: int | None) -> CrackSegmenter:
    """An untrained model of the given shape: its speed is that of the trained one, its scores meaningless."""
    torch.manual_seed(0)
    config = ModelConfig(arch=arch, encoder=encoder, train_size=size, name=f"{arch}-{encoder} (random weights)")
    return CrackSegmenter(build_model(arch, encoder), config, tile=tile)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", help="a trained crackseg model (default: a random-init --arch/--encoder)")
    p.add_argument("--arch", default="pspnet")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--size", type=int, default=448, help="training size of the random model (its tile)")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--tile", type=int, help="tile size (default: the model's training size)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--tolerance", type=float, default=2.0, help="tolerance F1 radius (0: off)")
    p.add_argument("--out", help="keep the report here (default: a temporary folder, deleted)")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = find_pairs(args.data)[: args.limit or None]
    if args.weights:
        segmenter = CrackSegmenter.from_pretrained(Path(args.weights), tile=args.tile)
    else:
        segmenter = random_segmenter(args.arch, args.encoder, args.size, args.tile)
    segmenter.predict_prob(read_image(pairs[0].image))  # warm-up: first-call allocations are not evaluation
    height, width = read_image(pairs[0].image).shape[:2]

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        start, cpu_start = time.perf_counter(), time.process_time()
        evaluate(segmenter, pairs, out, tolerance=args.tolerance or None, progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start

    n = len(pairs)
    threads = torch.get_num_threads()
    print(f"model {segmenter.config.name or args.weights}; {segmenter.describe()}; torch threads {threads}")
    print(f"data {args.data}: {n} images (first {width}×{height})")
    print(f"evaluate: {seconds:.1f} s for {n} images = {n / seconds:.2f} images/s ({seconds / n:.3f} s/image)")
    if n < 300:
        projected = seconds / n * 300
        print(f"linear projection to 300 images: {projected:.0f} s (figures are a fixed cost: an upper bound)")
    # CPU time is what the run itself consumed: with 1 thread it is close to the wall time of an idle machine.
    load = os.getloadavg()[0]
    print(f"CPU time {cpu:.1f} s ({cpu / n:.3f} s/image); load average {load:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
