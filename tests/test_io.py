"""The I/O rules: masks of any two values, photos of any bit depth, whole-or-nothing writes that name the file,
what a killed run leaves cleared by the next, and no-data carried into raster outputs."""

import errno
import os

import numpy as np
import pytest
import rasterio
from PIL import Image

from crackseg.cli import main
from crackseg.errors import InputError
from crackseg.inference import CrackSegmenter
from crackseg.io.atomic import atomic_write_bytes
from crackseg.io.images import read_image, read_mask, to_rgb_uint8, write_image
from crackseg.models.config import ModelConfig
from crackseg.runs.predict import predict_files, segment_raster
from crackseg.synthetic import synthetic_crack
from tests.test_inference import LocalNet
from tests.test_rasters import write_geotiff


@pytest.mark.parametrize("crack_value", [1, 2, 100, 255])
def test_a_two_valued_mask_is_background_and_crack_whatever_the_values(tmp_path, crack_value):
    values = np.zeros((40, 60), np.uint8)
    values[10:13, 5:55] = crack_value  # a little crack: under 10 % of the pixels
    Image.fromarray(values).save(tmp_path / "m.png")
    assert np.array_equal(read_mask(tmp_path / "m.png"), values > 0)


def test_a_mask_of_more_than_two_values_is_an_error_naming_the_file(tmp_path):
    values = np.zeros((40, 60), np.uint8)
    values[5:10], values[20:25] = 1, 2  # class indices of two classes
    Image.fromarray(values).save(tmp_path / "classes.png")
    with pytest.raises(InputError, match=r"classes.png: not a binary mask \(3 different values"):
        read_mask(tmp_path / "classes.png")


def test_a_jpeg_mask_keeps_its_binarisation(tmp_path):
    values = np.zeros((64, 64), np.uint8)
    values[20:30] = 255
    Image.fromarray(values).save(tmp_path / "m.jpg", quality=70)  # grey values at the edges
    assert len(np.unique(np.asarray(Image.open(tmp_path / "m.jpg")))) > 2
    assert np.abs(read_mask(tmp_path / "m.jpg").astype(int) - (values > 0)).sum() <= 64


def test_a_measure_of_a_zero_two_mask_finds_its_crack(tmp_path, capsys):
    values = np.zeros((60, 200), np.uint8)
    values[28:32, 10:190] = 2
    Image.fromarray(values).save(tmp_path / "in.png")
    assert main(["measure", str(tmp_path / "in.png"), "--masks", "-o", str(tmp_path / "out"), "--formats", "csv"]) == 0
    assert "1 cracks" in capsys.readouterr().out


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_sensor_depths_in_16_bit_files_are_scaled_by_their_own_range(tmp_path, bits):
    photo = synthetic_crack((64, 96), seed=1)[0][..., 0]
    wide = np.round(photo.astype(np.float64) / 255 * (2**bits - 1)).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "deep.png")
    assert np.abs(read_image(tmp_path / "deep.png")[..., 0].astype(int) - photo).max() <= 1


def test_float_photos_in_minus_one_to_one_are_not_clipped_to_black():
    photo = synthetic_crack((32, 32), seed=2)[0]
    signed = photo.astype(np.float32) / 127.5 - 1.0
    assert np.abs(to_rgb_uint8(signed).astype(int) - photo).max() <= 1


def test_a_failed_write_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match=r"out.png: cannot write it \(No space left on device\)"):
        atomic_write_bytes(tmp_path / "out.png", b"data")
    assert list(tmp_path.iterdir()) == []


def test_a_later_run_clears_what_a_killed_run_left_of_its_own_outputs_only(tmp_path):
    photos = tmp_path / "photos"
    write_image(photos / "site.png", synthetic_crack((48, 64), seed=3)[0])
    out = tmp_path / "out"
    out.mkdir()
    debris = [out / ".site.png.k1l2.tmp", out / ".site_mask.x9.tmp"]
    debris[0].write_bytes(b"")
    debris[1].mkdir()
    other = [out / ".other.png.k1l2.tmp", out / "notes.txt"]  # not this run's: kept
    for path in other:
        path.write_bytes(b"")
    main(["measure", str(photos / "site.png"), "--masks", "-o", str(out), "--formats", "json"])
    predict_files(CrackSegmenter(LocalNet(), ModelConfig(), tile=64, precision="fp32"), photos, out, progress=False)
    assert not any(path.exists() for path in debris[:1])
    assert all(path.exists() for path in other)


def test_a_photo_raster_measured_in_blocks_leaves_no_temporary_mask_behind(tmp_path):
    image = synthetic_crack((300, 300), seed=4)[0]
    write_geotiff(tmp_path / "deck.tif", image)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".deck_mask.abc.tmp").mkdir()  # what a killed run of the same input left
    segmenter = CrackSegmenter(LocalNet(), ModelConfig(), tile=64, precision="fp32")
    from crackseg.runs.measure import measure_files

    assert measure_files([tmp_path / "deck.tif"], out, segmenter, formats=("json",), block=256, progress=False)[0]
    assert sorted(p.name for p in out.iterdir()) == ["deck_measure.json"]


def test_no_data_is_carried_into_the_raster_outputs(tmp_path):
    image = synthetic_crack((200, 240), seed=5)[0]
    image[:, :60] = 0  # a no-data strip
    write_geotiff(tmp_path / "ortho.tif", image, nodata=0)
    segmenter = CrackSegmenter(LocalNet(), ModelConfig(), tile=64, precision="fp32", threshold=0.01)
    segment_raster(segmenter, tmp_path / "ortho.tif", tmp_path / "mask.tif", tmp_path / "prob.tif", block=128)
    for name in ("mask.tif", "prob.tif"):
        with rasterio.open(tmp_path / name) as out:
            valid = out.dataset_mask()
        assert (valid[:, :60] == 0).all() and (valid[:, 60:] == 255).all()


def test_a_single_path_is_one_input_not_its_characters(tmp_path):
    photos = tmp_path / "in1"
    write_image(photos / "a.png", synthetic_crack((48, 64), seed=6)[0])
    segmenter = CrackSegmenter(LocalNet(), ModelConfig(), tile=64, precision="fp32")
    assert predict_files(segmenter, str(photos), tmp_path / "out2", progress=False) == (1, [])


def test_a_folder_without_photos_is_an_error_not_an_empty_success(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 2
    assert "no photos found" in capsys.readouterr().err
