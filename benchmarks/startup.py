"""Time from the command to the photo segmented: `crackseg predict` as a user runs it, in a fresh process each time.

    python benchmarks/startup.py [--repeat 3] [--size 4000x3000] [--model NAME]

Run it with the interpreter of the install to measure (e.g. a core-only virtual environment's python). Times, as
the median of REPEAT runs after one warm-up run (which fills the engine cache: export, `auto`'s measurement):
`crackseg --version` (the interpreter and the command line), `crackseg predict` of a bundled 640×480-class sample,
and of the same photo enlarged to SIZE (a phone photo), each written to a fresh folder; then, inside one process,
how the small photo's time splits into importing, loading the engine (from the cache) and segmenting.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "crackseg" / "samples" / "slide837.jpg"


def wall(args: list[str], repeat: int) -> float:
    """Median seconds of `crackseg ARGS` in a fresh process (after one untimed run)."""
    times = []
    for run in range(repeat + 1):
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-m", "crackseg", *[a.replace("OUT", out) for a in args]]
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            if run:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_process_split(photo: Path, model: str | None) -> dict[str, float]:
    start = time.perf_counter()
    from crackseg import CrackSegmenter

    imported = time.perf_counter()
    segmenter = CrackSegmenter.from_pretrained(model)
    loaded = time.perf_counter()
    segmenter.predict(photo)
    done = time.perf_counter()
    return {"import": imported - start, "engine": loaded - imported, "photo": done - loaded, "via": segmenter}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT of the large photo")
    parser.add_argument("--model", help="a shipped model (default: the default model)")
    args = parser.parse_args()
    import cv2

    width, height = map(int, args.size.split("x"))
    model = ["--model", args.model] if args.model else []
    with tempfile.TemporaryDirectory() as folder:
        large = Path(folder) / "large.jpg"
        cv2.imwrite(str(large), cv2.resize(cv2.imread(str(SAMPLE)), (width, height), interpolation=cv2.INTER_CUBIC))
        version = wall(["--version"], args.repeat)
        small = wall(["predict", str(SAMPLE), "-o", "OUT", *model], args.repeat)
        big = wall(["predict", str(large), "-o", "OUT", *model], args.repeat)
    split = in_process_split(SAMPLE, args.model)
    print(f"interpreter {sys.executable}; torch installed: {_has_torch()}")
    print(f"engine: {split['via'].describe()}")
    print(f"crackseg --version                 {version:6.2f} s")
    print(f"crackseg predict {SAMPLE.name:<17} {small:6.2f} s")
    print(f"crackseg predict {width}x{height} photo  {big:6.2f} s")
    print(
        f"in one process, the small photo: import {split['import']:.2f} s, engine from the cache "
        f"{split['engine']:.2f} s, segmenting {split['photo']:.2f} s"
    )


def _has_torch() -> bool:
    from crackseg.extras import has_torch

    return has_torch()


if __name__ == "__main__":
    main()
