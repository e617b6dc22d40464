"""Two surveys compared crack by crack (`crackseg compare`), on generated photos whose changes are known: one crack
added, one extended by a known length, one widened, one deleted, the second photo shifted, rotated and brighter.
Masks are given (or a fake segmenter returns them), so no model runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pyogrio
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine

import crackseg.cli.measure
from crackseg.cli import main
from crackseg.compare import AlignmentError, Capture, CompareError, Survey, apply_homography, compare, load_survey
from crackseg.compare.changes import RECORD_FIELDS
from crackseg.compare.evidence import NO_DATA_EDGE_PX, SurveyView
from crackseg.compare.report import report_markdown
from crackseg.inference import CrackSegmenter
from crackseg.io.georef import Georeference
from crackseg.io.images import to_rgb_uint8, write_image
from crackseg.measure.result import FIELD_NAMES
from crackseg.runs.compare import write_changes

SIZE = (480, 640)  # height, width
# Known cracks in BEFORE's image: polyline (pixel-centre coordinates) and drawn thickness.
CRACKS = {
    "unchanged": ([(80, 60), (150, 90), (230, 100)], 3),
    "extended": ([(300, 80), (380, 130), (440, 150)], 3),
    "widened": ([(100, 300), (160, 360), (200, 420)], 2),
    "closed": ([(320, 330), (400, 300), (470, 320)], 3),
    "unchanged too": ([(540, 200), (560, 270), (575, 330)], 4),
}
EXTENSION = (520, 170)  # the extended crack goes on from its last point to here
EXTENSION_PX = float(np.hypot(520 - 440, 170 - 150))
NEW = ([(230, 200), (280, 235), (330, 220)], 3)
WIDER = 6
ANGLE, SHIFT, GAIN, BIAS = 8.0, (18.0, -12.0), 1.15, 12.0  # AFTER's camera and exposure against BEFORE's


def texture(rng: np.random.Generator, shape=SIZE) -> np.ndarray:
    """A concrete-like surface: noise blurred at three scales, so that every part of it has features."""
    t = sum(cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), s) * s for s in (1.5, 3, 6))
    return np.clip(140 + 30 * (t - t.mean()) / t.std(), 0, 255)


def draw(cracks, shape=SIZE) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    for points, thickness in cracks:
        cv2.polylines(mask, [np.int32(points)], False, 1, thickness=thickness)
    return mask.astype(np.float32)


def photo(surface: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.clip(surface - 70 * cv2.GaussianBlur(mask, (0, 0), 0.7), 0, 255)


def to_image_coordinates(h_cv: np.ndarray) -> np.ndarray:
    """OpenCV's pixel centres are at integers, crackseg's image coordinates at +0.5."""
    t = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    return t @ h_cv @ np.linalg.inv(t)


def make_pair(seed: int = 0):
    """(BEFORE photo, BEFORE mask, AFTER photo, AFTER mask, true homography BEFORE → AFTER, image coordinates)."""
    rng = np.random.default_rng(seed)
    surface = texture(rng)
    before = list(CRACKS.values())
    points, thickness = CRACKS["extended"]
    after = [
        CRACKS["unchanged"],
        (points + [EXTENSION], thickness),
        (CRACKS["widened"][0], WIDER),
        CRACKS["unchanged too"],
        NEW,
    ]
    mask_b, mask_a = draw(before), draw(after)
    m = cv2.getRotationMatrix2D((SIZE[1] / 2, SIZE[0] / 2), ANGLE, 1.0)
    m[:, 2] += SHIFT

    def warp(a):
        return cv2.warpAffine(a, m, SIZE[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    photo_a = np.clip(warp(photo(surface, mask_a)) * GAIN + BIAS + rng.normal(0, 2, SIZE), 0, 255)
    h = to_image_coordinates(np.vstack([m, [0, 0, 1]]))
    return photo(surface, mask_b).astype(np.uint8), mask_b > 0.5, photo_a.astype(np.uint8), warp(mask_a) > 0.5, h


def known_lines(h: np.ndarray) -> dict[str, shapely.LineString]:
    """Each known crack's polyline in AFTER's frame (as drawn in AFTER, so the extended one with its extension)."""
    lines = {name: np.float64(points) for name, (points, _) in CRACKS.items()} | {"new": np.float64(NEW[0])}
    lines["extended"] = np.vstack([lines["extended"], EXTENSION])
    return {name: shapely.LineString(apply_homography(h, xy + 0.5)) for name, xy in lines.items()}


def by_name(changes, h) -> dict:
    """The known crack each reported one is (the nearest polyline): name → CrackChange."""
    known = known_lines(h)
    out = {}
    for crack in changes.cracks:
        name = min(known, key=lambda k: known[k].hausdorff_distance(crack.line))
        assert name not in out, f"two cracks reported for {name}"
        out[name] = crack
    return out


@pytest.fixture(scope="module")
def pair():
    return make_pair()


@pytest.fixture(scope="module")
def changes(pair):
    photo_b, mask_b, photo_a, mask_a, _ = pair
    return compare(Survey.from_arrays(mask_b, photo_b, "before"), Survey.from_arrays(mask_a, photo_a, "after"))


def test_every_change_is_found_after_a_shift_a_rotation_and_new_exposure(changes, pair):
    cracks = by_name(changes, pair[4])
    assert {name: c.change for name, c in cracks.items()} == {
        "unchanged": "unchanged",
        "extended": "extended",
        "widened": "widened",
        "closed": "closed",
        "unchanged too": "unchanged",
        "new": "new",
    }
    assert cracks["extended"].added_length_px == pytest.approx(EXTENSION_PX, rel=0.05)
    assert cracks["extended"].added.hausdorff_distance(known_extension(pair[4])) < 3
    assert cracks["widened"].width_growth_px > 2
    assert changes.counts() == {"new": 1, "extended": 1, "widened": 1, "unchanged": 2, "closed": 1, "out_of_view": 0}


def known_extension(h) -> shapely.LineString:
    return shapely.LineString(apply_homography(h, np.float64([CRACKS["extended"][0][-1], EXTENSION]) + 0.5))


def test_the_alignment_is_reported_and_right(changes, pair):
    a = changes.alignment
    assert a.method == "features" and a.inliers >= 100 and a.error_px < 1.0
    corners = np.float64([[0, 0], [SIZE[1], 0], [0, SIZE[0]], [SIZE[1], SIZE[0]]])
    assert np.abs(apply_homography(a.homography, corners) - apply_homography(pair[4], corners)).max() < 1.0
    assert changes.tolerance_px == pytest.approx(a.error_px + 2)


def test_ids_stay_and_new_cracks_get_fresh_ones(changes, pair):
    cracks = by_name(changes, pair[4])
    before_ids = {c.id for c in changes.before.measurement.cracks}
    for name in ("unchanged", "extended", "widened", "unchanged too"):
        assert cracks[name].before_ids == (cracks[name].id,) and cracks[name].id in before_ids
    assert cracks["closed"].id in before_ids
    assert cracks["new"].id == max(before_ids) + 1 == changes.next_id - 1


def test_outputs_and_no_overwrite(changes, pair, tmp_path):
    out = tmp_path / "out"
    write_changes(changes, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["new"] == 1 and summary["alignment"]["error_px"] < 1
    assert summary["added_length_px"] == pytest.approx(EXTENSION_PX, rel=0.05)
    assert summary["largest_widening"]["id"] == by_name(changes, pair[4])["widened"].id
    # AFTER has no georeference: no GeoJSON (WGS 84 only), the GeoPackage in AFTER's local frame (px, y up)
    assert not (out / "changes.geojson").exists()
    assert summary["coordinates"]["geojson"].startswith("not written") and "AFTER" in summary["coordinates"]["geojson"]
    assert summary["coordinates"]["gpkg"].startswith("px from AFTER's bottom-left corner")
    info = pyogrio.read_info(out / "changes.gpkg", layer="changes")
    assert info["features"] == 7 and info["crs"].startswith("LOCAL_CS[") and pyproj.CRS(info["crs"]).is_engineering
    meta, _, _, columns = pyogrio.raw.read(out / "changes.gpkg")
    assert list(columns[list(meta["fields"]).index("part")]).count("added") == 1
    rows = list(csv.DictReader((out / "changes.csv").open()))
    assert sorted(r["change"] for r in rows) == sorted(
        ["new", "extended", "widened", "unchanged", "unchanged", "closed"]
    )
    assert "| widened | 1 |" in (out / "report.md").read_text()
    picture = cv2.imread(str(out / "changes.png"))
    assert picture.shape[1] > 2 * SIZE[1] * 0.9
    with pytest.raises(CompareError, match="--overwrite"):
        write_changes(changes, out)
    write_changes(changes, out, overwrite=True)


def test_change_fields_survive_a_shapefile(changes, tmp_path):
    """A shapefile cuts field names at 10 characters: every name of the changes' table is short and distinct."""
    write_changes(changes, tmp_path / "out")
    names = ["part", *RECORD_FIELDS]
    meta, _, wkb, columns = pyogrio.raw.read(tmp_path / "out" / "changes.gpkg")
    assert list(meta["fields"]) == names
    shp = tmp_path / "changes.shp"
    pyogrio.raw.write(
        shp, wkb, columns, meta["fields"], driver="ESRI Shapefile", geometry_type="MultiLineString", crs=meta["crs"]
    )
    assert list(pyogrio.read_info(shp)["fields"]) == names
    assert csv.DictReader((tmp_path / "out" / "changes.csv").open()).fieldnames == RECORD_FIELDS
    widest = json.loads((tmp_path / "out" / "summary.json").read_text())["largest_widening"]
    assert set(widest) <= set(RECORD_FIELDS) and widest["w_inc_px"] > 2


