"""`crackseg evaluate`: the report end to end, exact numbers from an oracle, degraded inputs, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crackseg.cli import main
from crackseg.data import DataError, find_all_pairs, find_pairs, split_pairs
from crackseg.errors import InputError, OutputExistsError
from crackseg.evaluate.scores import image_degrade_seed
from crackseg.io.images import read_image, read_mask, write_image
from crackseg.models.networks import ModelConfig
from crackseg.runs.evaluate import evaluate
from crackseg.synthetic import write_synthetic_dataset

REPORT_FILES = ["metrics.json", "per_image.csv", "report.md", "confusion_matrix.png", "pr_curve.png"]
SAMPLE_FIGURES = ["samples_random.png", "samples_worst.png", "samples_best.png"]


class Oracle:
    """A stand-in segmenter that knows each image's ground truth (probability 0.9 on cracks, 0.1 elsewhere)
    and predicts nothing for images it does not know (e.g. degraded copies); records the sizes it is given."""

    threshold = 0.5

    def __init__(self, pairs):
        self.config = ModelConfig(name="oracle")
        self.masks = {read_image(p.image).tobytes(): read_mask(p.mask) for p in pairs}
        self.shapes = []

    def predict_prob(self, image: np.ndarray) -> np.ndarray:
        self.shapes.append(image.shape)
        mask = self.masks.get(image.tobytes())
        if mask is None:
            return np.zeros(image.shape[:2], np.float32)
        return np.where(mask, 0.9, 0.1).astype(np.float32)

    def describe(self) -> str:
        return "oracle"


def _load_report(out: Path) -> tuple[dict, list[dict]]:
    def no_nan(value):
        raise AssertionError(f"metrics.json holds {value}")

    report = json.loads((out / "metrics.json").read_text(), parse_constant=no_nan)
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return report, rows


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> Path:
    """Two sources of different image sizes: a/ (3 pairs 64×80, one crack-free) and b/ (2 pairs 72×56)."""
    root = tmp_path_factory.mktemp("two")
    write_synthetic_dataset(root / "a", 3, size=(64, 80), seed=10, n_empty=1)
    write_synthetic_dataset(root / "b", 2, size=(72, 56), seed=20)
    return root


def test_cli_end_to_end_with_a_model(synthetic_root, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["evaluate", "--data", str(synthetic_root), "--weights", str(tiny_model_dir), "--out", str(out)]
    # --tile 128: each 96×128 image in one pass, to keep the test short
    assert main(argv + ["--tolerance", "2", "--samples", "2", "--tile", "128"]) == 0
    assert "ODS F1" in capsys.readouterr().out
    for name in REPORT_FILES + SAMPLE_FIGURES:
        assert (out / name).is_file(), name
    report, rows = _load_report(out)
    assert report["images"] == len(rows) == 24
    assert report["threshold"] == 0.5 and report["model"]["name"] == "tiny"
    assert set(report["software"]) >= {"crackseg", "python", "numpy", "torch"}
    clean = report["clean"]
    assert sum(clean["counts"].values()) == 24 * 96 * 128  # every pixel of every image, at full size
    assert clean["hd95"]["images_scored"] + clean["hd95"]["images_skipped"] == 24
    assert clean["tolerance"]["radius"] == 2
    assert clean["tolerance"]["mean_f1"] == pytest.approx(np.mean([float(r["tolerance_f1"]) for r in rows]), abs=1e-5)
    assert clean["mean"]["iou"] == pytest.approx(np.mean([float(r["iou"]) for r in rows]), abs=1e-5)
    assert len(clean["sweep"]["curve"]["f1"]) == 99
    assert list(clean["per_source"]) == ["syn"]
    assert {"width", "height", "crack_fraction", "hd95", "tolerance_f1"} <= set(rows[0])
    for name in REPORT_FILES[3:] + SAMPLE_FIGURES:
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width > 100
    assert "| IoU (dataset) |" in (out / "report.md").read_text()


def test_oracle_scores_perfectly_at_original_size(two_sources, tmp_path):
    pairs = find_pairs(two_sources)
    oracle = Oracle(pairs)
    report = evaluate(oracle, pairs, tmp_path, n_samples=2, progress=False)
    # every image reached the model at its own size, never resized
    assert sorted(s[:2] for s in oracle.shapes[: len(pairs)]) == sorted([(64, 80)] * 3 + [(72, 56)] * 2)
    clean = report["clean"]
    assert clean["micro"]["iou"] == clean["mean"]["iou"] == 1.0
    assert clean["sweep"]["ods_f1"] == clean["sweep"]["ois_f1"] == 1.0
    mean_iou = clean["sweep"]["curve"]["mean_iou"]
    assert mean_iou[10:90] == [1.0] * 80  # every image perfect for t in (0.1, 0.9]
    assert mean_iou[90:] == [pytest.approx(1 / 5)] * 9  # above 0.9 only the crack-free image scores (1)
    assert clean["sweep"]["aiu"] == pytest.approx(np.mean(mean_iou))
    assert clean["hd95"] == {"mean": 0.0, "median": 0.0, "images_scored": 4, "images_skipped": 1}
    assert report["data"]["sources"] == {"a": 3, "b": 2}
    assert clean["per_source"]["b"]["images"] == 2 and clean["per_source"]["a"]["micro"]["f1"] == 1.0
    _, rows = _load_report(tmp_path)
    assert {(r["source"], r["width"], r["height"]) for r in rows} == {("a", "80", "64"), ("b", "56", "72")}
    report_md = (tmp_path / "report.md").read_text()
    assert "| a | 3 |" in report_md and "| b | 2 |" in report_md


class TwoPixelsLow(Oracle):
    """Predicts each image's ground truth moved 2 px down."""

    def predict_prob(self, image: np.ndarray) -> np.ndarray:
        return np.roll(super().predict_prob(image), 2, axis=0)


