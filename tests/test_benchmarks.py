"""The benchmark scripts call the project's own functions and report what they timed: these checks keep them in
step when signatures change, and keep their figures honest (no timing here: the clock is a stand-in)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from crackseg.engines.base import cpu_has_bf16_matrix_engine

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# Runs in the benchmarks folder: counts the images each training pass really trains on, with a clock that moves
# 2 s per reading, then prints the report `main` writes for a stand-in rate of 0.01 img/s.
TRAIN_SPEED_CHECK = """
import json, sys, types
import train_speed

trained = []
real_pass = train_speed.train_one_epoch


class Counted:
    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            trained[-1] += len(batch["image"])
            yield batch


def counting_pass(model, loader, *args, **kwargs):
    trained.append(0)
    return real_pass(model, Counted(loader), *args, **kwargs)


clock = iter(range(0, 100, 2))
train_speed.train_one_epoch = counting_pass
train_speed.time = types.SimpleNamespace(perf_counter=lambda: float(next(clock)))
pairs = train_speed.find_all_pairs([sys.argv[1]], skip_unpaired=True)
rate = train_speed.images_per_second("pspnet", {}, 64, "fp32", 2, pairs)
print(json.dumps({"rate": rate, "trained": trained}))
train_speed.images_per_second = lambda *args: 0.01
sys.argv = ["train_speed.py", "--data", sys.argv[1], "--steps", "2", "--threads", "1"]
train_speed.main()
"""


def test_train_speed_reports_the_images_it_timed(synthetic_root):
    # In a child process: in this one, once the backend tests have run NNCF's OpenVINO int8 calibration, starting
    # the benchmark's DataLoader worker kills pytest with a segmentation fault.
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_SPEED_CHECK, str(synthetic_root)],
        cwd=BENCHMARKS, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    first, *report = done.stdout.strip().splitlines()
    timed = json.loads(first)
    # a warm-up batch of 8, then the 2 timed steps of 8; the rate is those 16 images over the 2 s the clock moved
    assert timed == {"rate": 16 / 2, "trained": [8, 16]}
    # the README's figures: img/s per crop size and precision, and the time of one epoch over the data at that rate
    precisions = ["fp32", "bf16"] if cpu_has_bf16_matrix_engine() else ["fp32"]
    count = 2 * len(precisions)
    header, rates, memory = report[-2 - count], report[-1 - count : -1], report[-1]
    assert header.endswith("batch 8, 1 threads, 24 pairs")
    pattern = r"  (\d+)² (\w+): +([\d.]+) img/s  -> one training epoch ≈ +([\d.]+) min"
    lines = [re.fullmatch(pattern, line) for line in rates]
    assert all(lines), report
    assert [(m[1], m[2]) for m in lines] == [(size, p) for size in ("256", "448") for p in precisions]
    assert {(m[3], m[4]) for m in lines} == {("0.01", f"{24 * 0.9 / 0.01 / 60:.1f}")}  # 24 pairs, 90 % trained on
    assert re.fullmatch(r"peak resident memory of this process: [\d.]+ GB", memory)


def test_compare_controls_agreement_maps_each_transform_back_to_the_photos_frame():
    """A "segmentation" that is the photo's own grey level must agree with itself exactly after a shift or a turn,
    and nearly after a rescale: the benchmark then measures the model, not its own bookkeeping."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import compare_controls
    finally:
        sys.path.remove(str(BENCHMARKS))
    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur(rng.integers(0, 256, (300, 340, 3), dtype=np.uint8), (0, 0), 4)
    grey = photo.mean(axis=2) / 255
    seen = []
    lines = np.zeros(photo.shape[:2], np.uint8)  # a "segmentation" of thin cracks: a rescaled copy of it agrees
    cv2.polylines(lines, [np.array([[10, 20], [150, 120], [320, 90]]), np.array([[40, 280], [200, 200]])], False, 1, 3)
    for name, changed, back in compare_controls.agreement_transforms(photo, 256):
        region, prob, mask = back(changed.mean(axis=2) / 255, 0.5)
        assert prob.shape == mask.shape == grey[region].shape, name
        if name.startswith(("shift", "rotated")):
            assert np.abs(prob - grey[region]).max() < 1e-9, name
        elif name.startswith("scale"):
            assert np.abs(prob - grey[region]).mean() < 0.01, name
            factor = changed.shape[1] / photo.shape[1]
            own = cv2.resize(
                lines, changed.shape[1::-1], interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
            )
            _, _, back_lines = back(own.astype(np.float32), 0.91)  # cut near the top, as the default's maps are
            agreement = 2 * (back_lines & (lines > 0)).sum() / (back_lines.sum() + (lines > 0).sum())
            assert agreement > 0.95, (name, agreement)
        seen.append(name.split()[0])
    assert sorted(set(seen)) == ["JPEG", "exposure", "rotated", "scale", "shift"]