def test_lines_beyond_afters_image_are_cut_at_its_edge(tmp_path):
    """A BEFORE crack carried into AFTER's frame may run past AFTER's image (and a tip a pixel past any edge):
    the maps stop at the edge, in AFTER's CRS and in WGS 84."""
    origin, pixel = (500_000.0, 5_000_000.0), 0.0005  # AFTER's top-left corner; BEFORE's lies 40 px west

    def georef(x0):
        transform = Affine(pixel, 0.0, x0, 0.0, -pixel, origin[1])
        return Georeference(tuple(transform)[:6], pyproj.CRS("EPSG:32633").to_wkt(), SIZE)

    before = Survey.from_arrays(draw([([(20, 50), (300, 160)], 3)]) > 0, name="b", georef=georef(origin[0] - 0.02))
    changes = compare(before, Survey.from_arrays(np.zeros(SIZE, bool), name="a", georef=georef(origin[0])))
    assert changes.counts()["closed"] == 1 and changes.alignment.method == "georeference"
    assert shapely.get_coordinates(changes.cracks[0].line)[:, 0].min() < -10  # carried past AFTER's left edge
    write_changes(changes, tmp_path / "out")

    def to_image(xy):
        return np.column_stack([(xy[:, 0] - origin[0]) / pixel, (origin[1] - xy[:, 1]) / pixel])

    def check(xy):
        assert xy.min() >= -1e-4 and xy[:, 0].max() <= SIZE[1] + 1e-4 and xy[:, 1].max() <= SIZE[0] + 1e-4
        assert xy[:, 0].min() == pytest.approx(0, abs=0.05)

    _, _, wkb, _ = pyogrio.raw.read(tmp_path / "out" / "changes.gpkg")
    check(to_image(shapely.get_coordinates(shapely.from_wkb(wkb))))
    (feature,) = json.loads((tmp_path / "out" / "changes.geojson").read_text())["features"]
    lon, lat = np.array(feature["geometry"]["coordinates"][0]).T
    check(to_image(np.column_stack(pyproj.Transformer.from_crs(4326, 32633, always_xy=True).transform(lon, lat))))


def write_survey(folder, name, photo, mask):
    write_image(folder / f"{name}.png", photo)
    write_image(folder / f"{name}_mask.png", mask.astype(np.uint8) * 255)


def test_a_third_survey_keeps_the_second_ones_ids(pair, tmp_path):
    """after_measure.json of one comparison is the BEFORE of the next: ids and the photo carry over."""
    photo_b, mask_b, photo_a, mask_a, _ = pair
    write_survey(tmp_path, "s1", photo_b, mask_b)
    write_survey(tmp_path, "s2", photo_a, mask_a)
    first = compare(
        tmp_path / "s1_mask.png",
        tmp_path / "s2_mask.png",
        masks=True,
        photos=(tmp_path / "s1.png", tmp_path / "s2.png"),
    )
    write_changes(first, tmp_path / "one")
    # The third survey: the second one again, with one more crack.
    extra = draw([([(30, 400), (90, 440), (150, 455)], 3)]) > 0  # in AFTER's frame, clear of the others
    write_survey(tmp_path, "s3", photo_a, mask_a | extra)
    # By the command line: "-" takes the photo after_measure.json records.
    argv = ["compare", str(tmp_path / "one" / "after_measure.json"), str(tmp_path / "s3_mask.png"), "--masks"]
    assert main([*argv, "--photos", "-", str(tmp_path / "s3.png"), "-o", str(tmp_path / "two")]) == 0
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["alignment"]["method"] == "features" and summary["alignment"]["error_px"] < 0.5
    assert summary["one_tile_grid"] is None  # masks: nothing was segmented here
    rows = list(csv.DictReader((tmp_path / "two" / "changes.csv").open()))
    kept = {int(r["id"]) for r in rows if r["change"] == "unchanged"}
    assert kept == {c.id for c in first.cracks if c.after_number}
    (new,) = [int(r["id"]) for r in rows if r["change"] == "new"]
    assert new == first.next_id  # not the id of the crack closed between the first two surveys
    assert summary["counts"]["closed"] == 0 and summary["next_crack_id"] == first.next_id + 1


