"""Regression tests for the bad-input report: every odd input ends in a clear one-line error naming the file or
option, or in a correct result; nothing is lost or overwritten. (Output-name collisions and output folders that
hold the inputs: test_inference.py.)"""

import io
import json
import shutil
import zlib

import numpy as np
import pytest
from PIL import Image

from crackseg.cli import main
from crackseg.errors import InputError, InputTypeError
from crackseg.inference import CrackSegmenter
from crackseg.io.images import (
    ImageReadError,
    NotAnImageError,
    TooManyPixelsError,
    read_image,
    to_rgb_uint8,
    write_image,
)
from crackseg.measure import measure
from crackseg.models.config import DEFAULT_MODEL, WEIGHTS_DIR, ModelError, read_config, resolve_weights
from crackseg.synthetic import synthetic_crack


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    write_image(folder / "p.jpg", synthetic_crack((48, 48), seed=0)[0])
    return folder


@pytest.mark.parametrize(
    "option,value,says",
    [
        ("--batch-size", "-2", "(batch_size) -2: must be at least 1"),
        ("--batch-size", "0", "(batch_size) 0: must be at least 1"),
        ("--batch-size", "2.5", "(batch_size) 2.5: must be a whole number"),
        ("--tile", "7", "(tile) 7: must be a multiple of 32"),
        ("--tile", "0", "(tile) 0: must be a multiple of 32"),
        ("--threshold", "1.5", "(threshold) 1.5: must lie strictly between 0 and 1"),
        ("--threshold", "-1", "(threshold) -1: must lie strictly between 0 and 1"),
        ("--max-pixels", "0", "(max_pixels) 0: must be above 0"),
        ("--max-pixels", "-5", "(max_pixels) -5: must be above 0"),
        ("--max-pixels", "nan", "(max_pixels) nan: must be a positive finite number"),
        ("--max-pixels", "inf", "(max_pixels) inf: must be a positive finite number"),
        ("--device", "banana", "(device) banana: expected cpu, cuda or cuda:N"),
        ("--overlap", "1", "(overlap) 1: must be below 1"),
    ],
)
def test_bad_numbers_are_refused_before_any_work(photo_dir, tmp_path, capsys, option, value, says):
    assert main(["predict", str(photo_dir), "-o", str(tmp_path / "out"), f"{option}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert option in err and says in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_the_python_api_applies_the_same_rules(tiny_model_dir):
    with pytest.raises(InputError, match=r"\(threshold\) 1.5"):
        CrackSegmenter.from_pretrained(tiny_model_dir, threshold=1.5)
    with pytest.raises(InputError, match=r"\(tile\) 7"):
        CrackSegmenter.from_pretrained(tiny_model_dir, tile=7)
    with pytest.raises(InputError, match=r"\(batch_size\) 0"):
        CrackSegmenter.from_pretrained(tiny_model_dir, batch_size=0)
    seg = CrackSegmenter.from_pretrained(tiny_model_dir)
    with pytest.raises(InputError, match=r"\(threshold\) -1"):
        seg.predict(np.zeros((32, 32, 3), np.uint8), threshold=-1)


def _bomb_png(path, side: int) -> None:
    """A valid PNG header declaring side×side grey pixels, with a tiny (truncated) image stream."""
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    body = chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + body)


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    _bomb_png(tmp_path / "bomb.png", 30_000)
    with pytest.raises(
        ImageReadError, match=r"bomb.png: too large \(30000×30000 = 900 MP exceeds the limit of 500 MP\)"
    ):
        read_image(tmp_path / "bomb.png")  # refused before decoding: no 900 MP buffer, no 20 s
    with pytest.raises(ImageReadError, match="exceeds the limit of 1 MP"):
        read_image(tmp_path / "bomb.png", max_pixels=1e6)


def test_a_stream_is_read_as_a_file_is(tmp_path):
    photo = tmp_path / "photo.png"
    write_image(photo, synthetic_crack((48, 64))[0])
    assert np.array_equal(read_image(io.BytesIO(photo.read_bytes()), name="upload.png"), read_image(photo))
    _bomb_png(tmp_path / "bomb.png", 30_000)
    with (
        open(tmp_path / "bomb.png", "rb") as stream,
        pytest.raises(TooManyPixelsError, match=r"upload.png: too large \(30000×"),
    ):
        read_image(stream, name="upload.png")
    with pytest.raises(NotAnImageError, match="upload.txt: not an image"):
        read_image(io.BytesIO(b"hello"), name="upload.txt")


def test_float_and_wide_integer_images_keep_their_content(tmp_path):
    photo = synthetic_crack((40, 40), seed=3)[0]
    grey = photo[:, :, 0]
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "float01.tif")  # PIL mode "F", in [0, 1]
    assert Image.open(tmp_path / "float01.tif").mode == "F"
    assert np.abs(read_image(tmp_path / "float01.tif")[:, :, 0].astype(int) - grey).max() <= 1
    assert np.array_equal(to_rgb_uint8(grey.astype(np.uint16)), to_rgb_uint8(grey))  # 0–255 held in uint16
    assert to_rgb_uint8(np.full((4, 4), 65535, np.uint16)).max() == 255  # real 16-bit data is scaled down
    with pytest.raises(InputError, match="NaN or infinite"):
        to_rgb_uint8(np.array([[0.5, np.nan]], np.float32))


