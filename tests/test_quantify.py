"""Crack measurement on generated masks of known geometry, and `crackseg measure` end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import regionprops

from crackseg import quantify
from crackseg.cli import main
from crackseg.images import read_image, write_image
from crackseg.quantify import measure, width_figure
from crackseg.synthetic import synthetic_crack

LENGTH = 300


def band(width, length=LENGTH, angle=0.0, shift=0.0, size=None, centre=None):
    """Pixels whose centres lie inside a width × length rectangle, turned `angle` degrees counter-clockwise.

    `shift` moves it across its own axis by a fraction of a pixel.
    """
    size = size or int(length + 2 * width + 20)
    shape = size if isinstance(size, tuple) else (size, size)
    cy, cx = centre or (shape[0] / 2, shape[1] / 2)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    t = np.radians(angle)
    along = (xx - cx) * np.cos(t) - (yy - cy) * np.sin(t)
    across = (xx - cx) * np.sin(t) + (yy - cy) * np.cos(t) - shift
    return (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)


def digital_band(width, angle):
    """A band whose pixels really are `width` wide on average (pixel area ≈ width × length).

    A digital band cannot take every width: at 45° it is k/√2 px wide, and the centred band of nominal
    width 3 covers 5 diagonals, 3.54 px. Shifting it across by a fraction of a pixel picks the digitisation
    closest to the nominal width, so these tests check the measurement, not the drawing.
    """
    best = min(
        (band(width, angle=angle, shift=s) for s in np.linspace(0, 0.7, 8)),
        key=lambda m: abs(m.sum() / LENGTH - width),
    )
    assert abs(best.sum() / LENGTH - width) <= (0.35 if width == 1 else 0.25)
    return best


def segment(shape, p0, p1, width):
    """Pixels within width/2 of the segment p0–p1 (x, y), flat ends."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    (x0, y0), (x1, y1) = p0, p1
    length = np.hypot(x1 - x0, y1 - y0)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    along = (xx - x0) * ux + (yy - y0) * uy
    across = -(xx - x0) * uy + (yy - y0) * ux
    return (along >= 0) & (along <= length) & (np.abs(across) <= width / 2)


def arc(radius, width, span_deg):
    size = int(2 * radius + 2 * width + 20)
    yy, xx = np.mgrid[0:size, 0:size].astype(float) - size / 2
    angle = np.degrees(np.arctan2(yy, xx)) % 360
    return (np.abs(np.hypot(xx, yy) - radius) <= width / 2) & (angle <= span_deg)


@pytest.mark.parametrize("angle", [0, 30, 45, 90])
@pytest.mark.parametrize("width", [1, 3, 5, 9, 15])
def test_straight_band_width_and_length(width, angle):
    result = measure(digital_band(width, angle))
    assert result.count == 1 and result.dropped == 0
    crack = result.cracks[0]
    assert abs(crack.width_median_px - width) <= (1.0 if width == 1 else 0.5), crack
    assert abs(crack.length_px / LENGTH - 1) <= 0.03, crack
    assert crack.endpoints == 2 and crack.crack_class != "branched-network", crack  # blunt-end forks pruned


def test_anti_diagonal_bands_keep_their_skeleton():
    # skimage's default (Zhang) thinning erased some of these to one pixel; the measured length shows it.
    for width in (1, 2, 4, 7, 10):
        for shift in (0.1, 0.3, 0.5):
            result = measure(band(width, length=120, angle=135, shift=shift))
            assert result.count == 1 and abs(result.cracks[0].length_px / 120 - 1) <= 0.03, (width, shift)


@pytest.mark.parametrize("width", [2, 4, 6])
def test_even_widths(width):
    crack = measure(digital_band(width, 0)).cracks[0]  # 2·d − 1 alone would read width − 1
    assert abs(crack.width_median_px - width) <= 0.5


@pytest.mark.parametrize(
    ("angle", "expected"), [(0, "transverse"), (30, "diagonal"), (135, "diagonal"), (90, "longitudinal")]
)
def test_orientation_and_class(angle, expected):
    crack = measure(band(5, angle=angle)).cracks[0]
    assert abs(crack.orientation_deg - angle) <= 1.0
    assert crack.crack_class == expected
    across = measure(band(5, angle=angle), longitudinal_axis="horizontal").cracks[0].crack_class
    assert across == {"transverse": "longitudinal", "longitudinal": "transverse"}.get(expected, expected)


