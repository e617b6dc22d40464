"""Crack maps end to end: `crackseg predict` then `crackseg measure` on a large georeferenced GeoTIFF.

    python benchmarks/map_speed.py --size 20000 --threads 2 [--crack-width 6] [--model NAME | --weights PATH]
        [--photo] [--formats json,csv,png,geojson,gpkg,dxf]

Writes raster_speed's generated RGB GeoTIFF of SIZE × SIZE (EPSG:32633, 0.5 mm pixels, three cracks drawn in each
2,048² block, all --crack-width px wide), then runs the real commands in child processes, one after the other:
`crackseg predict` (backend auto; the mask GeoTIFF) and `crackseg measure --masks` on that mask, writing the crack
maps (GeoJSON, GeoPackage, DXF), cracks.csv and the summary JSON. Prints, per step and in total, the wall time and
the peak resident memory (the child's VmHWM, polled), then each output's size, the cracks found and their widths
against the drawn one. With --photo, one command instead: `crackseg measure ortho.tif` on the photo itself, which
segments it block by block into a temporary mask GeoTIFF and measures that, as a user would run it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from raster_speed import model_arguments, run_child, write_orthomosaic

PIXEL_MM = 0.5  # raster_speed's GeoTIFF
MAP_FORMATS = "json,csv,geojson,gpkg,dxf"  # no width figure: a 20,000² picture is not a map


def step(name: str, command: list[str], env: dict) -> tuple[float, int, str]:
    """One child command: wall seconds, peak RSS (KiB) and its stdout; stops the benchmark when it fails."""
    print(f"{name}: {' '.join(command[1:])}", flush=True)
    seconds, peak, code, out, err = run_child(command, env)
    if code != 0:
        raise SystemExit(f"crackseg {name} failed (exit status {code}):\n{err[-3000:]}")
    engine = next((line for line in err.splitlines() if line.startswith("model ")), "")
    print(f"  {seconds:.1f} s, peak RSS {peak / 1e6:.2f} GB{'; ' + engine if engine else ''}", flush=True)
    return seconds, peak, out


def sizes(folder: Path) -> str:
    def size(n: int) -> str:
        return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"

    return ", ".join(f"{p.name} {size(p.stat().st_size)}" for p in sorted(folder.iterdir()) if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20000, help="side of the generated GeoTIFF in px")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--crack-width", type=int, default=6, help="width of the drawn cracks in px")
    parser.add_argument("--model", help="a shipped model (default: the default)")
    parser.add_argument("--weights", help="a trained model folder")
    parser.add_argument("--photo", action="store_true", help="one step: `crackseg measure` on the photo itself")
    parser.add_argument("--formats", default=MAP_FORMATS, help=f"measure's --formats (default {MAP_FORMATS})")
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    crackseg = [sys.executable, "-m", "crackseg"]
    with tempfile.TemporaryDirectory(prefix="crackseg-maps-") as tmp:
        ortho, predicted, measured = Path(tmp) / "ortho.tif", Path(tmp) / "predicted", Path(tmp) / "measured"
        started = time.perf_counter()
        drawn = write_orthomosaic(ortho, args.size, crack_width=args.crack_width)
        print(
            f"generated a {args.size}×{args.size} GeoTIFF ({args.size**2 / 1e6:.0f} MP, {drawn} cracks drawn "
            f"{args.crack_width} px = {args.crack_width * PIXEL_MM:g} mm wide, {ortho.stat().st_size / 1e6:.0f} MB) "
            f"in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        predict = [*crackseg, "predict", str(ortho), "-o", str(predicted), *model_arguments(args)]
        measure = [*crackseg, "measure", str(predicted / "ortho.tif"), "--masks", "-o", str(measured)]
        if args.photo:  # segmented block by block inside measure, to a temporary mask it removes
            measure = [*crackseg, "measure", str(ortho), "-o", str(measured), *model_arguments(args)]
        runs = {} if args.photo else {"predict": step("predict", predict, env)}
        runs["measure"] = step("measure", [*measure, "--formats", args.formats], env)
        report = json.loads((measured / "ortho_measure.json").read_text())
        summary, cracks = report["summary"], report["cracks"]
        medians = np.array([c["w_med_mm"] for c in cracks], float)
        print(f"\n{'step':<9}{'wall s':>9}{'peak RSS GB':>13}  outputs")
        for name, folder in (("predict", predicted), ("measure", measured)):
            if name in runs:
                print(f"{name:<9}{runs[name][0]:>9.1f}{runs[name][1] / 1e6:>13.2f}  {sizes(folder)}")
        total = sum(seconds for seconds, _, _ in runs.values())
        print(f"{'total':<9}{total:>9.1f}{max(peak for _, peak, _ in runs.values()) / 1e6:>13.2f}  (peak: the larger)")
        blocks = report.get("blocks")  # measure says whether it held the mask whole or went block by block
        how = f"in blocks of {blocks['block_px']} px, halo {blocks['halo_px']} px" if blocks else "whole"
        segmented = " (segmented in blocks to a temporary mask)" if blocks and blocks["segmented_in_blocks"] else ""
        print(f"measure read the mask {how}{segmented}; width figure: {(blocks or {}).get('width_figure', '-')}")
        print(
            f"\n{summary['count']} cracks ({drawn} drawn; one that leaves its block and comes back, or a gap in the "
            "predicted mask, makes two), "
            f"{summary['total_length_mm'] / 1000:.1f} m in total; median width per crack: median "
            f"{np.median(medians) if len(medians) else float('nan'):.2f} mm (drawn {args.crack_width * PIXEL_MM:g} mm)"
        )


if __name__ == "__main__":
    main()