def import_compare_controls():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import compare_controls
    finally:
        sys.path.remove(str(BENCHMARKS))
    return compare_controls


def test_a_mosaic_lays_validation_photos_of_one_source_edge_to_edge(tmp_path, monkeypatch):
    from crackseg.data import find_all_pairs, split_pairs
    from crackseg.io.images import read_image, read_mask
    from crackseg.synthetic import write_synthetic_dataset

    synthetic_root = write_synthetic_dataset(tmp_path, 50, size=(96, 128))  # 5 validation photos
    compare_controls = import_compare_controls()
    monkeypatch.setattr(compare_controls, "MOSAIC_SIDE", 2)
    monkeypatch.setattr(compare_controls, "MIN_MOSAIC_PX", 150)  # the generated photos are 96×128
    ((made, labels),) = compare_controls.mosaics(synthetic_root, None)
    pairs = split_pairs(find_all_pairs([synthetic_root]), 0.1, 0)[1]
    validation = [read_image(pair.image) for pair in pairs]
    assert len(validation) >= 4 and made.shape == (192, 256, 3) and labels.shape == (192, 256)
    assert np.array_equal(made[:96, :128], validation[0]) and np.array_equal(made[96:, 128:], validation[3])
    assert np.array_equal(labels[96:, 128:], read_mask(pairs[3].mask).astype(bool))  # each mask under its photo
    monkeypatch.setattr(compare_controls, "MIN_MOSAIC_PX", 250)  # too small a mosaic is left out
    assert compare_controls.mosaics(synthetic_root, None) == []


def test_tile_sizes_scores_a_segmenter_against_the_labels_and_its_shifted_self(monkeypatch):
    """Drawn dark lines on a light surface, segmented by the darkness stand-in: found exactly, wherever the tiles
    fall, and every tile of both calls counted."""
    from crackseg.inference import tile_starts
    from crackseg.synthetic import textured_background
    from tests.fakes import darkness_segmenter

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import tile_sizes
    finally:
        sys.path.remove(str(BENCHMARKS))
    photo = np.full((300, 400, 3), 230, np.uint8)
    cv2.line(photo, (10, 150), (390, 120), (20, 20, 20), 3)
    truth = photo[:, :, 0] < 128
    segmenter = darkness_segmenter().with_options(tile=128)
    figures = tile_sizes.score(segmenter, [(photo, truth)])
    assert figures["f1"] == 1.0 and figures["precision"] == 1.0 and figures["shift"] == 1.0
    dy, dx = tile_sizes.SHIFT

    def grid(height, width):
        return len(tile_starts(height, 128, 0.25)) * len(tile_starts(width, 128, 0.25))

    assert figures["tiles"] == grid(300, 400) + grid(300 - dy, 400 - dx)
    missed = truth.copy()
    missed[:, :200] = False  # labels the stand-in does not see: half its finds are false
    assert tile_sizes.score(segmenter, [(photo, missed)])["precision"] == pytest.approx(0.5, abs=0.05)
    # on the generated surfaces the stand-in's cracks are their pixels darker than mid-grey, per megapixel
    monkeypatch.setattr(tile_sizes, "TEXTURE_PX", 200)
    surfaces = [textured_background(200, 200, np.random.default_rng(seed)) for seed in tile_sizes.TEXTURE_SEEDS]
    dark = sum(int((surface.astype(np.uint8) <= 127).sum()) for surface in surfaces)
    assert dark > 0 and tile_sizes.false_cracks(segmenter) == pytest.approx(dark / (len(surfaces) * 0.04))