def test_orientation_matches_regionprops():
    rng = np.random.default_rng(0)
    labels = np.zeros((120, 120), np.int32)
    for k in range(1, 9):  # elongated shapes, where the principal axis is well defined
        x0, y0, x1, y1 = rng.uniform(5, 115, 4)
        labels[segment(labels.shape, (x0, y0), (x1, y1), rng.uniform(1, 6)) & (labels == 0)] = k
    n = labels.max()
    rows, cols = np.nonzero(labels)
    ours = quantify.principal_axes(rows, cols, labels[rows, cols], n + 1)[1:]
    theirs = [(90 + np.degrees(p.orientation)) % 180 for p in regionprops(labels)]  # from the row axis
    difference = (np.asarray(ours) - np.asarray(theirs) + 90) % 180 - 90
    assert np.abs(difference).max() < 1e-6


@pytest.mark.parametrize(("radius", "width", "span"), [(100, 5, 180), (150, 9, 120), (80, 3, 270)])
def test_arc_length(radius, width, span):
    crack = measure(arc(radius, width, span)).cracks[0]
    assert abs(crack.length_px / (np.radians(span) * radius) - 1) <= 0.03, crack
    assert abs(crack.width_median_px - width) <= 0.5, crack
    assert crack.crack_class != "branched-network"


@pytest.mark.parametrize("width", [1, 3, 9])
def test_t_and_x_shapes_are_branched(width):
    t_shape = segment((200, 240), (20, 60), (220, 60), width) | segment((200, 240), (120, 60), (120, 190), width)
    x_shape = segment((240, 240), (20, 20), (220, 220), width) | segment((240, 240), (20, 220), (220, 20), width)
    t_crack, x_crack = measure(t_shape).cracks[0], measure(x_shape).cracks[0]
    assert t_crack.crack_class == x_crack.crack_class == "branched-network"
    assert (t_crack.endpoints, x_crack.endpoints) == (3, 4)
    assert abs(t_crack.length_px / (200 + 130) - 1) <= 0.03  # tip to tip: bar plus stem from the bar's middle
    assert abs(x_crack.length_px / (2 * 200 * np.sqrt(2)) - 1) <= 0.03


def test_two_separate_bands_and_summary():
    mask = segment((120, 320), (10, 30), (310, 30), 3) | segment((120, 320), (10, 90), (310, 80), 7)
    result = measure(mask)
    assert result.count == 2
    summary = result.summary()
    assert summary["count"] == 2
    assert summary["total_length_px"] == pytest.approx(sum(c.length_px for c in result.cracks), abs=0.02)
    assert summary["max_width_px"] == max(c.width_max_px for c in result.cracks) > 6
    assert summary["crack_area_fraction"] == pytest.approx(mask.sum() / mask.size, abs=1e-6)
    assert sorted(round(c.width_median_px) for c in result.cracks) == [3, 7]
    assert result.cracks[0].bbox == (10, 29, 301, 3)  # x, y, width, height of the thin one
    assert set(np.unique(result.skeleton_id)) == {1, 2}


def test_empty_mask():
    result = measure(np.zeros((64, 80), bool), pixel_size_mm=0.1)
    assert result.count == 0 and result.dropped == 0 and result.total_length_px == 0 and result.max_width_px == 0
    json.dumps(result.to_dict())
    assert width_figure(np.zeros((64, 80, 3), np.uint8), result).ndim == 3


def test_crack_filling_the_whole_image():
    crack = measure(np.ones((20, 200), bool)).cracks[0]
    assert crack.width_median_px == pytest.approx(20, abs=0.5)


def test_millimetres():
    mask = band(5, angle=0)
    px, mm = measure(mask), measure(mask, pixel_size_mm=0.25)
    a, b = px.cracks[0], mm.cracks[0]
    assert a.length_mm is None and a.area_mm2 is None and "total_length_mm" not in px.summary()
    assert b.length_mm == pytest.approx(a.length_px * 0.25, abs=1e-3)
    assert b.width_median_mm == pytest.approx(a.width_median_px * 0.25, abs=1e-3)
    assert b.area_mm2 == pytest.approx(a.area_px * 0.0625)
    assert mm.summary()["total_length_mm"] == pytest.approx(px.total_length_px * 0.25, abs=1e-2)
    with pytest.raises(ValueError, match="pixel size"):
        measure(mask, pixel_size_mm=0)


def test_short_specks_are_dropped_and_counted():
    mask = band(3, length=100, size=140)
    mask[5:7, 5:7] = mask[130:132, 10:12] = mask[10:13, 120:122] = True
    result = measure(mask)
    assert (result.count, result.dropped) == (1, 3)
    assert measure(mask, min_length=0).count == 4


