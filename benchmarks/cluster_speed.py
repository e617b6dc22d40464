"""Time `crackseg predict` on two Dask workers against one local process, on the same validation photos.

    python benchmarks/cluster_speed.py --photos 300                    # validation photos of ../shared/data
    python benchmarks/cluster_speed.py --photos 6 --model unet-lite0   # a quick check that it runs

One thread per process on both sides: the local run is this process with one thread; the cluster is a LocalCluster
of two worker processes of one thread each (`--cluster local:2`). Both run the engine `auto` chose here (the workers
are pinned to it). Model loading and the cluster's start are timed apart from the runs. Prints both times, their
ratio, and whether the two runs' masks are byte-identical.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from crackseg.data import find_all_pairs, split_pairs
from crackseg.inference import CrackSegmenter
from crackseg.runs.cluster import ModelSpec, cluster_client, load_model
from crackseg.runs.predict import plan_predict, predict_plan

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def validation_photos(data: Path, count: int) -> list[Path]:
    """`count` photos spread evenly over the validation split `crackseg train` holds out (every source in it)."""
    roots = sorted(p for p in data.iterdir() if p.is_dir())
    val = split_pairs(find_all_pairs(roots, skip_unpaired=True, exclude_splits=("test",)))[1]
    step = max(1, len(val) // count)
    return [pair.image for pair in val[::step][:count]]


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=300, help="validation photos to segment")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="crackseg data folders under this one")
    p.add_argument("--weights", help="a trained model (default: the shipped --model)")
    p.add_argument("--model", help="a shipped model by name (default: the default model)")
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes, one thread each")
    args = p.parse_args()

    torch.set_num_threads(1)  # the engines take torch's count: one thread here, as on each worker
    photos = validation_photos(args.data, args.photos)
    load_s, segmenter = timed(CrackSegmenter.from_pretrained, Path(args.weights) if args.weights else args.model)
    print(f"model {segmenter.config.name}; {segmenter.describe()}; loaded in {load_s:.1f} s")
    print(f"{len(photos)} validation photos of {args.data}")

    with tempfile.TemporaryDirectory() as tmp:
        here, dask = Path(tmp) / "here", Path(tmp) / "dask"
        local_s, (written, failures) = timed(predict_plan, segmenter, plan_predict(photos, here), progress=False)
        print(f"local, 1 process × 1 thread: {local_s:.1f} s ({written} written, {len(failures)} failed)")

        start = time.perf_counter()
        with cluster_client(f"local:{args.workers}") as client:
            model = ModelSpec.of(segmenter)
            load_model(client, model)
            startup_s = time.perf_counter() - start
            dask_s, (written, failures) = timed(predict_plan, model, plan_predict(photos, dask), False, False, client)
        print(
            f"Dask, {args.workers} workers × 1 thread: {dask_s:.1f} s ({written} written, {len(failures)} failed); "
            f"cluster start and model load {startup_s:.1f} s, apart"
        )
        masks = sorted(q.name for q in here.glob("*.png"))
        identical = masks == sorted(q.name for q in dask.glob("*.png")) and all(
            (here / name).read_bytes() == (dask / name).read_bytes() for name in masks
        )
    print(f"speed-up {local_s / dask_s:.2f}x; masks byte-identical: {'yes' if identical else 'NO'} ({len(masks)})")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0 if identical else 1


if __name__ == "__main__":  # Dask's worker processes import this module again: they must not run it
    raise SystemExit(main())
