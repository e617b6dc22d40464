"""Crack maps: GeoJSON, GeoPackage, DXF, CSV and summary JSON from `crackseg measure`, on generated GeoTIFFs and
PNG masks whose cracks have a known place, length and width."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import re
import sqlite3
import sys

import ezdxf
import numpy as np
import pyogrio
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine

from crackseg.cli import main
from crackseg.errors import OutputExistsError
from crackseg.io.georef import Georeference, GeoreferenceError, read_tiff_header
from crackseg.io.images import write_image
from crackseg.measure import WIDTH_CLASS_PRESETS
from crackseg.measure.maps import CRACK_FIELDS, CSV_FIELDS, DXF_APP, dxf_layer_name
from crackseg.runs.measure import measure_files, parse_formats
from tests.test_measure import segment

PIXEL_M = 0.0005  # 0.5 mm pixels
ORIGIN = (500_000.0, 5_000_000.0)  # top-left corner, EPSG:32633 (UTM 33N) metres
TRANSFORM = Affine(PIXEL_M, 0.0, ORIGIN[0], 0.0, -PIXEL_M, ORIGIN[1])  # north up
SHAPE = (400, 600)
# Known cracks, in image coordinates (x right, y down from the top-left corner): ends, width px, pavement class.
CRACKS = [
    ((40.0, 60.0), (540.0, 160.0), 4, "low (<6 mm)"),  # 2 mm wide
    ((100.0, 200.0), (140.0, 380.0), 16, "moderate (6-19 mm)"),  # 8 mm wide
    ((300.0, 250.0), (560.0, 330.0), 1, "low (<6 mm)"),  # 0.5 mm: 1 px, below the resolution
]


def band(shape, p0, p1, width) -> np.ndarray:
    """Pixels whose centres (col + 0.5, row + 0.5) lie within width/2 of the segment p0–p1, flat ends."""
    return segment(shape, p0, p1, width, centre=0.5)


def crack_mask(shape=SHAPE, cracks=CRACKS) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for p0, p1, width, _ in cracks:
        mask |= band(shape, p0, p1, width)
    return mask


def write_geotiff(path, mask, crs="EPSG:32633", transform=None):
    transform = transform or TRANSFORM
    profile = {"driver": "GTiff", "height": mask.shape[0], "width": mask.shape[1], "count": 1, "dtype": "uint8"}
    with rasterio.open(path, "w", **profile, crs=crs, transform=transform) as dst:
        dst.write(mask.astype(np.uint8) * 255, 1)
    return path


def known_crack(line: np.ndarray):
    """The known crack a measured line (image coordinates) belongs to: the one whose segment is nearest."""
    return min(CRACKS, key=lambda c: shapely.LineString([c[0], c[1]]).hausdorff_distance(shapely.LineString(line)))


def check_on_segment(line: np.ndarray, p0, p1, width: float, tolerance_px: float = 1.0) -> None:
    """Every vertex within `tolerance_px` of the segment, and the line's ends as near its ends.

    A wide crack's flat end leaves its tip uncertain by a share of the width: its ends may be width/5 off.
    """
    segment = shapely.LineString([p0, p1])
    assert max(segment.distance(shapely.Point(p)) for p in line) <= tolerance_px

    def apart(a, b):
        return float(np.hypot(*(np.asarray(a) - b)))

    ends_error = min(
        max(apart(line[0], p0), apart(line[-1], p1)),
        max(apart(line[0], p1), apart(line[-1], p0)),  # a line may run either way
    )
    assert ends_error <= max(tolerance_px, width / 5), (line[[0, -1]], p0, p1)


@pytest.fixture(scope="module")
def geo_run(tmp_path_factory):
    """`crackseg measure` on a georeferenced GeoTIFF mask, pavement classes: the output folder."""
    tmp = tmp_path_factory.mktemp("geo")
    write_geotiff(tmp / "deck.tif", crack_mask())
    code = main(["measure", str(tmp / "deck.tif"), "--masks", "-o", str(tmp / "out"), "--classes", "pavement"])
    assert code == 0
    return tmp / "out"


def to_image(xy_map: np.ndarray) -> np.ndarray:
    """Map coordinates (EPSG:32633) → image coordinates, by the inverse of the test raster's transform."""
    return np.column_stack([(xy_map[:, 0] - ORIGIN[0]) / PIXEL_M, (ORIGIN[1] - xy_map[:, 1]) / PIXEL_M])