def test_a_laid_crack_takes_the_look_of_the_photos_own_crack():
    """A ribbon read across a real crack and laid along another path darkens it as the crack darkens its surface,
    and leaves the surface beyond its half width alone: the planted crack is the photo's crack, not a painted
    line."""
    from crackseg.synthetic import crack_ribbon, lay_ribbon

    surface = np.full((80, 120, 3), 200, np.uint8)
    photo = surface.copy()
    photo[18:22, 10:110] = 100  # a crack 4 px wide, half as bright as its surface
    ribbon = crack_ribbon(photo, np.array([[10.0, 20.0], [110.0, 20.0]]), 5)
    assert ribbon.shape[1:] == (11, 3)
    assert np.allclose(ribbon[10:-10, 5], 0.5, atol=0.02) and np.allclose(ribbon[10:-10, [0, -1]], 1.0, atol=0.02)
    path = np.array([[20.0, 60.0], [60.0, 55.0], [100.0, 60.0]])  # longer than the ribbon's body: folded back
    laid = lay_ribbon(surface, path, ribbon[10:30], start=3.0)
    assert abs(int(laid[55, 60, 0]) - 100) <= 8 and abs(int(laid[59, 25, 0]) - 100) <= 8  # the crack's darkness
    assert (laid[:45] == 200).all() and (laid[70:] == 200).all()  # beyond the half width: untouched
    assert (laid[:, :15] == 200).all() and (laid[:, 106:] == 200).all()  # and beyond the path's ends


def test_a_planted_change_is_matched_to_the_change_that_runs_along_it():
    """The change found for a planted one is the change running along the planted path for longest (an extension's
    added parts), not whichever change lies nearest one point of it: a crack segmented a few px beside the
    planted tip is still its extension, and a nearby unchanged crack is not what it was found as."""
    import shapely

    compare_controls = import_compare_controls()
    from crackseg.compare.changes import CrackChange

    prob = np.zeros((100, 200), np.float32)
    prob[48:53, 20:180] = 1.0
    after = type("After", (), {"prob": prob, "threshold": 0.5})()
    path = np.array([[100.0, 50.0], [140.0, 50.0]])
    grown = CrackChange(1, "extended", shapely.MultiLineString([[(20, 50), (131, 51)]]), shapely.MultiLineString())
    grown.added, grown.added_length_px = shapely.MultiLineString([[(100, 51), (131, 51)]]), 31.0
    near = CrackChange(2, "unchanged", shapely.MultiLineString([[(141, 52), (180, 52)]]), shapely.MultiLineString())
    changes = type("Changes", (), {"after": after, "cracks": [near, grown]})()
    planted = compare_controls.Planted("extended", 40.0, path)
    assert compare_controls.found(changes, planted) == ("extended", 31.0)
    grown.change = "unchanged"
    assert compare_controls.found(changes, planted) == ("unchanged", None)
    changes.cracks = [near]
    assert compare_controls.found(changes, planted) == ("missed", None)
    after.prob = np.zeros_like(prob)
    assert compare_controls.found(changes, planted) == ("not segmented", None)


