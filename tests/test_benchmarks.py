"""The benchmark scripts call the project's own functions; these checks keep them in step when signatures change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_train_speed_runs_the_real_training_step(synthetic_root):
    # In a child process: its DataLoader worker is forked, and forking this process after the backend tests have
    # loaded OpenVINO and ONNX Runtime crashes it.
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