def test_unrelated_photos_fail_alignment_and_write_nothing(pair, tmp_path, capsys):
    photo_b, mask_b, _, _, _ = pair
    other = texture(np.random.default_rng(7)).astype(np.uint8)
    with pytest.raises(AlignmentError, match="cannot align"):
        compare(Survey.from_arrays(mask_b, photo_b, "b"), Survey.from_arrays(mask_b, other, "o"))
    write_survey(tmp_path, "b", photo_b, mask_b)
    write_survey(tmp_path, "o", other, mask_b)
    argv = [
        "compare",
        str(tmp_path / "b_mask.png"),
        str(tmp_path / "o_mask.png"),
        "--masks",
        "-o",
        str(tmp_path / "out"),
    ]
    assert main([*argv, "--photos", str(tmp_path / "b.png"), str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot align") and "\n" not in err
    assert not any((tmp_path / "out").iterdir())


def test_an_empty_survey_makes_every_crack_new_or_closed(pair, caplog):
    photo_b, mask_b, _, _, _ = pair
    empty, cracked = Survey.from_arrays(np.zeros(SIZE, bool), photo_b, "b"), Survey.from_arrays(mask_b, photo_b, "a")
    all_new = compare(empty, cracked)
    assert all_new.counts()["new"] == len(all_new.cracks) == 5
    assert "every crack of AFTER is new" in caplog.text
    all_closed = compare(cracked, empty, assume_aligned=True)
    assert all_closed.counts()["closed"] == len(all_closed.cracks) == 5
    assert all_closed.summary()["largest_widening"] is None


# --- georeferenced surveys ----------------------------------------------------------------------------------

PIXEL_M = 0.0005  # 0.5 mm
ORIGIN = (500_000.0, 5_000_000.0)  # EPSG:32633 metres, BEFORE's top-left corner


def write_geotiff(path, mask, origin=ORIGIN, pixel=PIXEL_M, crs="EPSG:32633"):
    transform = Affine(pixel, 0.0, origin[0], 0.0, -pixel, origin[1])
    profile = {"driver": "GTiff", "height": mask.shape[0], "width": mask.shape[1], "count": 1, "dtype": "uint8"}
    with rasterio.open(path, "w", **profile, crs=crs, transform=transform) as dst:
        dst.write(mask.astype(np.uint8) * 255, 1)


@pytest.mark.parametrize("coarser", [1, 2])
def test_georeferenced_masks_align_by_coordinates(tmp_path, coarser):
    """AFTER's raster starts 50 px east and 30 px south of BEFORE's (and may have pixels twice as large).

    One more crack runs out of BEFORE's view: AFTER sees more of it, but that is not an extension."""
    edge = ([(590, 450), (700, 455)], 3)
    before = draw([*CRACKS.values(), edge], (540, 720))[:480, :640] > 0
    after = draw([*CRACKS.values(), edge, NEW], (540, 720))[30:510, 50:690]
    if coarser == 2:
        after = cv2.resize(after, (320, 240), interpolation=cv2.INTER_AREA)
    after = after > 0.3
    origin_after = (ORIGIN[0] + 50 * PIXEL_M, ORIGIN[1] - 30 * PIXEL_M)
    write_geotiff(tmp_path / "before.tif", before)
    write_geotiff(tmp_path / "after.tif", after, origin_after, PIXEL_M * coarser)
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "before.tif"), str(tmp_path / "after.tif"), "--masks", "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["alignment"]["method"] == "georeference"
    h = np.array(summary["alignment"]["homography"])
    expected = np.array([[1, 0, -50], [0, 1, -30], [0, 0, coarser]]) / coarser
    expected[2, 2] = 1
    assert np.allclose(h, expected, atol=1e-6)
    assert summary["counts"]["new"] == 1 and summary["counts"]["unchanged"] == 6
    assert summary["pixel_size_mm"] == pytest.approx(0.5 * coarser)
    geo = json.loads((out / "changes.geojson").read_text())
    assert geo["source_crs"] == "EPSG:32633" and "crs" not in geo
    lon, lat = geo["features"][0]["geometry"]["coordinates"][0][0]
    assert 14 < lon < 16 and 45 < lat < 46  # UTM 33N near 5000 km north


def test_georeferenced_masks_in_different_crs_are_refused(tmp_path, capsys):
    mask = draw(list(CRACKS.values())) > 0
    write_geotiff(tmp_path / "before.tif", mask)
    write_geotiff(tmp_path / "after.tif", mask, crs="EPSG:32632")
    assert (
        main(
            ["compare", str(tmp_path / "before.tif"), str(tmp_path / "after.tif"), "--masks", "-o", str(tmp_path / "o")]
        )
        == 2
    )
    assert "reproject" in capsys.readouterr().err


# --- bad input ----------------------------------------------------------------------------------------------


def test_assume_aligned_needs_the_same_size(pair):
    _, mask_b, _, mask_a, _ = pair
    smaller = Survey.from_arrays(mask_a[:400, :600], name="a")
    with pytest.raises(CompareError, match="drop --assume-aligned"):
        compare(Survey.from_arrays(mask_b, name="b"), smaller, assume_aligned=True)
    same = compare(Survey.from_arrays(mask_b, name="b"), Survey.from_arrays(mask_b, name="b2"), assume_aligned=True)
    assert same.counts()["unchanged"] == 5 and same.alignment.error_px == 0


def test_masks_without_photos_or_georeference_say_what_to_give(pair):
    _, mask_b, _, mask_a, _ = pair
    with pytest.raises(AlignmentError, match="--photos"):
        compare(Survey.from_arrays(mask_b, name="b"), Survey.from_arrays(mask_a, name="a"))


def measured(tmp_path, mask) -> str:
    write_image(tmp_path / "m.png", mask.astype(np.uint8) * 255)
    assert main(["measure", str(tmp_path / "m.png"), "--masks", "-o", str(tmp_path / "measured")]) == 0
    return str(tmp_path / "measured" / "m_measure.json")


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda d: {k: v for k, v in d.items() if k not in ("format", "format_version")}, "older crackseg"),
        (lambda d: d | {"format_version": 99}, "format version 99"),
        (lambda d: {"format": "crackseg-changes"}, "after_measure.json"),
        (lambda d: {"something": 1}, "not a NAME_measure.json"),
    ],
)
def test_measure_files_of_another_version_are_refused(pair, tmp_path, capsys, edit, says):
    path = measured(tmp_path, pair[1])
    Path(path).write_text(json.dumps(edit(json.loads(Path(path).read_text()))))
    capsys.readouterr()
    assert main(["compare", path, path, "--assume-aligned", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


def test_a_measure_file_compares_with_itself(pair, tmp_path):
    path = measured(tmp_path, pair[1])
    same = compare(path, path, assume_aligned=True)
    assert same.counts()["unchanged"] == 5 and [c.id for c in same.cracks] == [1, 2, 3, 4, 5]


def test_a_measure_file_of_format_version_1_is_still_read(pair, tmp_path):
    """Version 1 named a crack's fields as Crack does (length_px, ...) and called a branched crack
    "branched-network"; version 2 has names a shapefile keeps whole, and "branched"."""
    path = measured(tmp_path, pair[1])
    data = json.loads(Path(path).read_text())
    assert data["format_version"] == 2
    long_names = {short: name for name, short in FIELD_NAMES.items()}
    old = data | {"format_version": 1, "cracks": [{long_names[k]: v for k, v in c.items()} for c in data["cracks"]]}
    old["cracks"][0]["crack_class"] = "branched-network"
    (tmp_path / "old_measure.json").write_text(json.dumps(old))
    new, read = load_survey(path, "BEFORE"), load_survey(tmp_path / "old_measure.json", "BEFORE")
    assert read.measurement.cracks[0].crack_class == "branched"
    assert read.measurement.cracks[1:] == new.measurement.cracks[1:]
    same = compare(tmp_path / "old_measure.json", path, assume_aligned=True)
    assert same.counts()["unchanged"] == 5


def test_photos_are_segmented_by_the_segmenter_given_and_only_then(pair, tmp_path):
    photo_b, mask_b, _, _, _ = pair
    write_image(tmp_path / "b.png", photo_b)
    with pytest.raises(CompareError, match="no segmenter was given"):
        compare(tmp_path / "b.png", tmp_path / "b.png", assume_aligned=True)
    same = compare(tmp_path / "b.png", tmp_path / "b.png", segmenter=lambda photo: mask_b, assume_aligned=True)
    assert same.counts()["unchanged"] == 5 and same.before.source == "photo"


def test_measure_files_load_no_model(pair, tmp_path, monkeypatch):
    loaded = []

    def no_model(cls, *args, **kwargs):
        loaded.append(args)
        raise AssertionError("a model was loaded for two measure files")

    path = measured(tmp_path, pair[1])
    # Every command gets its model from this one constructor: patched on the class, a load is seen from anywhere.
    monkeypatch.setattr(CrackSegmenter, "from_pretrained", classmethod(no_model))
    assert main(["compare", path, path, "--assume-aligned", "-o", str(tmp_path / "out")]) == 0
    assert loaded == []


def test_an_unwritable_output_folder_is_named(pair, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    path = measured(tmp_path, pair[1])
    capsys.readouterr()
    assert main(["compare", path, path, "--assume-aligned", "-o", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: -o {tmp_path / 'file' / 'out'}") and err.count("\n") == 1


# --- the command line, with a fake segmenter ----------------------------------------------------------------


class FakeSegmenter:
    """Knows the mask of each test photo: segmentation is not what is tested here."""

    class config:  # noqa: N801 (the real segmenter's attribute)
        name = "fake"

    def __init__(self, pairs):
        self.masks = {to_rgb_uint8(photo).tobytes(): mask for photo, mask in pairs}

    def describe(self) -> str:
        return "fake segmenter"

    def predict(self, image):
        class Result:
            mask = self.masks[np.ascontiguousarray(image).tobytes()]

        return Result()


def test_cli_compares_two_photos(pair, tmp_path, monkeypatch, capsys):
    photo_b, mask_b, photo_a, mask_a, h = pair
    write_image(tmp_path / "2023.png", photo_b)
    write_image(tmp_path / "2025.png", photo_a)
    monkeypatch.setattr(
        crackseg.cli.measure, "segmenter_from_args", lambda args: FakeSegmenter([(photo_b, mask_b), (photo_a, mask_a)])
    )
    out = tmp_path / "changes"
    argv = ["compare", str(tmp_path / "2023.png"), str(tmp_path / "2025.png"), "-o", str(out), "--pixel-size", "0.1"]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "1 new, 1 extended, 1 widened, 2 unchanged, 1 closed" in said
    summary = json.loads((out / "summary.json").read_text())
    assert summary["added_length_mm"] == pytest.approx(EXTENSION_PX * 0.1, rel=0.05)
    after = json.loads((out / "after_measure.json").read_text())
    assert after["photo"].endswith("2025.png") and after["next_crack_id"] == 7
    assert main(argv) == 2  # the outputs are there now
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_a_cropped_after_photo_and_pixel_sizes_that_disagree(pair):
    """Different image sizes are fine once registered; pixel sizes that contradict the registration are not."""
    photo_b, mask_b, photo_a, mask_a, h = pair
    crop = (slice(20, 460), slice(10, 630))
    before = Survey.from_arrays(mask_b, photo_b, "b", pixel_size_mm=0.2)
    after = Survey.from_arrays(mask_a[crop], photo_a[crop], "a", pixel_size_mm=0.2)
    changes = compare(before, after)
    shift = np.array([[1, 0, -10], [0, 1, -20], [0, 0, 1]])
    assert {n: c.change for n, c in by_name(changes, shift @ h).items()}["extended"] == "extended"
    assert changes.counts()["closed"] == 1 and changes.pixel_size_mm == 0.2
    with pytest.raises(CompareError, match="align at ×1.00"):
        compare(before, Survey.from_arrays(mask_a, photo_a, "a", pixel_size_mm=0.1))


# --- controls: an unchanged site reports no change; planted changes are found ----------------------------------
# Photos of one generated scene, segmented by the darkness stand-in (tests/fakes.py: its probability is a function
# of brightness), so the probability maps, the thresholds and the noise floor are the real ones of a photo survey.

SCENE = (480, 640)  # height, width
CROP = (384, 512)  # each survey's photo: a part of the scene
OFFSET = (40, 72)  # AFTER's crop in the scene (rows, cols): less than a tile of the stand-in (256 px)
SCENE_CRACKS = {
    "A": ([(100, 80), (160, 120), (240, 130), (300, 170)], 3),
    "B": ([(380, 70), (400, 150), (430, 230), (440, 300)], 2),
    "C": ([(120, 250), (200, 280), (260, 330)], 4),
    "D": ([(300, 330), (360, 300), (420, 320), (480, 360)], 3),
    "E": ([(20, 200), (90, 215)], 3),  # mostly left of AFTER's crop
    "F": ([(214, 190), (218, 235)], 3),  # under the no-data strip of AFTER in that control
}
FAINT = ([(40, 300), (90, 330), (150, 340)], 2)
SCENE_CRACKS["faint"] = FAINT
FADE_PX = 25.0
FAINT_DEPTH = 0.75  # of a full crack's darkening: about 0.9 probability, 0.4 once 20 % brighter
STRIP = (196, 246)  # columns of the no-data strip
GROWTH_PX = 40.0
NEW_CRACK = ([(290, 240), (340, 262), (400, 255)], 3)


def scene_photo(cracks, seed: int = 3, crisp=()) -> np.ndarray:
    """A light concrete-like surface with dark cracks drawn on it (RGB uint8), bright enough that the stand-in's
    probability stays near 0 off the cracks at every exposure the controls try. Like real ones, each crack fades
    out over FADE_PX at its tips (but the `crisp` ones), and the faint one (FAINT) is barely over the threshold: the
    parts another capture of the same crack segments differently."""
    rng = np.random.default_rng(seed)
    t = sum(cv2.GaussianBlur(rng.normal(0, 1, SCENE).astype(np.float32), (0, 0), s) * s for s in (1.5, 3, 6))
    surface = 215 + 12 * (t - t.mean()) / t.std()
    depth = np.zeros(SCENE, np.float32)
    for points, thickness in [*cracks, *crisp]:
        line = draw([(points, thickness)], SCENE)
        ends = np.full(SCENE, 255, np.uint8)
        for x, y in (points[0], points[-1]):
            ends[y, x] = 0
        fade = np.clip(0.3 + 0.7 * cv2.distanceTransform(ends, cv2.DIST_L2, 5) / FADE_PX, 0, 1)
        fade = 1.0 if (points, thickness) in crisp else fade
        strength = FAINT_DEPTH if (points, thickness) == FAINT else 1.0
        depth = np.maximum(depth, line * fade * strength)
    dark = cv2.GaussianBlur(depth, (0, 0), 0.7)
    grey = np.clip(surface - (surface - 60) * dark, 0, 255)
    return np.repeat(grey[:, :, None], 3, axis=2).astype(np.uint8)


def crop(photo, offset=(0, 0)) -> np.ndarray:
    return photo[offset[0] : offset[0] + CROP[0], offset[1] : offset[1] + CROP[1]]


def write_photo_tiff(path, photo, offset=(0, 0), valid=None) -> None:
    """An RGB GeoTIFF of a crop placed at `offset` in the scene (0.5 mm pixels); `valid` False: no-data (0)."""
    x, y = ORIGIN[0] + offset[1] * PIXEL_M, ORIGIN[1] - offset[0] * PIXEL_M
    profile = {"driver": "GTiff", "height": photo.shape[0], "width": photo.shape[1], "count": 3, "dtype": "uint8"}
    if valid is not None:
        photo = np.where(valid[:, :, None], np.maximum(photo, 1), 0).astype(np.uint8)
        profile["nodata"] = 0
    with rasterio.open(path, "w", **profile, crs="EPSG:32633", transform=Affine(PIXEL_M, 0, x, 0, -PIXEL_M, y)) as dst:
        dst.write(np.moveaxis(photo, -1, 0))


def control_pair(kind: str, folder: Path) -> tuple[Path, Path]:
    """BEFORE and AFTER files of the unchanged scene, AFTER captured another way (`kind`)."""
    scene = scene_photo(SCENE_CRACKS.values())
    before, after = folder / "before.png", folder / f"after_{kind}.png"
    write_image(before, crop(scene))
    if kind == "shifted, georeferenced":
        before, after = folder / "before.tif", folder / "after.tif"
        write_photo_tiff(before, crop(scene))
        write_photo_tiff(after, crop(scene, OFFSET), OFFSET)
    elif kind == "shifted, registered":
        write_image(after, crop(scene, OFFSET))
    elif kind == "rotated 90°":
        write_image(after, np.rot90(crop(scene)))
    elif kind == "JPEG q75":
        after = folder / "after.jpg"
        write_image(after, crop(scene), quality=75)
    elif kind.startswith("exposure"):
        gain = 1.2 if "+" in kind else 0.8
        write_image(after, np.clip(crop(scene).astype(np.float32) * gain, 0, 255).astype(np.uint8))
    elif kind == "no-data strip":
        before, after = folder / "before.tif", folder / "after.tif"
        valid = np.ones(CROP, bool)
        valid[:, STRIP[0] : STRIP[1]] = False
        write_photo_tiff(before, crop(scene))
        write_photo_tiff(after, crop(scene), valid=valid)
    return before, after


@pytest.fixture(scope="module")
def darkness():
    from tests.fakes import darkness_segmenter

    return darkness_segmenter()


CONTROLS = [
    "shifted, georeferenced",
    "shifted, registered",
    "rotated 90°",
    "JPEG q75",
    "exposure +20%",
    "exposure -20%",
    "no-data strip",
]


@pytest.mark.parametrize("kind", CONTROLS)
def test_an_unchanged_site_reports_no_change(kind, darkness, tmp_path):
    changes = compare(*control_pair(kind, tmp_path), segmenter=darkness)
    counts = changes.counts()
    said = {c.id: (c.change, c.length_change_px, c.added_length_px, c.width_growth_px) for c in changes.cracks}
    assert [counts[name] for name in ("new", "extended", "widened", "closed")] == [0, 0, 0, 0], said
    assert counts["unchanged"] >= 5
    evidence = changes.summary()["evidence"]
    assert evidence["before"]["from"] == evidence["after"]["from"] == "probability map"
    if kind == "no-data strip":  # F lies under the strip: not seen, so not closed
        assert counts["out_of_view"] == 1 and changes.summary()["after"]["no_data"] > 0.05


def planted_pair(folder: Path) -> tuple[Path, Path]:
    """BEFORE and AFTER (shifted by less than a tile, registered by features) of the scene with B lengthened by
    GROWTH_PX, a new crack drawn and A painted over with the background; and B's new tip in the scene."""
    points, thickness = SCENE_CRACKS["B"]
    (x0, y0), (x1, y1) = points[-2], points[-1]
    step = np.array([x1 - x0, y1 - y0]) / np.hypot(x1 - x0, y1 - y0) * GROWTH_PX
    tip = (int(round(x1 + step[0])), int(round(y1 + step[1])))
    grown = {**SCENE_CRACKS, "B": (points + [tip], thickness)}
    del grown["A"]
    write_image(folder / "before.png", crop(scene_photo(SCENE_CRACKS.values())))
    write_image(folder / "after.png", crop(scene_photo(grown.values(), crisp=[NEW_CRACK]), OFFSET))
    return folder / "before.png", folder / "after.png", tip


def test_turns_run_only_where_changes_are_and_decide_as_turns_everywhere(tmp_path):
    """With a network the turns do not change, checking the changes a first pass finds gives every change and
    figure of the turns everywhere; an unchanged site whose first pass finds nothing costs that pass alone."""
    from tests.fakes import bar_segmenter

    before, after, _ = planted_pair(tmp_path)
    found = {}
    for where in ("changes", "everywhere"):
        changes = compare(before, after, segmenter=bar_segmenter(strength=0.0, tile=64), tta_where=where)
        found[where] = [c.record(None) for c in changes.cracks]
        assert [changes.counts()[name] for name in ("new", "extended", "closed")] == [1, 1, 1]
        read_from = changes.summary()["noise_floor"]["read_from"]
        assert read_from == (None if where == "everywhere" else "the averaged maps around every crack")
    assert found["changes"] == found["everywhere"]
    tiles = {}
    pair = control_pair("shifted, registered", tmp_path)
    for where in ("changes", "everywhere"):
        segmenter = bar_segmenter(strength=0.0, tile=64)
        changes = compare(*pair, segmenter=segmenter, tta_where=where)
        assert changes.counts()["unchanged"] >= 5
        tiles[where] = segmenter.backend.tiles
        if where == "changes":  # nothing changed, so nothing was averaged: the floor says so
            assert "--tta-where everywhere" in changes.summary()["noise_floor"]["read_from"]
    single = bar_segmenter(strength=0.0, tile=64).with_options(tta_turns=False)
    compare(*pair, segmenter=single)
    assert tiles["changes"] == single.backend.tiles
    # the turns everywhere: eight passes, each over the photo moved inside its margin (a few more tiles)
    assert tiles["everywhere"] >= 8 * tiles["changes"]


@pytest.mark.parametrize("kind", ["shifted, registered", "shifted, georeferenced"])
def test_photos_a_shift_apart_are_tiled_on_one_grid(tmp_path, kind):
    """A network that sees a bar in every tile (where the tile grid falls, not on the surface) reports bars as new
    cracks between two photos a shift apart, each segmented on its own grid; compared as photos, both are tiled on
    one grid, the bars fall on the same surface, and one pass per tile reports nothing."""
    from tests.fakes import bar_segmenter

    pair = control_pair(kind, tmp_path)
    one_pass = bar_segmenter(strength=16.0).with_options(tta_turns=False)
    own_grids = [load_survey(path, which, segmenter=one_pass) for path, which in zip(pair, ("BEFORE", "AFTER"))]
    assert compare(*own_grids).counts()["new"] >= 2
    changes = compare(*pair, segmenter=one_pass)
    assert [changes.counts()[name] for name in ("new", "extended", "widened", "closed")] == [0, 0, 0, 0]
    assert changes.before.place is not None and changes.after.place.height == changes.before.place.height


def test_photos_in_memory_compare_as_files_do(tmp_path):
    from tests.fakes import bar_segmenter

    scene = scene_photo(SCENE_CRACKS.values())
    one_pass = bar_segmenter(strength=16.0).with_options(tta_turns=False)
    changes = compare(Capture("before", crop(scene)), Capture("after", crop(scene, OFFSET)), segmenter=one_pass)
    files = compare(*control_pair("shifted, registered", tmp_path), segmenter=one_pass)
    assert changes.counts() == files.counts() and changes.after.place == files.after.place is not None
    assert files.summary()["one_tile_grid"] is True and "tiled on one grid" in report_markdown(files)


def test_a_grid_is_shared_only_where_a_whole_shift_holds_across_the_frame():
    from crackseg.compare.grid import shared_grid

    shift = np.array([[1, 0, -72.2], [0, 1, -40.4], [0, 0, 1]])  # BEFORE px → AFTER px: AFTER starts 40, 72 in
    before, after = shared_grid((384, 512), (384, 512), shift)
    assert (before.top, before.left, after.top, after.left) == (0, 0, 40, 72)
    assert (before.height, before.width) == (after.height, after.width) == (424, 584)
    turned = np.vstack([cv2.getRotationMatrix2D((256, 192), 0.5, 1.0), [0, 0, 1]])  # corners drift 2 px
    assert shared_grid((384, 512), (384, 512), turned) is None
    assert shared_grid((384, 512), (384, 512), shift, max_pixels=200_000) is None
    assert shared_grid((384, 512), (384, 512), np.eye(3)) == (None, None)  # one grid: each photo's own frame


def test_changes_of_a_network_not_the_same_under_turns_are_checked_away(tmp_path):
    """A network that sees a bar in every tile (where the tile grid falls, not on the surface) reports bars as new
    cracks on a photo turned by 90° with one pass per tile; checked with the turns where found, nothing changed."""
    from tests.fakes import bar_segmenter

    pair = control_pair("rotated 90°", tmp_path)
    one_pass = compare(*pair, segmenter=bar_segmenter(strength=16.0).with_options(tta_turns=False))
    assert one_pass.counts()["new"] >= 2 and one_pass.after.place is None  # a turn: each photo on its own grid
    assert one_pass.summary()["one_tile_grid"] is False
    for where in ("changes", "everywhere"):
        counts = compare(*pair, segmenter=bar_segmenter(strength=16.0), tta_where=where).counts()
        assert [counts[name] for name in ("new", "extended", "widened", "closed")] == [0, 0, 0, 0], where


class RegionRecorder:
    """A segmenter stand-in for `verify.checked_changes`: its maps are all 0, and it keeps each region it ran."""

    def __init__(self):
        self.regions = []

    def predict_prob(self, image, where):
        self.regions.append(where.copy())
        return np.zeros(where.shape, np.float32)


@pytest.mark.parametrize("stands", [False, True])
def test_a_change_is_checked_first_then_every_crack_where_changes_stand(stands):
    """A new crack one pass finds is averaged around first in AFTER, which alone cut it out; only if it stands is it
    averaged in BEFORE, and then the other cracks (the floor is read from them): a change the averaging takes back
    costs the tiles around it in one survey alone."""
    from crackseg.compare.changes import CrackChange
    from crackseg.compare.noise import NoiseFloor
    from crackseg.compare.registration import Alignment
    from crackseg.compare.verify import AVERAGED, ONE_PASS, checked_changes

    shape = (200, 200)
    surveys = [
        Survey.from_arrays(None, np.zeros((*shape, 3), np.uint8), name, prob=np.zeros(shape, np.float32))
        for name in ("before", "after")
    ]
    candidate = shapely.MultiLineString([[(20, 20), (60, 20)]])
    other = shapely.MultiLineString([[(20, 160), (60, 160)]])
    recorder = RegionRecorder()

    def decide(before, after):
        checked = any(region[20, 40] for region in recorder.regions)
        change = "new" if stands or not checked else "unchanged"
        cracks = [
            CrackChange(1, change, candidate, shapely.MultiLineString()),
            CrackChange(2, "unchanged", other, shapely.MultiLineString()),
        ]
        return cracks, NoiseFloor(0.0, (1.0, 1.0), (None, None), (None, None))

    alignment = Alignment("assumed", np.eye(3), 0.0)
    *_, cracks, noise = checked_changes(*surveys, alignment, 2.0, recorder, decide)
    assert cracks[0].change == ("new" if stands else "unchanged")
    assert recorder.regions[0][20, 40] and not recorder.regions[0][160, 40]  # the candidate first, in AFTER alone
    assert len(recorder.regions) == (4 if stands else 1)  # then BEFORE around it, then the other crack in both
    assert any(region[160, 40] for region in recorder.regions) == stands
    assert noise.maps == (AVERAGED if stands else ONE_PASS)


def test_a_crack_one_survey_shows_under_the_floor_is_averaged_in_that_survey_alone():
    """One pass may cut a closed crack into pieces each shorter than the floor: such a piece, shown by BEFORE alone
    and absent from AFTER, is averaged around in BEFORE (where it may join up), and nowhere else."""
    from crackseg.compare.changes import CrackChange
    from crackseg.compare.noise import NoiseFloor
    from crackseg.compare.registration import Alignment
    from crackseg.compare.verify import checked_changes

    shapes = [(200, 200), (200, 240)]  # BEFORE, AFTER: the recorded regions' shapes say whose they are
    surveys = [
        Survey.from_arrays(None, np.zeros((*shape, 3), np.uint8), name, prob=np.zeros(shape, np.float32))
        for shape, name in zip(shapes, ("before", "after"), strict=True)
    ]
    piece = shapely.MultiLineString([[(20, 20), (30, 20)]])
    recorder = RegionRecorder()

    def decide(before, after):
        change = CrackChange(1, "unchanged", piece, shapely.MultiLineString(), (1,), under_floor=True)
        return [change], NoiseFloor(0.0, (1.0, 1.0), (None, None), (None, None))

    checked_changes(*surveys, Alignment("assumed", np.eye(3), 0.0), 2.0, recorder, decide)
    assert [region.shape for region in recorder.regions] == [shapes[0]]
    assert recorder.regions[0][20, 25]


def test_a_crack_that_lost_a_part_is_averaged_on_both_sides():
    """A BEFORE crack whose branch AFTER no longer shows, continued by AFTER's crack: one pass may have joined a
    closed crack to a neighbour that stays, so the pair is checked, in both surveys, around it."""
    from crackseg.compare.decide import classify_changes
    from crackseg.compare.registration import Alignment
    from crackseg.compare.verify import checked_changes

    trunk, branch = [(40, 100), (400, 100)], [(220, 100), (240, 160), (250, 220)]
    before, after = draw([(trunk, 3), (branch, 3)]), draw([(trunk, 3)])
    pair = [Survey.from_arrays(mask) for mask in (before, after)]
    changes = compare(*pair, assume_aligned=True)
    (kept,) = [c for c in changes.cracks if c.after_number]
    assert kept.change == "unchanged" and kept.lost_part and not kept.under_floor
    recorder = RegionRecorder()
    photos = [
        Survey.from_arrays(None, np.zeros((*SIZE, 3), np.uint8), name, prob=mask, threshold=0.5)
        for mask, name in ((before, "before"), (after, "after"))
    ]
    alignment = Alignment("assumed", np.eye(3), 0.0)

    def decide(b, a):
        return classify_changes(b, a, alignment, 2.0, 0.25)

    checked_changes(*photos, alignment, 2.0, recorder, decide)
    assert len(recorder.regions) >= 2 and all(region[100, 230] for region in recorder.regions[:2])


def fading_map(shape, segments, fade: float = 4.0) -> np.ndarray:
    """Crack probability falling off with the distance d to each segment: 1 within 1.5 px, 0 from 1.5 + fade on
    (past the tips as across)."""
    far = np.ones(shape, np.uint8)
    for start, end in segments:
        cv2.line(far, start, end, 0, 1)
    distance = cv2.distanceTransform(far, cv2.DIST_L2, 5)
    return np.clip(1 - (distance - 1.5) / fade, 0, 1).astype(np.float32)


@pytest.mark.parametrize(("grow", "expected"), [(0, "unchanged"), (3, "unchanged"), (8, "extended"), (10, "extended")])
def test_a_crack_grown_past_its_own_fade_is_extended(grow, expected):
    """BEFORE's map fades out past its crack's tip: what it shows there is the crack's own fade, not the added piece,
    so an extension a little longer than the floor is found although that fade covers half of it."""
    shape, photo = (240, 320), np.zeros((240, 320, 3), np.uint8)
    others = [((20, 20 + 25 * k), (120, 30 + 25 * k)) for k in range(6)]  # the floor is read from these
    before = fading_map(shape, [*others, ((150, 60), (230, 60))])
    after = fading_map(shape, [*others, ((150, 60), (230 + grow, 60))])
    changes = compare(
        *(Survey.from_arrays(None, photo, name, prob=p) for name, p in (("b", before), ("a", after))),
        assume_aligned=True,
    )
    (grown,) = [c for c in changes.cracks if c.length_after_px > 80 and abs(c.line.centroid.y - 60) < 3]
    assert grown.change == expected and changes.noise.length_px < 8
    assert [c.change for c in changes.cracks if c is not grown] == ["unchanged"] * len(others)


def polyline_length(points) -> float:
    return float(shapely.LineString(points).length)


def visible_length(points) -> float:
    """A fading crack's length as the stand-in sees it: from where its darkening first passes the threshold."""
    depth = (215 - 127.5) / (215 - 60)  # the darkening share at which the stand-in's probability reaches 0.5
    return polyline_length(points) - 2 * FADE_PX * (depth - 0.3) / 0.7


def test_planted_changes_are_found_with_their_lengths(darkness, tmp_path):
    """AFTER, shifted by less than a tile and registered: B lengthened by 40 px, a new crack drawn, A painted over
    with the background. Each is found with its class and its length within 10 %; nothing else changes."""
    before, after, tip = planted_pair(tmp_path)
    (x1, y1) = SCENE_CRACKS["B"][0][-1]
    changes = compare(before, after, segmenter=darkness)
    counts = changes.counts()
    assert [counts[name] for name in ("new", "extended", "widened", "closed")] == [1, 1, 0, 1]
    (new,), (extended,), (closed,) = changes.of("new"), changes.of("extended"), changes.of("closed")
    assert new.length_after_px == pytest.approx(polyline_length(NEW_CRACK[0]), rel=0.1)
    assert extended.added_length_px == pytest.approx(np.hypot(tip[0] - x1, tip[1] - y1), rel=0.1)
    assert closed.length_before_px == pytest.approx(visible_length(SCENE_CRACKS["A"][0]), rel=0.1)
    shift = np.array([[1, 0, -OFFSET[1]], [0, 1, -OFFSET[0]], [0, 0, 1]])  # scene → AFTER's image
    for crack, (line, _) in ((new, NEW_CRACK), (closed, SCENE_CRACKS["A"])):
        assert crack.line.hausdorff_distance(shapely.LineString(apply_homography(shift, np.float64(line)))) < 15
    for crack in (new, extended, closed):
        assert crack.confidence > 0.5 and crack.length_floor_px == changes.noise.length_px < GROWTH_PX / 2
    assert new.prob_before < 0.1 < 0.9 < new.prob_after and closed.prob_after < 0.1 < 0.9 < closed.prob_before
    assert extended.prob_before < changes.after.threshold / 2 and extended.before_ids


def test_the_noise_floor_and_the_evidence_are_reported(darkness, tmp_path):
    changes = compare(*control_pair("shifted, georeferenced", tmp_path), segmenter=darkness)
    write_changes(changes, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    floor = summary["noise_floor"]
    assert floor["length_mm"] == pytest.approx(floor["length_px"] * 0.5, abs=1e-3) and floor["width_px"] > 1
    assert floor["alignment_error_px"] == 0 and floor["cracks_both_show_whole"] >= 3
    assert summary["evidence"]["after"] == {"from": "probability map", "high_threshold": 0.5, "low_threshold": 0.125}
    assert summary["evidence"]["fallback"] is None
    report = (tmp_path / "out" / "report.md").read_text()
    assert (
        f"no change under {floor['length_mm']:.2f} mm in length" in report and "Changes decided on evidence" in report
    )
    rows = list(csv.DictReader((tmp_path / "out" / "changes.csv").open()))
    assert {"confidence", "p_before", "p_after", "len_flr_px", "w_flr_mm"} <= set(rows[0])
    assert all(float(r["confidence"]) > 0.9 for r in rows if r["change"] == "unchanged")
    geo = json.loads((tmp_path / "out" / "changes.geojson").read_text())
    assert "confidence" in geo["features"][0]["properties"]


def test_a_measure_file_falls_back_to_the_centrelines_and_says_so(pair, tmp_path):
    path = measured(tmp_path, pair[1])
    changes = compare(path, Survey.from_arrays(pair[1], name="same"), assume_aligned=True)
    assert changes.counts()["unchanged"] == 5
    evidence = changes.summary()["evidence"]
    assert (
        evidence["before"]["from"].startswith("centrelines only")
        and "BEFORE has no probability map" in evidence["fallback"]
    )
    assert changes.summary()["noise_floor"]["tip_repeatability_px"]["before"] is None


def test_a_crack_under_a_masked_region_is_out_of_view_not_closed(pair):
    """A region the caller masks out of AFTER (a tarpaulin, a shadow) hides the cracks there: out of view."""
    _, mask_b, _, _, _ = pair
    hidden = np.ones(SIZE, bool)
    hidden[280:360, 300:500] = False  # over the crack "closed" of CRACKS
    after = Survey.from_arrays(mask_b, name="a", valid=hidden)
    changes = compare(Survey.from_arrays(mask_b, name="b"), after, assume_aligned=True)
    assert changes.counts() | {"unchanged": 0} == dict.fromkeys(changes.counts(), 0) | {"out_of_view": 1}
    assert changes.counts()["unchanged"] == 4


def test_a_segmented_photo_is_read_only_well_clear_of_its_no_data():
    """A network's map moves farther from a filled no-data region than from a photo's edge; a mask's does not."""
    valid = np.ones((200, 300), bool)
    valid[:, 250:] = False
    prob = np.zeros((200, 300), np.float32)
    views = [
        SurveyView.of(Survey.from_arrays(**given, valid=valid), np.eye(3), 2.0, 0.25)
        for given in (
            {"prob": prob},  # a segmented photo's map
            {"mask": prob > 0},
        )
    ]
    xy = np.array([[250 - apart, 100] for apart in (2, 40, 60, NO_DATA_EDGE_PX + 4, 120)], float)
    assert views[0].read(xy)[1].tolist() == [False, False, False, True, True]
    assert views[1].read(xy)[1].tolist() == [False, True, True, True, True]
    # a local width reads the mask up to half of it from the centreline: seen only where that much more is
    assert views[0].read(xy, beyond=np.array([0, 0, 0, 10, 10]))[1].tolist() == [False, False, False, False, True]
    near_top = np.array([[100.0, 8.0]])  # 5 px past the mask's margin from the image's edge
    assert [views[1].read(near_top, beyond)[1][0] for beyond in (0, 8)] == [True, False]


@pytest.mark.parametrize("flags, turns", [([], True), (["--no-tta-turns"], False)])
def test_compare_segments_with_the_eight_turns_unless_told(tmp_path, monkeypatch, flags, turns):
    seen = []

    def record(cls, name_or_path=None, options=None, **kwargs):
        seen.append(options.tta_turns)
        raise AssertionError("stop after the segmenter's options")

    monkeypatch.setattr(CrackSegmenter, "from_pretrained", classmethod(record))
    photo = str(tmp_path / "p.png")
    write_image(photo, np.full((64, 64, 3), 128, np.uint8))
    with pytest.raises(AssertionError, match="stop after"):
        main(["compare", photo, photo, "-o", str(tmp_path / "out"), *flags])
    assert seen == [turns]


@pytest.mark.parametrize("gap_px, gap_prob, found", [(6, 0.3, "extended"), (6, 0.02, "new"), (40, 0.3, "new")])
def test_a_crack_grown_on_past_a_faint_gap_is_an_extension(gap_px, gap_prob, found):
    """AFTER's segmentation cuts a crack grown on from its tip a few px past the old tip (the model's probability
    dips there under the threshold): where it stays over the low threshold across the gap, the grown part is the
    old crack extended, not a new crack; where it falls under the low one, or the cut is longer than the length
    floor, the two are separate cracks."""
    before, after = np.zeros((200, 300), np.float32), np.zeros((200, 300), np.float32)
    before[98:103, 40:140] = 1.0
    after[98:103, 40:140] = 1.0
    after[98:103, 140 : 140 + gap_px] = gap_prob
    after[98:103, 140 + gap_px : 214 + gap_px] = 1.0
    changes = compare(
        Survey.from_arrays(prob=cv2.GaussianBlur(before, (0, 0), 0.7), name="before", threshold=0.5),
        Survey.from_arrays(prob=cv2.GaussianBlur(after, (0, 0), 0.7), name="after", threshold=0.5),
        assume_aligned=True,
    )
    grown = max(changes.cracks, key=lambda c: c.line.bounds[2])
    assert grown.change == found and [c.change for c in changes.cracks].count("unchanged") == 1
    if found == "extended":
        assert grown.before_ids == (changes.cracks[0].id,) and grown.added_length_px == pytest.approx(74, abs=6)
        assert grown.length_change_px == pytest.approx(grown.added_length_px) and grown.confidence > 0.5


def test_a_crack_cut_in_two_and_grown_at_a_tip_is_extended_there():
    """AFTER's segmentation cuts a crack in two (its probability falls under the low threshold for a few px) and
    the crack grew on at one tip: the piece with the new tip is extended by what it added (the other piece still
    shows the rest of the crack, and a cut a few px long is no loss); the other piece is unchanged. Without the
    growth, neither piece is extended."""

    def prob(cut: bool, grown: int) -> np.ndarray:
        p = np.zeros((200, 360), np.float32)
        p[98:103, 40 : 240 + grown] = 1.0
        if cut:
            p[98:103, 130:136] = 0.02
        return cv2.GaussianBlur(p, (0, 0), 0.7)

    def changed(grown: int) -> list:
        changes = compare(
            Survey.from_arrays(prob=prob(False, 0), name="before", threshold=0.5),
            Survey.from_arrays(prob=prob(True, grown), name="after", threshold=0.5),
            assume_aligned=True,
        )
        return sorted(changes.cracks, key=lambda c: c.line.bounds[0])

    left, right = changed(60)
    assert (left.change, right.change) == ("unchanged", "extended")
    assert right.added_length_px == pytest.approx(60, abs=6)
    assert right.length_change_px == pytest.approx(right.added_length_px, abs=4)
    assert [c.change for c in changed(0)] == ["unchanged", "unchanged"]
