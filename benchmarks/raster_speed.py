"""Time and peak memory of `crackseg predict` on a large georeferenced GeoTIFF (an orthomosaic), block by block.

    python benchmarks/raster_speed.py --size 20000 --threads 2 [--model NAME | --weights PATH]

Writes a generated RGB GeoTIFF of SIZE × SIZE (textured surface with drawn cracks, EPSG:32633, 0.5 mm pixels),
written block by block so that making it needs little memory, then runs the real command (`auto` backend) in a
child process and reports its wall time and peak resident memory (VmHWM, polled).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from predict_speed import high_water_kb  # the same poll of the child's VmHWM


def write_orthomosaic(path: Path, size: int, block: int = 2048, crack_width: int | None = None) -> int:
    """A SIZE × SIZE RGB GeoTIFF (EPSG:32633, 0.5 mm pixels) of generated surface with three cracks drawn in each
    block (`crack_width` px wide, else 2-5 px at random), written block by block; returns the cracks drawn."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from crackseg.synthetic import synthetic_crack

    profile = {
        "driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint8", "crs": "EPSG:32633",
        "transform": from_origin(500_000.0, 5_400_000.0, 0.0005, 0.0005), "tiled": True, "blockxsize": 512,
        "blockysize": 512, "compress": "deflate", "BIGTIFF": "YES",
    }  # fmt: skip
    drawn = 0
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, block):
            for col in range(0, size, block):
                height, width = min(block, size - row), min(block, size - col)
                image, _ = synthetic_crack((height, width), seed=row * 7 + col, n_cracks=3, crack_width=crack_width)
                dst.write(np.moveaxis(image, -1, 0), window=Window(col, row, width, height))
                drawn += 3
    return drawn


def run_child(command: list[str], env: dict | None = None, poll_s: float = 0.05) -> tuple[float, int, int, str, str]:
    """Run a command to its end: wall seconds, peak resident memory (the child's VmHWM in KiB, polled), exit status,
    stdout and stderr. The output goes to temporary files, not pipes, so a chatty child never stalls on a full pipe."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started, peak = time.perf_counter(), 0
        child = subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)
        while child.poll() is None:
            peak = max(peak, high_water_kb(child.pid))
            time.sleep(poll_s)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return seconds, peak, child.returncode, out.read(), err.read()


def model_arguments(args) -> list[str]:
    """--weights or --model as given to the benchmark, for the `crackseg` command it runs."""
    return ["--weights", args.weights] if args.weights else (["--model", args.model] if args.model else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", help="a shipped model (default: the default)")
    parser.add_argument("--weights", help="a trained model folder")
    parser.add_argument("--prob", action="store_true", help="also write the probability GeoTIFF")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crackseg-raster-") as tmp:
        ortho = Path(tmp) / "ortho.tif"
        started = time.perf_counter()
        write_orthomosaic(ortho, args.size)
        print(f"generated {args.size}×{args.size} GeoTIFF in {time.perf_counter() - started:.0f} s")
        command = [sys.executable, "-m", "crackseg", "predict", str(ortho), "-o", str(Path(tmp) / "out")]
        command += model_arguments(args) + (["--prob"] if args.prob else [])
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        seconds, peak, code, _, err = run_child(command, env)
        if code != 0:
            raise SystemExit(f"crackseg predict failed:\n{err[-2000:]}")
        engine = next((line for line in err.splitlines() if line.startswith("model ")), "")
        megapixels = args.size**2 / 1e6
        print(f"{engine}\n{args.size}×{args.size} ({megapixels:.0f} MP): {seconds:.0f} s, peak RSS {peak / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