def test_pinholes_are_filled_before_measuring():
    mask = band(9, angle=0)
    centre = mask.shape[0] // 2
    mask[centre - 1 : centre + 1, 100:102] = False  # a 2×2 hole in the middle of the crack
    assert measure(mask).cracks[0].crack_class == "transverse"
    assert measure(mask, hole_area=0).cracks[0].crack_class == "branched-network"  # the hole makes a loop


def test_distance_transform_matches_scipy():
    rng = np.random.default_rng(1)
    mask = ndi.binary_opening(rng.random((120, 150)) < 0.7)
    assert np.abs(quantify.distance_to_background(mask) - ndi.distance_transform_edt(mask)).max() < 1e-4


def test_mask_values():
    mask = band(3, length=60, size=90)
    for form in (mask.astype(np.uint8) * 255, mask.astype(np.float32), np.dstack([mask * 255] * 3)):
        assert measure(form).cracks[0].area_px == mask.sum()
    with pytest.raises(ValueError, match="2-D"):
        measure(np.zeros((2, 3, 4, 5)))


def test_width_figure():
    image, mask = synthetic_crack((96, 128), seed=3, crack_width=4)
    result = measure(mask, pixel_size_mm=0.5)
    figure = width_figure(image, result)
    assert figure.dtype == np.uint8 and figure.shape[2] == 3
    assert figure.shape[1] > 480  # small inputs are enlarged, and a colour bar is added
    saturated = (figure.max(axis=2).astype(int) - figure.min(axis=2)) > 100
    assert saturated.sum() > 50  # the coloured skeleton
    with pytest.raises(ValueError, match="measured"):
        width_figure(image[:50], result)


def test_cli_measures_masks(tmp_path, capsys):
    masks = tmp_path / "masks"
    write_image(
        masks / "two.png",
        (segment((80, 200), (10, 20), (190, 20), 3) | band(5, 40, 90, size=(80, 200), centre=(55, 100))).astype(
            np.uint8
        )
        * 255,
    )
    write_image(masks / "one.png", band(7, 120, 30, size=(160, 160)).astype(np.uint8) * 255)
    (masks / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = main(["measure", str(masks), "-o", str(out), "--masks", "--pixel-size", "0.2"])
    assert code == 1
    assert "broken.png" in capsys.readouterr().err
    report = json.loads((out / "two_measure.json").read_text())
    assert report["summary"]["count"] == 2 and report["pixel_size_mm"] == 0.2 and report["source"] == "mask"
    assert report["cracks"][0]["length_mm"] == pytest.approx(report["cracks"][0]["length_px"] * 0.2, abs=1e-3)
    rows = list(csv.DictReader((out / "cracks.csv").open()))
    assert len(rows) == 3 and {r["image"].split("/")[-1] for r in rows} == {"one.png", "two.png"}
    assert float(rows[0]["width_median_mm"]) > 0
    width_png = read_image(out / "one_width.png")
    assert width_png.shape[1] > 160
    assert not (out / "broken_measure.json").exists()

    assert main(["measure", str(masks / "one.png"), "-o", str(out / "again"), "--masks", "--min-length", "500"]) == 0
    again = json.loads((out / "again" / "one_measure.json").read_text())
    assert again["summary"]["count"] == 0 and again["summary"]["dropped_short"] == 1


def test_cli_masks_refuses_a_model(tmp_path, tiny_model_dir):
    write_image(tmp_path / "m.png", np.zeros((20, 20), np.uint8))
    assert (
        main(
            [
                "measure",
                str(tmp_path / "m.png"),
                "-o",
                str(tmp_path / "o"),
                "--masks",
                "--weights",
                str(tiny_model_dir),
            ]
        )
        == 2
    )


def test_cli_measures_photos_with_a_model(tmp_path, tiny_model_dir, capsys):
    for seed in range(2):
        image, _ = synthetic_crack((64, 96), seed=seed)
        write_image(tmp_path / "photos" / f"p{seed}.jpg", image)
    out = tmp_path / "out"
    code = main(
        [
            "measure",
            str(tmp_path / "photos"),
            "-o",
            str(out),
            "--weights",
            str(tiny_model_dir),
            "--threshold",
            "0.5",
        ]
    )
    assert code == 0, capsys.readouterr().err
    for seed in range(2):
        report = json.loads((out / f"p{seed}_measure.json").read_text())
        assert report["source"] == "photo" and report["image_size"] == {"height": 64, "width": 96}
        assert (out / f"p{seed}_width.png").exists()
    assert (out / "cracks.csv").read_text().startswith("image,id,crack_class,length_px")