@pytest.mark.parametrize(
    "image,error,says",
    [
        (None, InputTypeError, "cannot segment a NoneType: pass a file path, a PIL image or a numpy array"),
        (b"\xff\xd8", InputTypeError, "cannot segment a bytes"),
        (np.zeros((0, 0, 3), np.uint8), InputError, "empty image"),
    ],
)
def test_the_python_api_names_what_it_accepts(tiny_model_dir, image, error, says):
    seg = CrackSegmenter.from_pretrained(tiny_model_dir)
    with pytest.raises(error, match=says):
        seg.predict(image)


def test_an_all_white_mask_is_flagged_and_its_width_bounded(tmp_path, caplog):
    result = measure(np.ones((300, 300), bool))
    assert result.warnings and "unlikely to be a crack mask" in result.warnings[0]
    assert all(c.width_max_px <= 300 for c in result.cracks)
    write_image(tmp_path / "white.png", np.full((300, 300), 255, np.uint8))
    assert main(["measure", str(tmp_path / "white.png"), "--masks", "-o", str(tmp_path / "out")]) == 0
    assert "white.png: 100% of the mask is crack" in caplog.text  # the command prints it as a WARNING line
    report = json.loads((tmp_path / "out" / "white_measure.json").read_text())
    assert report["warnings"]


def test_config_json_beside_the_weights_wins_and_a_broken_one_is_named(tiny_model_dir, tmp_path):
    model = shutil.copytree(tiny_model_dir, tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "threshold": 0.95}))
    assert read_config(resolve_weights(model)).threshold == 0.95  # the edited sidecar counts
    assert CrackSegmenter.from_pretrained(model).threshold == 0.95
    (model / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"m/config.json: invalid model config"):
        read_config(resolve_weights(model))


def test_unusable_output_folders_fail_before_the_model_loads(photo_dir, tmp_path, capsys):
    afile = tmp_path / "taken"
    afile.write_text("x")
    assert main(["predict", str(photo_dir), "-o", str(afile), "--model", "no-such"]) == 2
    assert f"-o {afile}: is a file, not a folder" in capsys.readouterr().err
    assert main(["predict", str(photo_dir), "-o", str(afile / "sub"), "--model", "no-such"]) == 2
    assert f"-o {afile / 'sub'}: cannot write there" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(afile), "-o", str(tmp_path / "r")]) == 2
    assert f"{afile}: is a file; pass the folder" in capsys.readouterr().err


def test_only_the_users_errors_become_one_line_messages(photo_dir, tmp_path, monkeypatch, capsys):
    import crackseg.runs.predict
    from crackseg.errors import CracksegError

    for error in (ModelError, ImageReadError, InputError):
        assert issubclass(error, CracksegError)

    def bug(*args, **kwargs):
        raise KeyError("a bug, not a user error")

    # inside the per-photo loop: a batch reports the users' errors per photo and goes on, but a bug stops it
    monkeypatch.setattr(crackseg.runs.predict, "predict_photo", bug)
    with pytest.raises(KeyError):  # keeps its traceback instead of passing for a user error
        main(["predict", str(photo_dir), "-o", str(tmp_path / "out"), "--backend", "torch"])


def test_export_never_replaces_a_photo_the_model_or_an_earlier_export_unasked(tiny_model_dir, tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    write_image(photo, synthetic_crack((32, 32), seed=0)[0])
    before = photo.read_bytes()
    weights = tiny_model_dir / "model.safetensors"
    model_bytes = weights.read_bytes()
    for out, says in (
        (photo, "name a .onnx file"),
        (weights, "is the model being exported"),
        (tmp_path, "is a folder"),
    ):
        assert main(["export", "--weights", str(tiny_model_dir), "-o", str(out), "--overwrite"]) == 2
        assert says in capsys.readouterr().err
    assert photo.read_bytes() == before and weights.read_bytes() == model_bytes
    earlier = tmp_path / "model.onnx"
    earlier.write_bytes(b"an earlier export")
    assert main(["export", "--weights", str(tiny_model_dir), "-o", str(earlier)]) == 2
    assert "add --overwrite" in capsys.readouterr().err and earlier.read_bytes() == b"an earlier export"
    shipped = WEIGHTS_DIR / DEFAULT_MODEL / "model.onnx"
    assert main(["export", "--weights", str(shipped), "-o", str(shipped), "--overwrite"]) == 2
    assert "is the model being exported" in capsys.readouterr().err


def test_a_photo_given_as_weights_is_one_line(photo_dir, tmp_path, capsys):
    assert main(["predict", str(photo_dir), "-o", str(tmp_path / "out"), "--weights", str(photo_dir / "p.jpg")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "p.jpg: not a model file" in err


def test_resuming_a_missing_run_says_so(tmp_path, capsys):
    assert main(["train", "--resume", "--out", str(tmp_path / "missing")]) == 2
    assert f"no run to resume in {tmp_path / 'missing'}" in capsys.readouterr().err


@pytest.mark.parametrize("option,value", [("--pixel-size", "inf"), ("--pixel-size", "0"), ("--min-length", "nan")])
def test_measure_refuses_unusable_numbers_before_writing_anything(photo_dir, tmp_path, capsys, option, value):
    out = tmp_path / "out"
    assert main(["measure", str(photo_dir), "--masks", "-o", str(out), option, value]) == 2
    assert f"{option} " in capsys.readouterr().err
    assert not out.exists()


def test_the_python_api_refuses_what_the_command_line_refuses():
    mask = np.zeros((40, 40), bool)
    mask[20, 5:35] = True
    for values in ({"min_length": float("nan")}, {"pixel_size_mm": float("inf")}, {"direction_deg": float("nan")}):
        with pytest.raises(InputError):
            measure(mask, **values)
