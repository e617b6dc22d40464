"""Measuring a large mask block by block (measure.measure_blocks, `crackseg measure` on big GeoTIFFs): the same
cracks as `measure` on the whole mask, whatever seams they cross."""

from __future__ import annotations

import json

import ezdxf
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely

from crackseg.cli import main
from crackseg.measure import measure, measure_blocks
from crackseg.runs.measure import measure_files
from tests.fakes import darkness_segmenter
from tests.test_outputs import TRANSFORM, band, crack_mask, write_geotiff

SIDE = 1500
BLOCK, HALO = 256, 56  # seams every 256 px; a halo for cracks up to (56 − 32) / 2 = 12 px wide
# Known cracks: (x, y) ends in image coordinates, width px.
CRACKS = [
    ((40, 130), (1450, 170), 3),  # over five vertical seams
    ((300, 260), (330, 1450), 6),  # over five horizontal seams
    ((768, 300), (768, 1000), 4),  # along the seam x = 768: two pixels on each side of it
    ((1100, 300), (1100, 800), 5),  # a branched crack: the stem ...
    ((1100, 550), (1400, 750), 5),  # ... and its branch, over the seam x = 1280
    ((450, 1100), (950, 1400), 9),  # diagonal, through the corner where four blocks meet at (768, 1280)
    ((500, 700), (700, 400), 1.5),  # thinner than the photo resolves
]
RING = ((1250, 1200), 150, 3)  # centre, radius, width: a loop over four blocks


def seam_scene() -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), bool)
    for p0, p1, width in CRACKS:
        mask |= band(mask.shape, p0, p1, width)
    (cx, cy), radius, width = RING
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] + 0.5
    mask |= np.abs(np.hypot(xx - cx, yy - cy) - radius) <= width / 2
    rng = np.random.default_rng(0)
    mask[rng.integers(0, SIDE, 300), rng.integers(0, SIDE, 300)] = True  # specks, dropped
    return mask


@pytest.fixture(scope="module")
def both():
    mask = seam_scene()
    whole = measure(mask, pixel_size_mm=0.5)
    blocks = measure_blocks(
        lambda row, col, height, width: mask[row : row + height, col : col + width],
        mask.shape,
        pixel_size_mm=0.5,
        block=BLOCK,
        halo=HALO,
    )
    return whole, blocks


def test_blocks_find_the_whole_masks_cracks(both):
    whole, blocks = both
    assert whole.count == blocks.count == 7 and blocks.dropped == whole.dropped > 250 and not blocks.warnings
    for a, b in zip(whole.cracks, blocks.cracks, strict=True):  # in the same order: by their first pixel
        assert b.length_px == pytest.approx(a.length_px, rel=0.01)
        for stat in ("width_mean_px", "width_median_px", "width_p95_px", "width_max_px"):
            assert abs(getattr(b, stat) - getattr(a, stat)) <= 0.25, (a.id, stat)
        assert (b.crack_class, b.branched, b.width_class, b.below_resolution) == (
            a.crack_class,
            a.branched,
            a.width_class,
            a.below_resolution,
        )
        assert (b.area_px, b.bbox, b.endpoints, b.branch_points) == (a.area_px, a.bbox, a.endpoints, a.branch_points)
        assert abs(b.orientation_deg - a.orientation_deg) <= 0.1
    assert len(blocks.skeleton_rows) == len(whole.skeleton_rows)  # every skeleton pixel once
    widths = {round(c.width_median_px) for c in blocks.cracks if not c.branched}
    assert widths == {2, 3, 4, 6, 9}  # the drawn widths (1.5 px reads as 2)
    branched = [c for c in blocks.cracks if c.branched]
    assert sorted(c.endpoints for c in branched) == [0, 3]  # the ring and the Y


def test_centrelines_are_continuous_across_seams(both):
    whole, blocks = both
    for a, b in zip(whole.centrelines, blocks.centrelines, strict=True):
        assert len(b) == len(a)  # pieces merged: a straight crack over five seams is one line, the Y three
        lines_a, lines_b = shapely.MultiLineString(a), shapely.MultiLineString(b)
        assert lines_b.length == pytest.approx(lines_a.length, rel=0.01)
        assert lines_b.hausdorff_distance(lines_a) <= 1.5  # the simplification's tolerance, on either side


def test_one_block_is_the_whole_mask_measurement(both):
    whole, _ = both
    mask = seam_scene()
    again = measure_blocks(lambda *w: mask, mask.shape, pixel_size_mm=0.5, block=SIDE)
    assert again.cracks == whole.cracks
    assert all(np.array_equal(p, q) for a, b in zip(again.centrelines, whole.centrelines) for p, q in zip(a, b))


def test_a_crack_wider_than_the_halo_supports_is_said():
    mask = band((300, 300), (10, 150), (290, 150), 14)
    result = measure_blocks(lambda r, c, h, w: mask[r : r + h, c : c + w], mask.shape, block=100, halo=40)
    assert result.count == 1 and "halo of 40 px" in result.warnings[0]


