"""GeoTIFFs segmented block by block: outputs on the input's grid and CRS, the same probabilities as a whole-image
pass, nodata never a crack, 16-bit and 4-band rasters read as RGB; TIFFs without a CRS over the photo limit too."""

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

import crackseg.io.rasters
import crackseg.runs.predict
from crackseg.cli import main
from crackseg.inference import CrackSegmenter
from crackseg.io.rasters import RasterError, check_disk_space
from crackseg.models.networks import ModelConfig
from crackseg.options import DEFAULT_MAX_PIXELS, DEFAULT_MAX_RASTER_PIXELS
from crackseg.runs.predict import predict_files, segment_raster
from crackseg.synthetic import synthetic_crack
from tests.test_inference import LocalNet

TRANSFORM = from_origin(500_000.0, 5_400_000.0, 0.0005, 0.0005)  # 0.5 mm pixels in UTM 33N


def write_geotiff(path, image: np.ndarray, **extra) -> None:
    bands = np.moveaxis(image, -1, 0)
    profile = {"driver": "GTiff", "height": image.shape[0], "width": image.shape[1], "count": bands.shape[0]}
    profile |= {"dtype": str(image.dtype), "crs": "EPSG:32633", "transform": TRANSFORM, **extra}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)


@pytest.fixture(scope="module")
def local_segmenter():
    return CrackSegmenter(LocalNet(), ModelConfig(train_size=96), tile=96, overlap=0.25, precision="fp32")


def test_blocks_give_the_whole_image_probabilities_on_the_input_grid(local_segmenter, tmp_path):
    image, _ = synthetic_crack((530, 700), seed=3, n_cracks=4)
    write_geotiff(tmp_path / "ortho.tif", image)
    out = tmp_path / "out"
    out.mkdir()
    segment_raster(local_segmenter, tmp_path / "ortho.tif", out / "ortho.tif", out / "ortho_prob.tif", block=128)
    whole = local_segmenter.predict_prob(image)
    with rasterio.open(out / "ortho_prob.tif") as prob, rasterio.open(out / "ortho.tif") as mask:
        assert prob.crs.to_epsg() == 32633 and prob.transform == TRANSFORM and prob.shape == (530, 700)
        assert mask.read(1).max() in (0, 255)
        # a local network: block seams must not show (probabilities stored ×255, so one grey level apart at most)
        assert np.abs(prob.read(1).astype(int) - np.round(whole * 255)).max() <= 1
    assert sorted(p.name for p in out.iterdir()) == ["ortho.tif", "ortho_prob.tif"]  # no temporary file left


def test_nodata_is_never_a_crack_and_16_bit_rgba_is_read(local_segmenter, tmp_path):
    image, _ = synthetic_crack((200, 260), seed=4, n_cracks=3)
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]).astype(np.uint16) * 257
    rgba[:, :100, 3] = 0  # the left part lies outside the survey
    write_geotiff(tmp_path / "deck.tif", rgba, photometric="RGB", alpha="YES")
    low = CrackSegmenter(LocalNet(), ModelConfig(), tile=96, precision="fp32", threshold=0.01)  # everything cracks
    segment_raster(low, tmp_path / "deck.tif", tmp_path / "deck_mask.tif", block=128)
    with rasterio.open(tmp_path / "deck_mask.tif") as mask:
        values = mask.read(1)
    assert not values[:, :100].any() and values[:, 100:].all()


def test_predict_command_writes_geotiffs_for_georeferenced_inputs(tiny_model_dir, tmp_path):
    image, _ = synthetic_crack((120, 150), seed=5, n_cracks=2)
    write_geotiff(tmp_path / "site.tif", image)
    argv = ["predict", str(tmp_path / "site.tif"), "-o", str(tmp_path / "out"), "--weights", str(tiny_model_dir)]
    assert main([*argv, "--tile", "64", "--prob", "--backend", "torch"]) == 0
    with rasterio.open(tmp_path / "out" / "site.tif") as mask:
        assert mask.crs.to_epsg() == 32633 and mask.shape == (120, 150)
    assert (tmp_path / "out" / "site_prob.tif").is_file() and not (tmp_path / "out" / "site.png").exists()


def test_a_geotransform_without_a_crs_keeps_its_grid(local_segmenter, tmp_path):
    """A scan placed by a geotransform alone (no CRS): its mask is a GeoTIFF on the same grid, not a PNG."""
    image, _ = synthetic_crack((120, 150), seed=5, n_cracks=2)
    write_geotiff(tmp_path / "scan.tif", image, crs=None)
    assert predict_files(local_segmenter, [str(tmp_path / "scan.tif")], tmp_path / "out", progress=False) == (1, [])
    with rasterio.open(tmp_path / "out" / "scan.tif") as mask:
        assert mask.crs is None and mask.transform == TRANSFORM and mask.shape == (120, 150)
    assert not (tmp_path / "out" / "scan.png").exists()