def test_a_prediction_two_pixels_off_scores_as_its_geometry_says(tmp_path):
    # A 3 px wide, 60 px long band, predicted 2 px low: one row of 60 pixels overlaps, 120 are missed, 120 are extra.
    mask = np.zeros((64, 80), np.uint8)
    mask[30:33, 10:70] = 255
    write_image(tmp_path / "data" / "images" / "band.png", np.full((64, 80, 3), 128, np.uint8))
    write_image(tmp_path / "data" / "masks" / "band.png", mask)
    pairs = find_pairs(tmp_path / "data")
    strict = evaluate(TwoPixelsLow(pairs), pairs, tmp_path / "r1", tolerance=1, n_samples=0, progress=False)["clean"]
    assert strict["micro"]["precision"] == strict["micro"]["recall"] == pytest.approx(60 / 180)
    assert strict["micro"]["f1"] == pytest.approx(1 / 3) and strict["micro"]["iou"] == pytest.approx(60 / 300)
    # within 1 px: the middle and overlapping rows of each side (2 of 3) match; within 2 px every pixel does
    assert strict["tolerance"]["micro"]["f1"] == pytest.approx(2 / 3)
    relaxed = evaluate(TwoPixelsLow(pairs), pairs, tmp_path / "r2", tolerance=2, n_samples=0, progress=False)
    assert relaxed["clean"]["tolerance"]["micro"]["f1"] == 1.0


def test_degraded_evaluation_side_by_side(two_sources, tmp_path):
    from crackseg.degrade import degrade_image

    pairs = find_pairs(two_sources)
    oracle = Oracle(pairs)
    report = evaluate(oracle, pairs, tmp_path, n_samples=2, degrade="x4", degrade_seed=3, progress=False)
    # the oracle does not know the degraded photos, so it predicts nothing for them
    assert report["clean"]["micro"]["iou"] == 1.0 and report["degraded"]["micro"]["iou"] == 0.0
    assert report["degrade"] == {"scale": 4.0, "seed": 3}
    degraded_inputs = oracle.shapes[1 : 2 * len(pairs) : 2]
    assert [s[:2] for s in degraded_inputs] == [read_mask(p.mask).shape for p in pairs]  # same size as GT
    # the degraded photo is the real module's output for this image's seed
    image = read_image(pairs[0].image)
    expected = degrade_image(image, scale=4, seed=image_degrade_seed(3, pairs[0]))
    assert expected.tobytes() not in oracle.masks
    assert not np.array_equal(expected, image)
    _, rows = _load_report(tmp_path)
    assert {"degraded_iou", "degraded_f1", "degraded_hd95"} <= set(rows[0])
    with Image.open(tmp_path / "degradation.png") as img:
        assert img.format == "PNG"
    assert "| metric | clean | degraded |" in (tmp_path / "report.md").read_text()


