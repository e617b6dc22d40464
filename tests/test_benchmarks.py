"""The benchmark scripts call the project's own functions; these checks keep them in step when signatures change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_train_speed_runs_the_real_training_step(synthetic_root):
    # In a child process: in this one, once the backend tests have run NNCF's OpenVINO int8 calibration, starting
    # the benchmark's DataLoader worker kills pytest with a segmentation fault.
    code = (
        "import sys; from train_speed import images_per_second; from crackseg.data import find_all_pairs; "
        "rate = images_per_second('pspnet', {}, 64, 'fp32', 1, find_all_pairs([sys.argv[1]], skip_unpaired=True)); "
        "print(rate)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(synthetic_root)], cwd=BENCHMARKS, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) > 0
