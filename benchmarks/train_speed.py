"""Training throughput on this machine: images/s at 256² and 448² crops (batch 8), fp32 and bf16 where the CPU
runs bf16 fast, peak resident memory, and the implied time of one epoch over ../shared/data.

    python benchmarks/train_speed.py [--arch pspnet] [--steps 5] [--threads 2]

It times the real training step (`crackseg.train.train_one_epoch` on batches from `CrackDataset` with the training
augmentation, BC loss, Adam), after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from crackseg.data import CrackDataset, EpochSeededDataset, find_all_pairs, train_transform
from crackseg.engines.base import cpu_has_bf16_matrix_engine
from crackseg.losses import build_loss
from crackseg.models.networks import build_model
from crackseg.train import train_one_epoch
from crackseg.train.setup import memory_format

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def images_per_second(arch: str, arch_kwargs: dict, size: int, precision: str, steps: int, pairs) -> float:
    dataset = EpochSeededDataset(CrackDataset(pairs, train_transform(size)), seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True, num_workers=1, drop_last=True)
    model = build_model(arch, **arch_kwargs).to(memory_format=memory_format(precision))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn, step = build_loss("bc"), {"alpha": 0.1, "device": "cpu", "precision": precision}
    train_one_epoch(model, loader, loss_fn, optimizer, **step, max_batches=1)  # warm-up
    started = time.perf_counter()
    train_one_epoch(model, loader, loss_fn, optimizer, **step, max_batches=steps)
    return steps * 8 / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="pspnet")
    parser.add_argument("--arch-kwargs", type=json.loads, default={})
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default=str(SHARED))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pairs = find_all_pairs([args.data], skip_unpaired=True)
    precisions = ["fp32", "bf16"] if cpu_has_bf16_matrix_engine() else ["fp32"]
    if len(precisions) == 1:
        print("bf16: skipped (this CPU has no AMX / AVX-512 BF16; bf16 would be emulated, slower than fp32)")
    print(f"{args.arch} {args.arch_kwargs or ''}, batch 8, {args.threads} threads, {len(pairs)} pairs")
    for size in (256, 448):
        for precision in precisions:
            rate = images_per_second(args.arch, args.arch_kwargs, size, precision, args.steps, pairs)
            epoch_minutes = len(pairs) * 0.9 / rate / 60
            print(f"  {size}² {precision}: {rate:6.2f} img/s  -> one training epoch ≈ {epoch_minutes:5.1f} min")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak resident memory of this process: {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
