"""Regression guard for the shipped weights and their preprocessing (not a benchmark: the samples were trained on)."""

from pathlib import Path

import numpy as np
import pytest

from crackseg.cli import main
from crackseg.inference import CrackSegmenter
from crackseg.io.images import read_mask
from crackseg.metrics import confusion, scores
from crackseg.models.config import DEFAULT_MODEL, WEIGHTS_DIR

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "crackseg" / "samples"
SHIPPED = sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / "model.safetensors").is_file())


def test_the_named_models_are_shipped_and_small():
    assert {DEFAULT_MODEL, "pspnet-r18"} <= set(SHIPPED)
    total = sum(f.stat().st_size for f in WEIGHTS_DIR.rglob("*") if f.is_file())
    assert total <= 20 * 1024**2


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_finds_the_sample_cracks(name):
    # Two of the three bundled photos: a model may have one weak sample (unet-lite0 0.1.0: slide845, F1 0.56;
    # pspnet-r18: DJI2140, F1 0.29), so no fixed pair guards both.
    seg = CrackSegmenter.from_pretrained(name, precision="fp32")
    f1 = {}
    for stem in ("DJI2140", "slide837", "slide845"):
        result = seg.predict(SAMPLES / f"{stem}.jpg")
        truth = read_mask(SAMPLES / "masks" / f"{stem}.png")
        f1[stem] = round(scores(**confusion(result.mask, truth))["f1"], 3)
    assert sum(value >= 0.6 for value in f1.values()) >= 2, (name, f1)


def test_predict_with_the_default_model_offline(tmp_path):
    assert main(["predict", str(SAMPLES / "slide845.jpg"), "-o", str(tmp_path), "--backend", "torch"]) == 0
    mask = read_mask(tmp_path / "slide845.png")
    assert mask.shape == (448, 448) and mask.any() and np.mean(mask) < 0.5