def test_a_new_crack_cut_in_two_is_found_as_its_longer_piece_against_all_that_shows():
    """A laid crack that AFTER's segmentation cuts in two is found as its longer piece, and what shows of it is
    both pieces: the length error against that is the comparison's own, apart from what the model leaves out."""
    import shapely

    compare_controls = import_compare_controls()
    from crackseg.compare.changes import CrackChange

    prob = np.zeros((100, 200), np.float32)
    prob[48:53, 20:180] = 1.0
    after = type("After", (), {"prob": prob, "threshold": 0.5})()
    longer = CrackChange(1, "new", shapely.MultiLineString([[(40, 50), (100, 50)]]), shapely.MultiLineString())
    longer.length_after_px = 60.0
    shorter = CrackChange(2, "new", shapely.MultiLineString([[(110, 50), (130, 50)]]), shapely.MultiLineString())
    elsewhere = CrackChange(3, "new", shapely.MultiLineString([[(40, 90), (140, 90)]]), shapely.MultiLineString())
    changes = type("Changes", (), {"after": after, "cracks": [shorter, elsewhere, longer]})()
    planted = compare_controls.Planted("new", 100.0, np.array([[35.0, 50.0], [135.0, 50.0]]))
    assert compare_controls.found(changes, planted) == ("new", 60.0)
    assert compare_controls.shown_length(changes, planted) == pytest.approx(80.0)


def test_painting_over_spares_the_lengthened_crack_and_the_other_planted_changes():
    """The crack painted over is never one whose paint would reach the crack lengthened (near its end, it would
    erase the tip the extension grows from) or a planted crack: it is another one, or none."""
    compare_controls = import_compare_controls()
    from crackseg.compare import Survey

    mask = np.zeros((240, 320), bool)
    mask[60:63, 50:150] = True  # A, the crack lengthened
    mask[66:140, 156:159] = True  # B, a few px past A's end
    mask[180:183, 60:200] = True  # C, far from both
    photo = np.full((*mask.shape, 3), 200, np.uint8)
    photo[mask] = 90
    base = Survey.from_arrays(mask, photo, "before")

    def crack_at(x: float, y: float) -> int:
        lines = [max(lines, key=len) for lines in base.centrelines]
        nearest = min(range(len(lines)), key=lambda i: np.hypot(*(lines[i].mean(axis=0) - (x, y))))
        return base.measurement.cracks[nearest].id

    a, c = crack_at(100, 61), crack_at(130, 181)
    painted = compare_controls.paint_over(photo, base, a, [])
    assert painted is not None and painted[1].path[:, 1].min() > 170  # C: B's paint would reach A's end
    new_crack = compare_controls.Planted("new", 60.0, np.array([[80.0, 191.0], [140.0, 191.0]]), 2.0)
    assert compare_controls.paint_over(photo, base, a, [new_crack]) is None  # C's paint would reach it
    assert compare_controls.paint_over(photo, base, c, [])[1].path[:, 1].max() < 150  # A or B, far from C


def test_the_timed_comparisons_report_wall_and_cpu_time_and_their_ratios(monkeypatch):
    """Each comparison is charged to its segmentation, on the wall clock and in CPU time (a shared machine's
    steadier measure), even when it fails to align."""
    compare_controls = import_compare_controls()
    clocks = {"wall": 0.0, "cpu": 0.0}
    monkeypatch.setattr(compare_controls.time, "perf_counter", lambda: clocks["wall"])
    monkeypatch.setattr(compare_controls.time, "process_time", lambda: clocks["cpu"])

    def work(wall, cpu, fail=False):
        clocks["wall"] += wall
        clocks["cpu"] += cpu
        if fail:
            raise compare_controls.AlignmentError("not aligned")
        return "done"

    stopwatch = compare_controls.Stopwatch()
    assert stopwatch.time("turns", work, 6.0, 9.0) == "done"
    try:
        stopwatch.time("turns", work, 2.0, 3.0, fail=True)
    except compare_controls.AlignmentError:
        pass
    stopwatch.time("one pass", work, 4.0, 4.0)
    assert stopwatch.ratio("turns", "one pass") == (
        "turns 8.0 s (12.0 s CPU), one pass 4.0 s (4.0 s CPU): ratio 2.00 (3.00 CPU)"
    )


