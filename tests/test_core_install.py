"""The core install: every command but training runs the shipped models without PyTorch.

Each test runs crackseg in a fresh interpreter where torch and the other training packages cannot be imported (as
after `pip install crackseg` without the `train` extra); `.ci/run` also builds a real core-only environment.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "crackseg" / "samples"
TRAINING_PACKAGES = ("torch", "torchvision", "segmentation_models_pytorch", "timm")
WITHOUT_TORCH = f"import sys\nfor name in {TRAINING_PACKAGES}:\n    sys.modules[name] = None  # import fails\n"


def run_without_torch(code: str, cwd: Path) -> subprocess.CompletedProcess:
    program = WITHOUT_TORCH + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", program], cwd=cwd, capture_output=True, text=True, timeout=600)


def crackseg_without_torch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_without_torch(f"from crackseg.cli import main\nsys.exit(main({args!r}))", cwd)


def test_the_blocker_really_hides_torch(tmp_path):
    done = run_without_torch("import torch", tmp_path)
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr


def test_predict_measure_and_compare_run_without_torch(tmp_path):
    photo = str(SAMPLES / "slide837.jpg")
    predict = crackseg_without_torch(["predict", photo, "-o", "pred", "--overlay"], tmp_path)
    assert predict.returncode == 0, predict.stderr
    assert (tmp_path / "pred" / "slide837.png").is_file()
    assert "auto:" in predict.stderr or "auto:" in predict.stdout  # the engine auto measured fastest, named
    measure = crackseg_without_torch(["measure", photo, "-o", "meas", "--pixel-size", "0.2"], tmp_path)
    assert measure.returncode == 0, measure.stderr
    summary = json.loads((tmp_path / "meas" / "slide837_measure.json").read_text())
    assert summary["cracks"] and summary["pixel_size_mm"] == 0.2
    compare = crackseg_without_torch(["compare", photo, photo, "-o", "cmp", "--backend", "onnx"], tmp_path)
    assert compare.returncode == 0, compare.stderr
    assert json.loads((tmp_path / "cmp" / "summary.json").read_text())["counts"]["new"] == 0


def test_evaluate_and_the_python_api_run_without_torch(tmp_path):
    shutil.copytree(SAMPLES / "held_out", tmp_path / "data" / "images", ignore=shutil.ignore_patterns("masks"))
    shutil.copytree(SAMPLES / "held_out" / "masks", tmp_path / "data" / "masks")
    evaluate = crackseg_without_torch(["evaluate", "--data", "data", "-o", "ev", "--backend", "openvino"], tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr
    assert (tmp_path / "ev" / "per_image.csv").is_file()
    api = run_without_torch(
        f"""
        from crackseg import CrackSegmenter
        seg = CrackSegmenter.from_pretrained(backend="onnx", precision="fp32")
        print(seg.predict({str(SAMPLES / "DJI2140.jpg")!r}).mask.mean())
        """,
        tmp_path,
    )
    assert api.returncode == 0, api.stderr
    assert 0 < float(api.stdout.strip()) < 0.5


def test_a_served_request_runs_without_torch(tmp_path):
    served = run_without_torch(
        f"""
        from fastapi.testclient import TestClient
        from crackseg import CrackSegmenter
        from crackseg.serve import create_app
        app = create_app(CrackSegmenter.from_pretrained(backend="onnx", precision="fp32"), workers=1)
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            photo = open({str(SAMPLES / "slide845.jpg")!r}, "rb").read()
            answer = client.post("/api/predict", files={{"file": ("p.jpg", photo, "image/jpeg")}})
        print(answer.status_code, len(answer.json()["measurements"]["cracks"]))
        """,
        tmp_path,
    )
    assert served.returncode == 0, served.stderr
    status, cracks = served.stdout.split()
    assert status == "200" and int(cracks) > 0


def test_int8_calibrates_and_is_judged_without_torch(tmp_path):
    args = ["export", "--model", "pspnet-r18", "--precision", "int8", "--calibration-crops", "8", "-o", "int8.onnx"]
    export = crackseg_without_torch(args, tmp_path)
    assert export.returncode == 0, export.stderr
    assert "mask agreement F1" in export.stdout and (tmp_path / "int8.onnx").is_file()


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--data", "d", "--out", "run"],
        ["predict", str(SAMPLES / "slide837.jpg"), "-o", "p", "--backend", "torch"],
    ],
)
def test_what_needs_torch_says_which_extra_to_install(tmp_path, args):
    done = crackseg_without_torch(args, tmp_path)
    assert done.returncode != 0
    assert "crackseg[train]" in done.stderr and "Traceback" not in done.stderr
