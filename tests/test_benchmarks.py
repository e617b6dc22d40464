"""The benchmark scripts call the project's own functions; these checks keep them in step when signatures change."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from crackseg.data import find_all_pairs

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_speed_runs_the_real_training_step(synthetic_root):
    train_speed = load_script("train_speed")
    pairs = find_all_pairs([str(synthetic_root)], skip_unpaired=True)
    rate = train_speed.images_per_second("pspnet", {}, 64, "fp32", 1, pairs)
    assert rate > 0