def test_a_raster_the_disk_cannot_hold_is_refused_before_starting(tmp_path):
    with pytest.raises(RasterError, match="GB free, the outputs may need up to"):
        check_disk_space(tmp_path, 10**7, 10**7, write_prob=True)


def test_the_pixel_limit_applies_to_rasters_from_their_header(local_segmenter, tmp_path):
    write_geotiff(tmp_path / "big.tif", np.zeros((100, 100, 3), np.uint8))
    small = CrackSegmenter(LocalNet(), ModelConfig(), tile=96, precision="fp32", max_pixels=5000)
    written, failures = predict_files(small, [str(tmp_path / "big.tif")], tmp_path / "out", progress=False)
    assert written == 0 and "exceeds the limit" in failures[0]


def test_rasters_have_their_own_default_pixel_limit_and_an_explicit_one_is_both():
    default = CrackSegmenter(LocalNet(), ModelConfig(), tile=96, precision="fp32")
    assert (default.max_pixels, default.max_raster_pixels) == (DEFAULT_MAX_PIXELS, DEFAULT_MAX_RASTER_PIXELS)
    assert DEFAULT_MAX_RASTER_PIXELS >= 40_000**2  # the orthomosaics block-wise processing is for
    explicit = CrackSegmenter(LocalNet(), ModelConfig(), tile=96, precision="fp32", max_pixels=5000)
    assert explicit.max_pixels == explicit.max_raster_pixels == 5000


def write_plain_tiff(path, image: np.ndarray) -> None:
    """A TIFF without a CRS or transform, as a stitched scan of a tunnel lining comes."""
    bands = np.moveaxis(np.atleast_3d(image), -1, 0)
    profile = {"driver": "GTiff", "height": image.shape[0], "width": image.shape[1], "count": bands.shape[0]}
    with crackseg.io.rasters.open_raster(path, "w", dtype=str(image.dtype), **profile) as dst:
        dst.write(bands)


def test_a_tiff_without_crs_over_the_photo_limit_is_segmented_in_blocks_not_refused(tmp_path, recwarn):
    image, _ = synthetic_crack((300, 400), seed=6, n_cracks=3)
    write_plain_tiff(tmp_path / "lining.tif", image)
    segmenter = CrackSegmenter(LocalNet(), ModelConfig(), tile=96, precision="fp32")
    whole = segmenter.predict_prob(image)
    segmenter.max_pixels = 300 * 400 - 1  # the photo limit just below it; the raster limit stays the default
    # blocks (with their margins) under that limit, as the default 4,096² blocks are under the default one
    inputs, out = [str(tmp_path / "lining.tif")], tmp_path / "out"
    assert predict_files(segmenter, inputs, out, write_prob=True, progress=False, block=64) == (1, [])
    with rasterio.open(out / "lining.tif") as mask, rasterio.open(out / "lining_prob.tif") as prob:
        assert mask.crs is None and prob.crs is None and mask.shape == (300, 400)
        assert np.abs(prob.read(1).astype(int) - np.round(whole * 255)).max() <= 1
    assert not (out / "lining.png").exists()
    assert not [w for w in recwarn if w.category is rasterio.errors.NotGeoreferencedWarning]
    # at the default photo limit the same file is a photo: a PNG mask
    segmenter.max_pixels = DEFAULT_MAX_PIXELS
    assert predict_files(segmenter, [str(tmp_path / "lining.tif")], tmp_path / "photo", progress=False)[0] == 1
    assert (tmp_path / "photo" / "lining.png").is_file()


def test_a_mask_tiff_without_crs_over_the_photo_limit_is_measured_in_blocks(tmp_path):
    from crackseg.measure import measure
    from crackseg.runs.measure import measure_files

    mask = synthetic_crack((300, 340), seed=7, n_cracks=2)[1]
    write_plain_tiff(tmp_path / "lining_mask.tif", mask.astype(np.uint8) * 255)
    out = tmp_path / "out"
    measured, cracks, failures = measure_files(
        [str(tmp_path / "lining_mask.tif")], out, None, progress=False, block=256, max_pixels=300 * 340 - 1
    )
    report = json.loads((out / "lining_mask_measure.json").read_text())
    assert (measured, failures) == (1, []) and report["blocks"]["block_px"] == 256
    whole = measure(mask)
    assert cracks == len(whole.cracks) > 0
    assert report["summary"]["total_length_px"] == pytest.approx(whole.total_length_px, rel=0.02)