def test_the_large_sparse_photo_holds_the_photo_at_its_centre_on_a_generated_surface():
    """The photo's own contrast at the surface's brightness in the middle, feathered in (no border a model could
    take for a crack), and generated surface everywhere else."""
    compare_controls = import_compare_controls()
    photo = np.full((100, 120, 3), 60, np.uint8)
    photo[50, 20:100] = 0  # a dark line
    big = compare_controls.large_sparse_photo(photo, 600, 400, np.random.default_rng(0)).astype(int)
    assert big.shape == (400, 600, 3)
    inset = big[150:250, 240:360]
    flat = inset[40, 40]  # two feathers in from the inset's edge: the photo alone
    assert (inset[33:45, 33:87] == flat).all()  # the photo, flat as it is
    assert np.abs(inset[50, 33:87] - flat + 60).max() <= 1  # its line as dark against it
    assert abs(flat[0] - big[150:250, 240:360].mean()) < 10  # at the surface's brightness
    from crackseg.synthetic import textured_background

    surface = np.clip(textured_background(400, 600, np.random.default_rng(0)), 0, 255).astype(np.uint8)
    beyond = np.ones((400, 600), bool)
    beyond[150:250, 240:360] = False  # outside the inset, the surface: the photo fades in within its own frame
    assert (np.abs(big[beyond] - surface[beyond][:, None]) <= 1).all()


def test_design_speed_times_each_design_on_the_engines_against_the_first():
    designs = [
        'unet:timm-tf_efficientnet_lite0:{"encoder_depth": 3, "decoder_channels": [32, 16, 8]}',
        'unet:timm-tf_efficientnet_lite0:{"encoder_depth": 3, "decoder_channels": [8, 8, 4]}',
    ]
    command = [sys.executable, str(BENCHMARKS / "design_speed.py"), "--threads", "1", "--iterations", "2"]
    command += ["--calibration-crops", "2"]
    done = subprocess.run([*command, "--design", *designs], capture_output=True, text=True, cwd=BENCHMARKS)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    first, second = (lines[lines.index(design) + 1] for design in designs)
    gflop = [float(re.search(r"([\d.]+) GFLOP", line).group(1)) for line in (first, second)]
    assert 0 < gflop[1] < gflop[0]
    for engine in ("onnx fp32", "openvino fp32", "openvino int8"):  # the dev install has NNCF
        assert re.search(rf"{engine} [\d.]+ \(1\.00×\)", first) and re.search(rf"{engine} [\d.]+ \(", second)
    assert "fastest / fastest 1.00×" in first
    bad = subprocess.run([*command, "--design", "unet:x:{oops"], capture_output=True, text=True, cwd=BENCHMARKS)
    assert bad.returncode != 0 and "not JSON" in bad.stderr


def test_compare_controls_give_each_after_photo_its_own_valid_data():
    """Every control's AFTER is an RGB photo, with no-data only where the control makes some (the strip, the corners
    a perspective warp leaves empty: black there, and only there)."""
    compare_controls = import_compare_controls()
    photo = np.full((300, 340, 3), 128, np.uint8)
    made = {
        name: (after, valid)
        for name, _, after, _, _, valid in compare_controls.controls(photo, np.random.default_rng(0))
    }
    assert {"cast shadow", "defocus", "sensor noise", "perspective", "no-data strip"} <= set(made)
    for name, (after, valid) in made.items():
        assert after.dtype == np.uint8 and after.ndim == 3, name
        if valid is not None:
            assert valid.shape == after.shape[:2] and 0.05 < (~valid).mean() < 0.3, name
            assert (after[~valid] == 0).all() and (after[valid] > 0).all(), name
    assert (made["cast shadow"][0] < 128).mean() > 0.05  # a shadow falls across it
    assert made["sensor noise"][0].std() > 3