def test_geotiff_geojson_is_wgs84_and_lands_on_the_cracks(geo_run):
    doc = json.loads((geo_run / "deck_cracks.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and "crs" not in doc  # RFC 7946: WGS 84, said by saying nothing
    assert doc["source_crs"] == "EPSG:32633" and doc["pixel_size_mm"] == pytest.approx(0.5)
    assert len(doc["features"]) == 3
    back = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    seen = set()
    for feature in doc["features"]:
        assert feature["geometry"]["type"] == "MultiLineString"
        (lonlat,) = feature["geometry"]["coordinates"]  # a straight crack: one branch
        lon, lat = np.array(lonlat).T
        assert 14 < lon.min() and lon.max() < 16 and 44 < lat.min() and lat.max() < 46  # UTM 33N, 45° N
        line = to_image(np.column_stack(back.transform(lon, lat)))
        p0, p1, width, pavement_class = known_crack(line)
        seen.add(width)
        check_on_segment(line, p0, p1, width)  # within one pixel = 0.5 mm on the ground
        props = feature["properties"]
        true_length = np.hypot(p1[0] - p0[0], p1[1] - p0[1])
        assert props["len_mm"] == pytest.approx(true_length * 0.5, rel=0.03)
        assert shapely.LineString(line).length == pytest.approx(true_length, rel=0.03)  # the line itself, too
        assert abs(props["w_med_px"] - width) <= (1.0 if width == 1 else 0.5)
        assert props["w_med_mm"] == pytest.approx(props["w_med_px"] * 0.5, abs=1e-3)
        assert props["width_cls"] == pavement_class
        assert props["below_res"] is (width < 2)
        assert props["branched"] is False and props["orient_cls"] in ("transverse", "longitudinal", "diagonal")
        assert set(props) == set(CSV_FIELDS) - {"image"}  # one layout everywhere
    assert seen == {1, 4, 16}


def test_geotiff_geopackage_and_dxf_hold_the_same_geometry(geo_run):
    doc = json.loads((geo_run / "deck_cracks.geojson").read_text())
    back = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    expected = {}
    for f in doc["features"]:
        lon, lat = np.array(f["geometry"]["coordinates"][0]).T
        expected[f["id"]] = np.column_stack(back.transform(lon, lat))  # map metres

    info = pyogrio.read_info(geo_run / "deck_cracks.gpkg")
    assert info["crs"] == "EPSG:32633" and info["geometry_type"] == "MultiLineString" and info["features"] == 3
    meta, _, wkb, columns = pyogrio.raw.read(geo_run / "deck_cracks.gpkg")
    table = dict(zip(meta["fields"], columns, strict=True))
    for crack_id, geometry in zip(table["id"], shapely.from_wkb(wkb), strict=True):
        np.testing.assert_allclose(shapely.get_coordinates(geometry), expected[crack_id], atol=5e-5)  # 0.05 mm
    props = {f["id"]: f["properties"] for f in doc["features"]}
    for i, crack_id in enumerate(table["id"]):
        assert table["width_cls"][i] == props[crack_id]["width_cls"]
        assert bool(table["below_res"][i]) == props[crack_id]["below_res"]
        assert table["len_mm"][i] == pytest.approx(props[crack_id]["len_mm"])

    drawing = ezdxf.readfile(geo_run / "deck_cracks.dxf")
    polylines = list(drawing.modelspace().query("LWPOLYLINE"))
    assert len(polylines) == 3
    for polyline in polylines:
        points = np.array([p[:2] for p in polyline.get_points("xy")])  # the raster's CRS: UTM metres, as the gpkg
        crack_id = min(expected, key=lambda k: np.abs(expected[k] - points).max())
        np.testing.assert_allclose(points, expected[crack_id], atol=5e-5)
        assert polyline.dxf.layer == dxf_layer_name(props[crack_id]["width_cls"])
    layers = {layer.dxf.name for layer in drawing.layers}
    assert {dxf_layer_name(label) for label in WIDTH_CLASS_PRESETS["pavement"].labels} <= layers
    ids = sorted(text.dxf.text for text in drawing.modelspace().query("TEXT") if text.dxf.layer == "crack id")
    assert ids == ["1", "2", "3"]  # to find a drawn crack's row in the tables


def test_geotiff_csv_and_summary(geo_run):
    rows = list(csv.DictReader((geo_run / "cracks.csv").open()))
    assert len(rows) == 3 and list(rows[0]) == CSV_FIELDS
    assert sorted(r["width_cls"] for r in rows) == ["low (<6 mm)", "low (<6 mm)", "moderate (6-19 mm)"]
    report = json.loads((geo_run / "deck_measure.json").read_text())
    assert report["pixel_size_mm"] == pytest.approx(0.5) and report["pixel_size_from"] == "georeference"
    assert report["georeference"]["crs"] == "EPSG:32633"
    summary = report["summary"]
    assert summary["count"] == 3 and summary["below_resolution"] == 1 and summary["width_class_scheme"] == "pavement"
    assert summary["width_classes"] == {"low (<6 mm)": 2, "moderate (6-19 mm)": 1, "high (>=19 mm)": 0}
    by_class = summary["length_by_width_class_mm"]
    assert sum(by_class.values()) == pytest.approx(summary["total_length_mm"], abs=0.01)
    assert summary["crack_area_fraction"] == pytest.approx(crack_mask().mean(), abs=1e-6)
    assert report["units"]["coordinates"]["gpkg"].endswith("EPSG:32633")
    assert (geo_run / "deck_width.png").exists()


def pairs(xdata) -> list[tuple[str, object]]:
    """XDATA's name, value pairs: each value's tag follows a text tag that names it."""
    values = [value for _, value in xdata]
    return list(zip(values[::2], values[1::2], strict=True))


def test_geotiff_dxf_is_in_the_rasters_crs_and_carries_each_cracks_figures(geo_run):
    drawing = ezdxf.readfile(geo_run / "deck_cracks.dxf")
    assert drawing.units == ezdxf.units.M and drawing.header["$MEASUREMENT"] == 1  # EPSG:32633's metres
    assert drawing.header.custom_vars.get("coordinates") == "the raster's CRS, EPSG:32633"
    assert DXF_APP in drawing.appids  # what a CAD user lists to read the figures
    cracks = {c["id"]: c for c in json.loads((geo_run / "deck_measure.json").read_text())["cracks"]}
    polylines = list(drawing.modelspace().query("LWPOLYLINE"))
    assert len(polylines) == 3
    for polyline in polylines:
        figures = dict(pairs(polyline.get_xdata(DXF_APP)))
        crack = cracks[figures["id"]]
        numbers = ["len_mm", "w_mean_mm", "w_p95_mm", "w_max_mm"]
        assert list(figures) == ["id", *numbers, "width_cls", "orient_cls", "crack_cls"]
        assert [figures[k] for k in numbers] == pytest.approx([crack[k] for k in numbers])
        assert (figures["width_cls"], figures["orient_cls"]) == (crack["width_cls"], crack["orient_cls"])
        assert polyline.dxf.layer == dxf_layer_name(crack["width_cls"])
        points = to_image(np.array([p[:2] for p in polyline.get_points("xy")]))
        assert shapely.LineString(points).length * 0.5 == pytest.approx(crack["len_mm"], rel=0.03)


def test_field_names_survive_a_shapefile(geo_run, tmp_path):
    """A shapefile's dBase table cuts field names at 10 characters: every name is short enough and distinct."""
    meta, _, wkb, columns = pyogrio.raw.read(geo_run / "deck_cracks.gpkg")
    assert list(meta["fields"]) == CRACK_FIELDS
    shp = tmp_path / "cracks.shp"
    pyogrio.raw.write(
        shp, wkb, columns, meta["fields"], driver="ESRI Shapefile", geometry_type="MultiLineString", crs=meta["crs"]
    )
    assert list(pyogrio.read_info(shp)["fields"]) == CRACK_FIELDS
    assert list(pyogrio.raw.read(shp)[3][CRACK_FIELDS.index("len_mm")]) == list(columns[CRACK_FIELDS.index("len_mm")])
    # one layout everywhere: the CSV's columns, the GeoJSON's properties, the summary JSON's cracks
    assert csv.DictReader((geo_run / "cracks.csv").open()).fieldnames == ["image", *CRACK_FIELDS]
    feature = json.loads((geo_run / "deck_cracks.geojson").read_text())["features"][0]
    assert list(feature["properties"]) == CRACK_FIELDS
    crack = json.loads((geo_run / "deck_measure.json").read_text())["cracks"][0]
    assert set(crack) == {name for name in CRACK_FIELDS if not name.startswith("bbox_")} | {"bbox"}


def test_the_geopackage_is_version_1_3(geo_run):
    """GeoPackage 1.3, not GDAL's default 1.4, which older readers warn about or refuse."""
    with contextlib.closing(sqlite3.connect(geo_run / "deck_cracks.gpkg")) as db:
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        user_version = db.execute("PRAGMA user_version").fetchone()[0]
    assert application_id.to_bytes(4, "big") == b"GPKG" and user_version == 10300


def test_a_crack_leaving_the_image_is_cut_at_its_edge(tmp_path):
    """A centreline's tip may end most of a pixel past the image's edge: every map stops at the edge."""
    mask = band(SHAPE, (-5.0, 50.0), (300.0, 160.0), 3)  # leaves through the left edge
    write_geotiff(tmp_path / "edge.tif", mask)
    write_image(tmp_path / "edge.png", mask.astype(np.uint8) * 255)
    for name in ("edge.tif", "edge.png"):
        assert main(["measure", str(tmp_path / name), "--masks", "-o", str(tmp_path / name[-3:])]) == 0

    def check(xy):
        assert xy.min() >= -1e-6 and xy[:, 0].max() <= SHAPE[1] + 1e-6 and xy[:, 1].max() <= SHAPE[0] + 1e-6
        assert xy[:, 0].min() == pytest.approx(0, abs=0.05)  # it still reaches the edge

    _, _, wkb, _ = pyogrio.raw.read(tmp_path / "tif" / "edge_cracks.gpkg")
    check(to_image(shapely.get_coordinates(shapely.from_wkb(wkb))))
    drawing = ezdxf.readfile(tmp_path / "tif" / "edge_cracks.dxf")
    check(to_image(np.array([p[:2] for line in drawing.modelspace().query("LWPOLYLINE") for p in line])))
    (feature,) = json.loads((tmp_path / "tif" / "edge_cracks.geojson").read_text())["features"]
    lon, lat = np.array(feature["geometry"]["coordinates"][0]).T
    back = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    check(to_image(np.column_stack(back.transform(lon, lat))))
    _, _, wkb, _ = pyogrio.raw.read(tmp_path / "png" / "edge_cracks.gpkg")
    xy = shapely.get_coordinates(shapely.from_wkb(wkb))
    check(np.column_stack([xy[:, 0], SHAPE[0] - xy[:, 1]]))  # px, y up → image coordinates


def test_a_geotransform_without_a_crs_gives_the_pixel_size(tmp_path, caplog):
    write_geotiff(tmp_path / "scan.tif", crack_mask(), crs=None)
    header = read_tiff_header(tmp_path / "scan.tif")
    assert header.georef is None and header.grid == tuple(TRANSFORM)[:6] and header.on_a_grid
    assert read_tiff_header(tmp_path / "scan.tif").shape == SHAPE
    assert main(["measure", str(tmp_path / "scan.tif"), "--masks", "-o", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "scan_measure.json").read_text())
    assert report["pixel_size_mm"] == pytest.approx(0.5) and report["pixel_size_from"].startswith("geotransform")
    assert report["georeference"] is None and "as metres" in caplog.text
    assert report["units"]["coordinates"]["gpkg"].startswith("mm from the image's bottom-left corner")
    assert not (tmp_path / "out" / "scan_cracks.geojson").exists()
    oblong = Affine(PIXEL_M, 0.0, 0.0, 0.0, -2 * PIXEL_M, 0.0)
    write_geotiff(tmp_path / "oblong.tif", crack_mask(), crs=None, transform=oblong)
    argv = ["measure", str(tmp_path / "oblong.tif"), "--masks", "-o", str(tmp_path / "o2"), "--formats", "json"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "o2" / "oblong_measure.json").read_text())["pixel_size_mm"] is None
    assert "not square" in caplog.text


def test_warnings_are_not_glued_onto_the_progress_bar(tmp_path, capsys):
    for name in ("a.tif", "b.tif"):
        write_image(tmp_path / "in" / name, crack_mask().astype(np.uint8) * 255)  # no CRS: a warning
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.getLogger().addHandler(console)
    try:
        measure_files([str(tmp_path / "in")], tmp_path / "out", formats=("json",), progress=True)
    finally:
        logging.getLogger().removeHandler(console)
    lines = re.split(r"[\r\n]", capsys.readouterr().err)
    warned = [line for line in lines if "without a CRS" in line]
    assert warned and all(line.startswith("WARNING: ") for line in warned), warned
    assert any(line.startswith("measure: 100%") for line in lines)  # the bar is still drawn


def test_png_mask_has_no_geojson_and_maps_in_a_local_frame(tmp_path):
    """GeoJSON is WGS 84 only: a photo without a georeference gets none (GDAL would read its pixels as degrees),
    and its GeoPackage carries a local engineering CRS in px, y up, rather than no CRS."""
    write_image(tmp_path / "wall.png", crack_mask().astype(np.uint8) * 255)
    out = tmp_path / "out"
    assert main(["measure", str(tmp_path / "wall.png"), "--masks", "-o", str(out)]) == 0
    assert not (out / "wall_cracks.geojson").exists()
    report = json.loads((out / "wall_measure.json").read_text())
    coordinates = report["units"]["coordinates"]
    assert coordinates["geojson"].startswith("not written") and "no georeference" in coordinates["geojson"]
    assert coordinates["gpkg"].startswith("px from the image's bottom-left corner, y up")
    info = pyogrio.read_info(out / "wall_cracks.gpkg")
    assert info["crs"].startswith("LOCAL_CS[") and 'UNIT["pixel"' in info["crs"]
    crs = pyproj.CRS(info["crs"])
    assert crs.is_engineering and not crs.is_geographic
    assert info["layer_metadata"]["coordinates"].startswith("px from the image's bottom-left")
    _, _, wkb, columns = pyogrio.raw.read(out / "wall_cracks.gpkg")
    for geometry in shapely.from_wkb(wkb):
        xy = shapely.get_coordinates(geometry)
        line = np.column_stack([xy[:, 0], SHAPE[0] - xy[:, 1]])  # y up → image coordinates
        p0, p1, width, _ = known_crack(line)
        check_on_segment(line, p0, p1, width)
    drawing = ezdxf.readfile(out / "wall_cracks.dxf")
    assert drawing.units == 0  # unitless: pixels
    assert {p.dxf.layer for p in drawing.modelspace().query("LWPOLYLINE")} == {"crack unknown (no scale)"}


def test_a_local_frame_in_mm_and_its_drawing(tmp_path):
    """With a pixel size and no georeference: the GeoPackage's local CRS is in mm, the DXF says mm in its header."""
    write_image(tmp_path / "wall.png", crack_mask().astype(np.uint8) * 255)
    out = tmp_path / "out"
    assert main(["measure", str(tmp_path / "wall.png"), "--masks", "-o", str(out), "--pixel-size", "0.5"]) == 0
    crs = pyproj.CRS(pyogrio.read_info(out / "wall_cracks.gpkg")["crs"])
    assert crs.is_engineering and crs.axis_info[0].unit_conversion_factor == 0.001  # millimetres
    drawing = ezdxf.readfile(out / "wall_cracks.dxf")
    assert drawing.units == ezdxf.units.MM and drawing.header["$MEASUREMENT"] == 1
    for polyline in drawing.modelspace().query("LWPOLYLINE"):
        points = np.array([p[:2] for p in polyline.get_points("xy")])
        line = np.column_stack([points[:, 0] / 0.5, SHAPE[0] - points[:, 1] / 0.5])  # mm, y up → image px
        p0, p1, width, _ = known_crack(line)
        check_on_segment(line, p0, p1, width)
        assert dict(pairs(polyline.get_xdata(DXF_APP)))["w_p95_mm"] > 0


def test_pixel_size_overrides_the_georeference_and_concrete_classes(tmp_path):
    cracks = [((40.0, 60.0), (540.0, 160.0), 3, "0.1-0.2 mm"), ((100.0, 200.0), (140.0, 380.0), 9, ">=0.4 mm")]
    write_geotiff(tmp_path / "pier.tif", crack_mask(cracks=cracks))
    out = tmp_path / "out"
    assert main(["measure", str(tmp_path / "pier.tif"), "--masks", "-o", str(out), "--pixel-size", "0.05"]) == 0
    report = json.loads((out / "pier_measure.json").read_text())
    assert report["pixel_size_mm"] == 0.05 and report["pixel_size_from"] == "--pixel-size"
    assert report["georeference"]["crs"] == "EPSG:32633"  # the maps are still placed by the transform
    got = sorted((c["w_med_px"], c["width_cls"]) for c in report["cracks"])
    assert [name for _, name in got] == ["0.1-0.2 mm", ">=0.4 mm"]


def test_geographic_crs_needs_a_pixel_size(tmp_path, capsys):
    transform = Affine(1e-8, 0.0, 15.0, 0.0, -1e-8, 45.0)  # about 1 mm by 0.8 mm: no scale without --pixel-size
    write_geotiff(tmp_path / "lonlat.tif", crack_mask(), crs="EPSG:4326", transform=transform)
    out = tmp_path / "out"
    assert main(["measure", str(tmp_path / "lonlat.tif"), "--masks", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "lonlat.tif" in err and "geographic" in err and "--pixel-size" in err
    assert not (out / "lonlat_cracks.geojson").exists()
    assert not (out / "cracks.csv").exists()  # nothing measured, no table: the run with the fix is not refused
    assert main(["measure", str(tmp_path / "lonlat.tif"), "--masks", "-o", str(out), "--pixel-size", "0.5"]) == 0
    feature = json.loads((out / "lonlat_cracks.geojson").read_text())["features"][0]
    lon, lat = np.array(feature["geometry"]["coordinates"][0]).T
    line = np.column_stack([(lon - 15.0) / 1e-8, (45.0 - lat) / 1e-8])  # back to image coordinates
    p0, p1, width, _ = known_crack(line)
    check_on_segment(line, p0, p1, width)


def test_measure_replaces_an_earlier_runs_outputs_only_with_overwrite(tmp_path, capsys, caplog):
    write_image(tmp_path / "m.png", crack_mask().astype(np.uint8) * 255)
    out = tmp_path / "out"
    argv = ["measure", str(tmp_path / "m.png"), "--masks", "-o", str(out)]
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) == 5  # no GeoJSON: the mask has no georeference
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: -o {out}: {out / 'm_measure.json'} is there already")
    assert "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # the run's own table counts too; files of formats the run does not write do not
    for name in before:
        if name != "cracks.csv":
            (out / name).unlink()
    assert main([*argv, "--formats", "geojson,csv"]) == 2
    assert f"{out / 'cracks.csv'} is there already" in capsys.readouterr().err
    assert main([*argv, "--formats", "geojson"]) == 0
    assert "m.png: no georeference: no GeoJSON" in caplog.text  # nothing written, and no summary to say why
    (out / "cracks.csv").write_text("an earlier table")
    assert main([*argv, "--formats", "geojson,csv", "--overwrite"]) == 0
    assert len(list(csv.DictReader((out / "cracks.csv").open()))) == len(CRACKS)


def test_measure_refuses_before_the_model_loads_and_measure_files_is_safe_by_default(tmp_path, capsys):
    write_image(tmp_path / "wall.png", crack_mask().astype(np.uint8) * 255)
    out = tmp_path / "out"
    out.mkdir()
    (out / "wall_cracks.dxf").write_bytes(b"an earlier drawing")
    assert main(["measure", str(tmp_path / "wall.png"), "-o", str(out), "--model", "no-such"]) == 2
    err = capsys.readouterr().err
    assert "wall_cracks.dxf is there already" in err and "no-such" not in err
    with pytest.raises(OutputExistsError, match="wall_cracks.dxf"):
        measure_files([str(tmp_path / "wall.png")], out, progress=False)
    assert (out / "wall_cracks.dxf").read_bytes() == b"an earlier drawing"
    assert measure_files([str(tmp_path / "wall.png")], out, progress=False, overwrite=True)[:2] == (1, len(CRACKS))
    assert ezdxf.readfile(out / "wall_cracks.dxf").modelspace().query("LWPOLYLINE")


def test_tiff_without_crs_is_said_once_and_mapped_in_the_local_frame(tmp_path, caplog):
    for name in ("a.tif", "b.tif"):
        write_image(tmp_path / "in" / name, crack_mask().astype(np.uint8) * 255)  # PIL: a TIFF with no georeference
    argv = ["measure", str(tmp_path / "in"), "--masks", "-o", str(tmp_path / "out"), "--formats", "geojson,gpkg"]
    assert main(argv) == 0
    assert caplog.text.count("without a CRS") == 1 and "no GeoJSON" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_cracks.gpkg", "b_cracks.gpkg"]


def test_formats_narrow_the_outputs_and_a_bad_one_is_named(tmp_path, capsys):
    write_image(tmp_path / "m.png", crack_mask().astype(np.uint8) * 255)
    out = tmp_path / "out"
    assert main(["measure", str(tmp_path / "m.png"), "--masks", "-o", str(out), "--formats", "dxf,csv"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cracks.csv", "m_cracks.dxf"]
    assert main(["measure", str(tmp_path / "m.png"), "--masks", "-o", str(out), "--formats", "dxf,shp"]) == 2
    assert "--formats" in capsys.readouterr().err
    assert parse_formats(None) == ("json", "csv", "png", "geojson", "gpkg", "dxf")
    assert parse_formats(" GeoJSON, gpkg ,geojson") == ("geojson", "gpkg")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ({"name": "x", "bins_mm": [0.2, 0.4], "colour": "red"}, "unknown field 'colour'"),
        ({"name": "x"}, "'bins_mm' is missing"),
        ({"bins_mm": [0.4, 0.2]}, "increasing"),
        ({"bins_mm": [0.2, "wide"]}, "list of numbers"),
        ({"bins_mm": [0.2, 0.4], "labels": ["thin", "wide"]}, "3 names"),
        ([0.2, 0.4], "JSON object"),
    ],
)
def test_a_bad_classes_file_is_a_clear_error(tmp_path, capsys, content, says):
    (tmp_path / "classes.json").write_text(json.dumps(content))
    write_image(tmp_path / "m.png", crack_mask().astype(np.uint8) * 255)
    argv = ["measure", str(tmp_path / "m.png"), "--masks", "-o", str(tmp_path / "out")]
    assert main([*argv, "--classes", str(tmp_path / "classes.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --classes ") and "classes.json" in err and says in err
    assert not (tmp_path / "out").exists()  # refused before anything was read or written


def test_a_classes_file_and_a_misspelt_preset(tmp_path, capsys):
    (tmp_path / "bridge.json").write_text(json.dumps({"bins_mm": [1, 5]}))  # name and labels default
    write_image(tmp_path / "m.png", crack_mask().astype(np.uint8) * 255)
    argv = ["measure", str(tmp_path / "m.png"), "--masks", "-o", str(tmp_path / "out"), "--pixel-size", "0.5"]
    assert main([*argv, "--classes", str(tmp_path / "bridge.json"), "--formats", "json"]) == 0
    report = json.loads((tmp_path / "out" / "m_measure.json").read_text())
    assert report["width_classes"] == {"name": "bridge", "bins_mm": [1.0, 5.0], "labels": ["<1 mm", "1-5 mm", ">=5 mm"]}
    assert sorted(c["width_cls"] for c in report["cracks"]) == ["1-5 mm", "<1 mm", ">=5 mm"]
    assert main([*argv, "--classes", "concret"]) == 2
    assert "concrete or pavement" in capsys.readouterr().err


def test_pixel_size_from_the_crs_unit():
    feet = pyproj.CRS("EPSG:2263")  # New York Long Island, US survey feet
    geo = Georeference((0.001, 0.0, 1e6, 0.0, -0.001, 2e5), feet.to_wkt())
    assert geo.pixel_size_mm("ny.tif") == pytest.approx(0.001 * 1200 / 3937 * 1000, rel=1e-6)
    metres = Georeference(tuple(TRANSFORM)[:6], pyproj.CRS("EPSG:32633").to_wkt())
    assert metres.pixel_size_mm("utm.tif") == pytest.approx(0.5)
    rotated = Affine.rotation(30) @ Affine.scale(PIXEL_M, -PIXEL_M)
    assert Georeference(tuple(rotated)[:6], metres.crs_wkt).pixel_size_mm("r.tif") == pytest.approx(0.5)
    with pytest.raises(GeoreferenceError, match=r"oblong\.tif: .*not square"):
        Georeference((PIXEL_M, 0, 0, 0, -2 * PIXEL_M, 0), metres.crs_wkt).pixel_size_mm("oblong.tif")


def test_every_preset_class_is_a_valid_dxf_layer_name():
    from ezdxf.lldxf.validator import is_valid_layer_name

    for classes in WIDTH_CLASS_PRESETS.values():
        names = [dxf_layer_name(label) for label in classes.labels]
        assert all(is_valid_layer_name(n) for n in names) and len(set(names)) == len(names)
    assert dxf_layer_name('a/b:"c"') == "crack a_b__c_"


def test_a_crs_without_a_place_on_earth_is_named_before_any_output():
    local = 'ENGCRS["site grid",EDATUM["site"],CS[Cartesian,2],AXIS["x",east,LENGTHUNIT["metre",1]],'
    local += 'AXIS["y",north,LENGTHUNIT["metre",1]]]'
    geo = Georeference(tuple(TRANSFORM)[:6], pyproj.CRS(local).to_wkt(), SHAPE)
    with pytest.raises(GeoreferenceError, match=r"site\.tif: .*WGS 84.*--formats"):
        geo.check_wgs84("site.tif")
    with pytest.raises(GeoreferenceError, match=r"site\.tif: .*not a projected CRS.*--pixel-size"):
        geo.pixel_size_mm("site.tif")
    Georeference(tuple(TRANSFORM)[:6], pyproj.CRS("EPSG:32633").to_wkt(), SHAPE).check_wgs84("deck.tif")


def marker_photo(side_px: int, seed: int = 0) -> np.ndarray:
    """A textured photo with a printed 4×4 ArUco marker (white border included) of `side_px` black squares' side."""
    import cv2

    from crackseg.synthetic import synthetic_crack

    photo = synthetic_crack((600, 800), seed=seed, n_cracks=2)[0].copy()
    marker = cv2.aruco.generateImageMarker(cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50), 7, side_px)
    border = side_px // 6
    paper = np.full((side_px + 2 * border,) * 2, 255, np.uint8)
    paper[border:-border, border:-border] = marker
    photo[100 : 100 + paper.shape[0], 150 : 150 + paper.shape[1]] = paper[:, :, None]
    return photo


@pytest.mark.parametrize("side_px", [120, 237])
def test_a_printed_marker_gives_the_scale_within_two_percent(side_px):
    from crackseg.io.georef import marker_pixel_size, resolve_pixel_size

    photo = marker_photo(side_px)
    assert marker_pixel_size(photo, 100.0) == pytest.approx(100.0 / side_px, rel=0.02)
    # the order: --pixel-size wins, then the marker; without a marker, pixels (and a warning)
    assert resolve_pixel_size("p.jpg", None, 0.3, photo, 100.0) == (0.3, "--pixel-size")
    assert resolve_pixel_size("p.jpg", None, None, photo, 100.0)[1] == "ArUco marker of 100 mm"
    assert resolve_pixel_size("p.jpg", None, None, marker_photo(120)[300:], 100.0) == (None, None)


def test_measure_takes_the_scale_from_a_marker(tmp_path):
    from crackseg.io.images import write_image
    from crackseg.runs.measure import measure_files

    write_image(tmp_path / "wall.png", marker_photo(200))

    def segment(image):
        mask = np.zeros(image.shape[:2], bool)
        mask[400:404, 300:700] = True  # a 400 px crack: 200 mm at 0.5 mm/px
        return mask

    measure_files([str(tmp_path / "wall.png")], tmp_path / "out", segment, marker_mm=100.0, progress=False)
    report = json.loads((tmp_path / "out" / "wall_measure.json").read_text())
    assert report["pixel_size_from"] == "ArUco marker of 100 mm"
    assert report["pixel_size_mm"] == pytest.approx(0.5, rel=0.02)
