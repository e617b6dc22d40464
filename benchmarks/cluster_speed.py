"""Time `crackseg predict` on Dask workers against one local process, on the same validation photos, side by side.

    python benchmarks/cluster_speed.py --photos 300                    # validation photos of ../shared/data
    python benchmarks/cluster_speed.py --photos 6 --model unet-lite0   # a quick check that it runs

One thread per process on both sides: the local run is this process with one thread; the cluster is a LocalCluster
of `--workers` worker processes of one thread each (`--cluster local:N`). Both run the engine `auto` chose here (the
workers are pinned to it). The cluster's start and model loading are timed apart, and a few photos warm both sides
up untimed. Then each round times the local run and the cluster run in turn, so that both see the same load from
whatever else the machine runs. Each run also reports the CPU seconds it used and so the cores it got (CPU seconds
per second of wall time): on a machine shared with other work, the ratio of the cores each side got bounds the
speed-up. Ends with the total speed-up and whether the runs' masks are byte-identical.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

from crackseg.data import find_all_pairs, split_pairs
from crackseg.inference import CrackSegmenter
from crackseg.runs.cluster import ModelSpec, cluster_client, load_model
from crackseg.runs.predict import plan_predict, predict_plan

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WARM_UP_PHOTOS = 2  # per process: first calls allocate and pick kernels


def validation_photos(data: Path, count: int) -> list[Path]:
    """`count` photos spread evenly over the validation split `crackseg train` holds out (every source in it)."""
    roots = sorted(p for p in data.iterdir() if p.is_dir())
    val = split_pairs(find_all_pairs(roots, skip_unpaired=True, exclude_splits=("test",)))[1]
    step = max(1, len(val) // count)
    return [pair.image for pair in val[::step][:count]]


def cpu_seconds(dask_worker=None) -> float:
    """User and system CPU seconds of this process (a worker's, when run there)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


class Run:
    """Wall and CPU seconds of one timed run: of this process, and of the workers' processes on a cluster."""

    def __init__(self, client=None):
        self.client = client

    def __enter__(self) -> Run:
        self.workers_before = self.client.run(cpu_seconds) if self.client else {}
        self.cpu_before, self.start = cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.start
        self.here = cpu_seconds() - self.cpu_before
        after = self.client.run(cpu_seconds) if self.client else {}
        self.workers = sum(after[w] - self.workers_before.get(w, 0.0) for w in after)

    @property
    def cores(self) -> float:
        return (self.here + self.workers) / self.wall


def same_masks(a: Path, b: Path) -> tuple[bool, int]:
    names = sorted(q.name for q in a.glob("*.png"))
    same = names == sorted(q.name for q in b.glob("*.png"))
    return same and all((a / n).read_bytes() == (b / n).read_bytes() for n in names), len(names)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=300, help="validation photos to segment")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="crackseg data folders under this one")
    p.add_argument("--weights", help="a trained model (default: the shipped --model)")
    p.add_argument("--model", help="a shipped model by name (default: the default model)")
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes, one thread each")
    p.add_argument("--rounds", type=int, default=2, help="rounds of one local run then one cluster run")
    p.add_argument("--backend", default="auto", help="the engine both sides run (default: auto's choice here)")
    p.add_argument("--precision", default="auto")
    args = p.parse_args()

    torch.set_num_threads(1)  # the engines take torch's count: one thread here, as on each worker
    photos = validation_photos(args.data, args.photos)
    model = Path(args.weights) if args.weights else args.model
    load_s, segmenter = timed(CrackSegmenter.from_pretrained, model, backend=args.backend, precision=args.precision)
    print(f"model {segmenter.config.name}; {segmenter.describe()}; loaded in {load_s:.1f} s")
    load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    print(f"{len(photos)} validation photos of {args.data}; {load}")

    totals, identical, count = {"local": 0.0, "dask": 0.0}, True, 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        with cluster_client(f"local:{args.workers}") as client:
            model = ModelSpec.of(segmenter)
            load_model(client, model)
            startup_s = time.perf_counter() - start
            print(f"cluster of {args.workers} workers × 1 thread started and model loaded in {startup_s:.1f} s")
            warm_up = photos[: WARM_UP_PHOTOS * args.workers]
            predict_plan(segmenter, plan_predict(warm_up, tmp / "warm_here"), progress=False)
            predict_plan(model, plan_predict(warm_up, tmp / "warm_dask"), False, False, client)
            for round_ in range(1, args.rounds + 1):
                here, dask = tmp / f"here{round_}", tmp / f"dask{round_}"
                with Run() as local:
                    _, failures = predict_plan(segmenter, plan_predict(photos, here), progress=False)
                with Run(client) as cluster:
                    _, cluster_failures = predict_plan(model, plan_predict(photos, dask), False, False, client)
                same, count = same_masks(here, dask)
                identical &= same and not failures and not cluster_failures
                totals["local"] += local.wall
                totals["dask"] += cluster.wall
                print(
                    f"round {round_}: local {local.wall:.1f} s ({local.cores:.2f} cores); Dask {cluster.wall:.1f} s "
                    f"({cluster.cores:.2f} cores: workers {cluster.workers / cluster.wall:.2f}, scheduler and client "
                    f"{cluster.here / cluster.wall:.2f}); {local.wall / cluster.wall:.2f}x; CPU s per photo: local "
                    f"{local.here / len(photos):.3f}, Dask {(cluster.here + cluster.workers) / len(photos):.3f}; "
                    f"load average {os.getloadavg()[0]:.1f}"
                )
    speed_up = totals["local"] / totals["dask"]
    print(
        f"total: local {totals['local']:.1f} s, Dask {totals['dask']:.1f} s; speed-up {speed_up:.2f}x; "
        f"masks byte-identical: {'yes' if identical else 'NO'} ({count} per run)"
    )
    return 0 if identical else 1


if __name__ == "__main__":  # Dask's worker processes import this module again: they must not run it
    raise SystemExit(main())