def test_split_val_evaluates_the_training_validation_split(synthetic_root, tiny_model_dir, tmp_path):
    out = tmp_path / "val"
    argv = ["evaluate", "--data", str(synthetic_root), "--weights", str(tiny_model_dir), "--out", str(out)]
    assert main(argv + ["--split-val", "--samples", "0", "--tile", "128"]) == 0
    expected = split_pairs(find_all_pairs([synthetic_root], exclude_splits=("test",)), 0.1, seed=0)[1]
    report, rows = _load_report(out)
    assert 0 < len(rows) == len(expected) < 24
    assert sorted(r["name"] for r in rows) == sorted(p.name for p in expected)
    assert report["data"]["split"] == "val"
    assert not (out / "samples_random.png").exists()


# --- bad input ---------------------------------------------------------------------------------------------


def _run_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_missing_mask_is_a_clear_error(synthetic_root, tiny_model_dir, tmp_path, capsys):
    root = write_synthetic_dataset(tmp_path / "d", 2, size=(32, 32))
    (root / "train" / "masks" / "syn_001.png").unlink()
    message = _run_error(["evaluate", "--data", str(root), "--weights", str(tiny_model_dir), "--out", "x"], capsys)
    assert message.startswith("error:") and "syn_001.jpg: image has no mask" in message


def test_size_mismatch_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    root = write_synthetic_dataset(tmp_path / "d", 2, size=(32, 32))
    write_image(root / "train" / "masks" / "syn_000.png", np.zeros((30, 32), np.uint8))
    message = _run_error(["evaluate", "--data", str(root), "--weights", str(tiny_model_dir), "--out", "x"], capsys)
    assert "syn_000.png" in message and "32×30" in message


def test_empty_dataset_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "masks").mkdir()
    message = _run_error(["evaluate", "--data", str(tmp_path / "d"), "--out", "x"], capsys)
    assert "no image/mask pairs found" in message
    with pytest.raises(DataError, match="empty dataset"):
        evaluate(Oracle([]), [], tmp_path / "r")


def test_weights_that_are_not_a_crackseg_model(synthetic_root, tmp_path, capsys):
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"not a model at all")
    message = _run_error(["evaluate", "--data", str(synthetic_root), "--weights", str(bogus), "--out", "x"], capsys)
    assert "not a crackseg model" in message


def test_bad_degrade_value(two_sources, tmp_path):
    pairs = find_pairs(two_sources)
    with pytest.raises(InputError, match="x4"):
        evaluate(Oracle(pairs), pairs, tmp_path, degrade="fourfold", progress=False)


def test_an_earlier_report_is_replaced_only_with_overwrite(synthetic_root, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "metrics.json").write_text("an earlier run's\n")
    argv = ["evaluate", "--data", str(synthetic_root), "--model", "no-such-model", "--out", str(out)]
    message = _run_error(argv, capsys)  # refused before the (missing) model is looked up
    assert "metrics.json is there already" in message and "--overwrite" in message
    assert (out / "metrics.json").read_text() == "an earlier run's\n"
    argv = ["evaluate", "--data", str(synthetic_root), "--weights", str(tiny_model_dir), "--out", str(out)]
    assert main(argv + ["--samples", "0", "--tile", "128", "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["images"] == 24
    with pytest.raises(OutputExistsError, match="metrics.json"):
        evaluate(Oracle([]), [object()], out)
