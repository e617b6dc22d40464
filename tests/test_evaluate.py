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


# --- the paper protocol and clIoU ----------------------------------------------------------------------------


class PaperOracle(Oracle):
    """The Oracle, which also knows each photo's 512×512 copy and predicts the protocol's ground truth there."""

    def __init__(self, pairs):
        from crackseg.evaluate.paper import paper_image, paper_truth

        super().__init__(pairs)
        for p in pairs:
            self.masks[paper_image(read_image(p.image)).tobytes()] = paper_truth(read_mask(p.mask))


def test_paper_levels_and_truth():
    from crackseg.evaluate.paper import PAPER_SIZE, paper_image, paper_levels, paper_truth

    # divided by its own maximum, ×255, rounded half to even (127.5 → 128, 63.75 → 64)
    assert paper_levels(np.array([[0.2, 0.4, 0.1]])).tolist() == [[128, 255, 64]]
    assert paper_levels(np.full((2, 2), 0.1)).tolist() == [[255, 255], [255, 255]]  # a flat map becomes all crack
    assert not paper_levels(np.zeros((3, 3))).any()
    assert paper_image(np.zeros((64, 80, 3), np.uint8)).shape == (PAPER_SIZE, PAPER_SIZE, 3)
    mask = np.zeros((256, 128), bool)
    mask[64:192, 32:96] = True  # a block, stretched ×2 down and ×4 across
    truth = paper_truth(mask)
    assert truth.shape == (PAPER_SIZE, PAPER_SIZE)
    # bicubic, then > 127: the edges land where they should, the four corners (about a quarter of 255) are lost
    block = np.zeros_like(truth)
    block[128:384, 128:384] = True
    block[[128, 128, 383, 383], [128, 383, 128, 383]] = False
    assert np.array_equal(truth, block)


def test_paper_protocol_hand_computed_with_an_oracle(two_sources, tmp_path):
    """The oracle's map is 0.9 on the protocol's cracks and 0.1 elsewhere: 8-bit levels 255 and 28 (0.1 / 0.9 ×
    255 = 28.3), so every cracked image is perfect for t ≥ 0.11 (28/255 ≈ 0.1098) and imperfect below. The crack-free
    image of a/ scores F1 0 and mIoU 0 at every threshold (its flat 0.1 becomes 255 everywhere), so ODS = OIS =
    mIoU = 4/5 at 0.11; per source 2/3 (a/) and 1 (b/)."""
    pairs = find_pairs(two_sources)
    report = evaluate(PaperOracle(pairs), pairs, tmp_path, protocol="paper", cliou=4, n_samples=0, progress=False)
    clean = report["clean"]
    assert clean["paper"] == {
        "images": 5,
        "ods_f1": pytest.approx(0.8),
        "ods_threshold": 0.11,
        "ois_f1": pytest.approx(0.8),
        "miou": pytest.approx(0.8),
        "miou_threshold": 0.11,
    }
    assert clean["per_source"]["a"]["paper"]["ois_f1"] == pytest.approx(2 / 3)
    assert clean["per_source"]["b"]["paper"]["miou"] == pytest.approx(1.0)
    # the strict numbers beside them are the strict protocol's, untouched: the oracle is perfect there
    assert clean["micro"]["iou"] == clean["sweep"]["ods_f1"] == 1.0
    assert clean["cliou"] == {"radius": 4, "micro": 1.0, "mean": 1.0, "counts": clean["cliou"]["counts"]}
    assert clean["cliou"]["counts"]["fp"] == clean["cliou"]["counts"]["fn"] == 0 < clean["cliou"]["counts"]["tp"]
    report_md = (tmp_path / "report.md").read_text()
    assert "## Paper protocol (SCSegamba's evaluation script)" in report_md
    assert "| ODS F1 (threshold) | 0.800 (0.11) |" in report_md and "| a | 3 | 0.667 | 0.667 | 0.667 |" in report_md
    assert "| clIoU, 4 px (dataset) | 1.000 |" in report_md
    _, rows = _load_report(tmp_path)
    assert [r["cliou"] for r in rows] == ["1.000000"] * 5


def test_strict_report_has_no_paper_or_cliou_figures(two_sources, tmp_path):
    pairs = find_pairs(two_sources)
    report = evaluate(Oracle(pairs), pairs, tmp_path, n_samples=0, progress=False)
    assert "paper" not in report["clean"] and "cliou" not in report["clean"]
    assert "Paper protocol" not in (tmp_path / "report.md").read_text()
    _, rows = _load_report(tmp_path)
    assert "cliou" not in rows[0]


def test_bad_protocol_or_cliou_radius(two_sources, tmp_path):
    pairs = find_pairs(two_sources)
    with pytest.raises(InputError, match="strict, paper"):
        evaluate(Oracle(pairs), pairs, tmp_path, protocol="papers", progress=False)
    with pytest.raises(InputError, match="clIoU radius"):
        evaluate(Oracle(pairs), pairs, tmp_path, cliou=-1, progress=False)


def test_cli_paper_protocol_with_cliou(synthetic_root, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "paper"
    argv = ["evaluate", "--data", str(synthetic_root), "--weights", str(tiny_model_dir), "--out", str(out)]
    assert main(argv + ["--protocol", "paper", "--cliou", "4", "--samples", "0", "--tile", "128"]) == 0
    printed = capsys.readouterr().out
    assert "clean, paper protocol (512×512): ODS F1" in printed and "clIoU 4 px" in printed
    report, rows = _load_report(out)
    clean = report["clean"]
    assert clean["paper"]["images"] == report["images"] == len(rows) == 24
    assert clean["paper"]["ois_f1"] >= clean["paper"]["ods_f1"]  # each image at its own best threshold
    assert clean["cliou"]["radius"] == 4 and sum(clean["cliou"]["counts"].values()) > 0
    assert set(clean["per_source"]["syn"]) >= {"paper", "cliou"}
    assert sum(clean["counts"].values()) == 24 * 96 * 128  # the strict numbers still at full size
    assert "cliou" in rows[0]
    report_md = (out / "report.md").read_text()
    assert "## Paper protocol" in report_md and "| clIoU, 4 px (dataset) |" in report_md