# --- `crackseg measure` on a GeoTIFF, through the blocks ------------------------------------------------------


def features(folder, stem):
    doc = json.loads((folder / f"{stem}_cracks.geojson").read_text())
    return {f["id"]: f for f in doc["features"]}


def test_measure_command_in_blocks_writes_the_whole_images_maps(tmp_path):
    """test_outputs' GeoTIFF (600 × 400, three cracks) in 256 px blocks: 2 × 3 blocks, every crack over seams."""
    write_geotiff(tmp_path / "deck.tif", crack_mask())
    argv = ["measure", str(tmp_path / "deck.tif"), "--masks", "--classes", "pavement"]
    assert main([*argv, "-o", str(tmp_path / "whole")]) == 0
    assert main([*argv, "-o", str(tmp_path / "blocks"), "--block", "256"]) == 0

    report = json.loads((tmp_path / "blocks" / "deck_measure.json").read_text())
    assert report["blocks"]["block_px"] == 256 and "overview" in report["blocks"]["width_figure"]
    assert "blocks" not in json.loads((tmp_path / "whole" / "deck_measure.json").read_text())
    whole, blocks = features(tmp_path / "whole", "deck"), features(tmp_path / "blocks", "deck")
    assert len(blocks) == len(whole) == 3
    for crack_id, feature in blocks.items():
        assert feature["properties"] == whole[crack_id]["properties"]
        (line,) = feature["geometry"]["coordinates"]  # one line: the pieces from each block joined
        (expected,) = whole[crack_id]["geometry"]["coordinates"]
        line, expected = shapely.LineString(line), shapely.LineString(expected)
        assert line.length == pytest.approx(expected.length, rel=0.01)
        assert line.hausdorff_distance(expected) < 1e-5  # degrees: about a metre; the pixels are 0.5 mm

    def gpkg(folder):
        meta, _, wkb, columns = pyogrio.raw.read(folder / "deck_cracks.gpkg")
        table = dict(zip(meta["fields"], columns, strict=True))
        return table, shapely.from_wkb(wkb)

    (table_w, geometry_w), (table_b, geometry_b) = gpkg(tmp_path / "whole"), gpkg(tmp_path / "blocks")
    assert list(table_b["id"]) == list(table_w["id"]) and list(table_b["len_mm"]) == list(table_w["len_mm"])
    for a, b in zip(geometry_w, geometry_b, strict=True):
        assert shapely.get_num_geometries(b) == 1 and b.length == pytest.approx(a.length, rel=0.01)

    def dxf_lengths(folder):
        lines = ezdxf.readfile(folder / "deck_cracks.dxf").modelspace().query("LWPOLYLINE")
        return sorted(shapely.LineString([p[:2] for p in line.get_points("xy")]).length for line in lines)

    assert dxf_lengths(tmp_path / "blocks") == pytest.approx(dxf_lengths(tmp_path / "whole"), rel=0.01)
    assert (tmp_path / "blocks" / "cracks.csv").read_text() == (tmp_path / "whole" / "cracks.csv").read_text()
    assert (tmp_path / "blocks" / "deck_width.png").is_file()


def test_a_large_photo_is_segmented_in_blocks_to_a_temporary_mask(tmp_path):
    photo = np.where(crack_mask()[..., None], 30, 200).astype(np.uint8).repeat(3, axis=2)
    write_geotiff_rgb(tmp_path / "site.tif", photo)
    runs = {}
    for name, block in (("whole", 4096), ("blocks", 256)):
        out = tmp_path / name
        measured, cracks, failures = measure_files(
            [str(tmp_path / "site.tif")], out, darkness_segmenter(), progress=False, formats=("json",), block=block
        )
        assert (measured, cracks, failures) == (1, 3, [])
        assert sorted(p.name for p in out.iterdir()) == ["site_measure.json"]  # the temporary mask is gone
        runs[name] = json.loads((out / "site_measure.json").read_text())
    assert runs["blocks"]["blocks"]["segmented_in_blocks"] is True and runs["blocks"]["source"] == "photo"
    assert runs["blocks"]["cracks"] == runs["whole"]["cracks"]


def write_geotiff_rgb(path, image: np.ndarray) -> None:
    """An RGB photo on test_outputs' grid (EPSG:32633, 0.5 mm pixels)."""
    profile = {"driver": "GTiff", "height": image.shape[0], "width": image.shape[1], "count": 3, "dtype": "uint8"}
    with rasterio.open(path, "w", **profile, crs="EPSG:32633", transform=TRANSFORM) as dst:
        dst.write(np.moveaxis(image, -1, 0))


def test_a_block_too_small_to_be_worth_its_halo_is_refused(tmp_path, capsys):
    write_geotiff(tmp_path / "deck.tif", crack_mask())
    assert main(["measure", str(tmp_path / "deck.tif"), "--masks", "-o", str(tmp_path / "out"), "--block", "100"]) == 2
    assert "--block (block) 100: must be at least 256" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work
