"""Metrics against hand-computed values on tiny arrays and against brute-force loops."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist, directed_hausdorff

from crackseg.metrics import (
    PAPER_THRESHOLDS,
    THRESHOLDS,
    boundary,
    centreline,
    centreline_counts,
    centreline_iou,
    confusion,
    dataset_scores,
    hausdorff,
    image_scores,
    paper_image_f1,
    paper_image_miou,
    paper_summary,
    paper_sweep_counts,
    scores,
    sweep_counts,
    sweep_summary,
    tolerance_counts,
    tolerance_scores,
)


def _check(result: dict, **expected) -> None:
    for key, value in expected.items():
        assert result[key] == pytest.approx(value), key


# --- one threshold -----------------------------------------------------------------------------------------


def test_empty_prediction_of_empty_truth_scores_one():
    empty = np.zeros((4, 5), bool)
    result = image_scores(empty, empty)
    _check(result, tp=0, fp=0, fn=0, tn=20, iou=1, precision=1, recall=1, f1=1, accuracy=1)


def test_false_positives_on_empty_truth_score_zero():
    truth = np.zeros((4, 5), bool)
    pred = truth.copy()
    pred[1, 1:4] = True  # 3 false positives
    # recall has no positives to find: 1 by the documented convention; IoU, precision and F1 are 0
    _check(
        image_scores(pred, truth),
        tp=0,
        fp=3,
        fn=0,
        tn=17,
        iou=0,
        precision=0,
        recall=1,
        f1=0,
        accuracy=17 / 20,
    )


def test_perfect_prediction():
    truth = np.zeros((6, 6), bool)
    truth[2, :] = True
    _check(image_scores(truth, truth), tp=6, fp=0, fn=0, tn=30, iou=1, precision=1, recall=1, f1=1, accuracy=1)


def test_all_wrong_prediction():
    truth = np.zeros((4, 4), bool)
    truth[:, 0] = True
    _check(image_scores(~truth, truth), tp=0, fp=12, fn=4, tn=0, iou=0, precision=0, recall=0, f1=0, accuracy=0)


def test_empty_prediction_of_cracked_image():
    truth = np.zeros((4, 4), bool)
    truth[0, 0] = True
    _check(image_scores(np.zeros_like(truth), truth), iou=0, precision=1, recall=0, f1=0, accuracy=15 / 16)


def test_partial_overlap_hand_computed():
    truth = np.zeros((4, 4), bool)
    truth[1, :] = True  # 4 crack pixels
    pred = np.zeros((4, 4), bool)
    pred[1, :3] = True  # 3 of them found
    pred[3, 3] = True  # and one false alarm
    # TP 3, FP 1, FN 1, TN 11
    _check(
        image_scores(pred, truth),
        tp=3,
        fp=1,
        fn=1,
        tn=11,
        iou=3 / 5,
        precision=3 / 4,
        recall=3 / 4,
        f1=6 / 8,
        accuracy=14 / 16,
    )


def test_mean_and_micro_differ_as_defined():
    # image A: 1 pixel found exactly (IoU 1); image B: 9 crack pixels all missed (IoU 0)
    counts = np.array([[1, 0, 0, 99], [0, 0, 9, 91]])
    result = dataset_scores(counts)
    assert result["mean"]["iou"] == pytest.approx(0.5)
    assert result["micro"]["iou"] == pytest.approx(1 / 10)
    assert result["micro"]["recall"] == pytest.approx(1 / 10)
    assert result["counts"] == {"tp": 1, "fp": 0, "fn": 9, "tn": 190}


# --- the sweep ---------------------------------------------------------------------------------------------


def _images(seed: int = 0, n: int = 4):
    """Probability maps correlated with random masks, plus values exactly on the thresholds."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        truth = rng.random((17, 23)) < 0.15
        prob = np.clip(0.35 * truth + rng.random(truth.shape) * 0.7, 0, 1).astype(np.float32)
        prob.ravel()[:99] = THRESHOLDS.astype(np.float32)  # exactly at each threshold: counted as ≥ t
        if i == n - 1:
            truth[:] = False  # a crack-free image
        out.append((prob, truth))
    return out


def _brute_counts(prob, truth):
    return np.array([list(confusion(prob >= float(t), truth).values()) for t in THRESHOLDS])


def test_sweep_counts_match_brute_force():
    for prob, truth in _images():
        np.testing.assert_array_equal(sweep_counts(prob, truth), _brute_counts(prob, truth))


def test_sweep_summary_matches_brute_force():
    images = _images(seed=1)
    brute = np.stack([_brute_counts(p, t) for p, t in images])  # (N, T, 4)
    result = sweep_summary(np.stack([sweep_counts(p, t) for p, t in images]))

    dataset_f1 = [scores(*brute[:, k].sum(axis=0))["f1"] for k in range(len(THRESHOLDS))]
    per_image_f1 = [[scores(*brute[i, k])["f1"] for k in range(len(THRESHOLDS))] for i in range(len(images))]
    mean_iou = [np.mean([scores(*brute[i, k])["iou"] for i in range(len(images))]) for k in range(len(THRESHOLDS))]

    assert result["ods_f1"] == pytest.approx(max(dataset_f1))
    assert result["ods_threshold"] == pytest.approx(THRESHOLDS[int(np.argmax(dataset_f1))])
    assert result["ois_f1"] == pytest.approx(np.mean([max(f) for f in per_image_f1]))
    assert result["aiu"] == pytest.approx(np.mean(mean_iou))
    assert result["iou_max"] == pytest.approx(max(mean_iou))
    assert result["curve"]["f1"] == pytest.approx(dataset_f1)
    # each image at its own best threshold does at least as well as all images at any one threshold
    assert result["ois_f1"] >= np.mean(per_image_f1, axis=0).max() - 1e-12


def test_sweep_summary_hand_computed():
    # Two 1×2 images; image 1 is a crack pixel at 0.9 and background at 0.2; image 2 a crack at 0.3.
    prob1, truth1 = np.float32([[0.9, 0.2]]), np.array([[True, False]])
    prob2, truth2 = np.float32([[0.3, 0.1]]), np.array([[True, False]])
    result = sweep_summary(np.stack([sweep_counts(prob1, truth1), sweep_counts(prob2, truth2)]))
    # t ≤ 0.1: both images predict everything (IoU 1/2 each); 0.1 < t ≤ 0.2: image 1 IoU 1/2, image 2 IoU 1;
    # 0.2 < t ≤ 0.3: both perfect; 0.3 < t ≤ 0.9: image 1 perfect, image 2 IoU 0; t > 0.9: both 0.
    expected_mean_iou = [0.5] * 10 + [0.75] * 10 + [1.0] * 10 + [0.5] * 60 + [0.0] * 9
    assert result["curve"]["mean_iou"] == pytest.approx(expected_mean_iou)
    assert result["aiu"] == pytest.approx(np.mean(expected_mean_iou))
    assert result["iou_max"] == 1.0 and result["iou_max_threshold"] == pytest.approx(0.21)
    assert result["ods_f1"] == 1.0 and result["ois_f1"] == 1.0


# --- tolerance F1 ------------------------------------------------------------------------------------------


def _brute_tolerance(pred, truth, radius):
    p, t = np.argwhere(pred), np.argwhere(truth)
    if len(p) == 0 or len(t) == 0:
        return np.array([len(p), 0, len(t), 0])
    d = cdist(p, t)
    return np.array([len(p), (d.min(axis=1) <= radius).sum(), len(t), (d.min(axis=0) <= radius).sum()])


@pytest.mark.parametrize("radius", [0, 1, 1.5, 2, 3])
def test_tolerance_counts_match_brute_force(radius):
    rng = np.random.default_rng(int(radius * 10))
    for _ in range(5):
        truth, pred = rng.random((20, 24)) < 0.08, rng.random((20, 24)) < 0.08
        np.testing.assert_array_equal(tolerance_counts(pred, truth, radius), _brute_tolerance(pred, truth, radius))


def test_tolerance_f1_hand_computed():
    truth = np.zeros((10, 10), bool)
    truth[:, 3] = True
    pred = np.zeros_like(truth)
    pred[:, 5] = True  # two pixels to the right of every crack pixel
    assert tolerance_scores(tolerance_counts(pred, truth, 2))["f1"] == 1.0
    assert tolerance_scores(tolerance_counts(pred, truth, 1.9))["f1"] == 0.0
    pred[:5, 5] = False  # half the crack found within 2 px, every prediction near it
    _check(tolerance_scores(tolerance_counts(pred, truth, 2)), precision=1.0, recall=0.5, f1=2 / 3)
    empty = np.zeros_like(truth)
    _check(tolerance_scores(tolerance_counts(empty, empty, 2)), precision=1, recall=1, f1=1)
    _check(tolerance_scores(tolerance_counts(pred, empty, 2)), precision=0, recall=1, f1=0)
    _check(tolerance_scores(tolerance_counts(empty, truth, 2)), precision=1, recall=0, f1=0)


def test_tolerance_zero_radius_is_plain_precision_recall():
    rng = np.random.default_rng(3)
    truth, pred = rng.random((16, 16)) < 0.2, rng.random((16, 16)) < 0.2
    plain = image_scores(pred, truth)
    tol = tolerance_scores(tolerance_counts(pred, truth, 0))
    _check(tol, precision=plain["precision"], recall=plain["recall"], f1=plain["f1"])


# --- HD95 --------------------------------------------------------------------------------------------------


def _square(shape, top, left, size):
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_boundary_of_square_and_of_mask_touching_the_edge():
    assert boundary(_square((9, 9), 2, 2, 5)).sum() == 16  # the ring of a 5×5 square
    full = np.ones((3, 4), bool)
    assert boundary(full).sum() == 10  # the image edge counts as background
    assert not boundary(np.zeros((3, 4), bool)).any()


def test_boundary_matches_skimage_inner_boundaries():
    from skimage.segmentation import find_boundaries

    rng = np.random.default_rng(5)
    for _ in range(5):
        mask = rng.random((25, 31)) < 0.4
        expected = find_boundaries(np.pad(mask, 1), mode="inner", connectivity=1)[1:-1, 1:-1]
        np.testing.assert_array_equal(boundary(mask), expected)


@pytest.mark.parametrize(
    "pred, truth",
    [
        (_square((30, 30), 5, 5, 8), _square((30, 30), 9, 12, 10)),
        (_square((30, 30), 2, 2, 4), _square((30, 30), 20, 22, 6)),
        (_square((30, 30), 3, 3, 20), _square((30, 30), 8, 8, 4)),
    ],
)
def test_hausdorff_matches_scipy_directed_hausdorff(pred, truth):
    a, b = np.argwhere(boundary(pred)), np.argwhere(boundary(truth))
    reference = max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])
    assert hausdorff(pred, truth, 100) == pytest.approx(reference)
    assert hausdorff(pred, truth, 95) <= reference + 1e-9
    assert hausdorff(truth, pred, 95) == pytest.approx(hausdorff(pred, truth, 95))  # symmetric


def test_hd95_hand_computed_and_outlier_robust():
    truth = np.zeros((40, 120), bool)
    truth[10, :100] = True
    pred = np.zeros_like(truth)
    pred[13, :100] = True  # a parallel line 3 px away: every distance is 3
    assert hausdorff(pred, truth, 95) == pytest.approx(3.0)
    pred[35, 119] = True  # one stray pixel far away: HD100 jumps, HD95 stays
    assert hausdorff(pred, truth, 100) > 20
    assert hausdorff(pred, truth, 95) == pytest.approx(3.0)


def test_hausdorff_is_undefined_when_either_mask_is_empty():
    empty, square = np.zeros((8, 8), bool), _square((8, 8), 2, 2, 3)
    assert hausdorff(empty, square) is None
    assert hausdorff(square, empty) is None
    assert hausdorff(empty, empty) is None
    assert hausdorff(square, square) == 0.0


# --- centreline IoU (clIoU) --------------------------------------------------------------------------------


def _line(row: int, start: int = 10, stop: int = 90, shape=(48, 120)) -> np.ndarray:
    """A one-pixel horizontal line on `row`, columns start … stop − 1 (80 px by default)."""
    mask = np.zeros(shape, bool)
    mask[row, start:stop] = True
    return mask


@pytest.mark.parametrize(
    ("pred", "radius", "expected"),
    [
        (_line(22), 4, 1.0),  # shifted by 2 px: within the tolerance
        (_line(24), 4, 1.0),  # shifted by exactly R: still matched (inclusive)
        (_line(26), 4, 0.0),  # shifted by 6 px: TP 0, FP 80, FN 80
        (_line(20, 10, 50), 0, 0.5),  # half the length, no tolerance: TP 40 / (40 + 40 missed)
        (_line(20, 10, 50), 4, 44 / 80),  # half the length: the tolerance reaches 4 px past its end
    ],
)
def test_cliou_of_lines_hand_computed(pred, radius, expected):
    assert centreline_iou(centreline_counts(pred, _line(20), radius)) == pytest.approx(expected)


def test_cliou_tolerance_is_euclidean():
    # a lone predicted pixel 3 px below and 3 px past the end of the line is 3√2 ≈ 4.24 px from it
    lone = np.zeros((48, 120), bool)
    lone[23, 92] = True
    assert centreline_counts(lone, _line(20), 4).tolist() == [0, 1, 80]
    assert centreline_counts(lone, _line(20), 4.25).tolist() == [1, 0, 79]


def test_cliou_counts_centrelines_not_areas():
    band = np.zeros((48, 120), bool)
    band[16:25, 10:90] = True  # 9 px wide, centred on row 20
    assert set(np.nonzero(centreline(band))[0]) == {20}  # thinned to its middle row
    # a prediction 9 px wide over a 1 px crack: pixel IoU 80 / 720, clIoU 1 (its centreline ends within 4 px)
    assert image_scores(band, _line(20))["iou"] == pytest.approx(80 / 720)
    assert centreline_iou(centreline_counts(band, _line(20), 4)) == pytest.approx(1.0)
    # a false alarm far away adds its centreline length: 80 matched / (80 + 80 false)
    assert centreline_iou(centreline_counts(_line(20) | _line(40), _line(20), 4)) == pytest.approx(0.5)


def test_cliou_empty_masks_and_pooling():
    empty = np.zeros((48, 120), bool)
    assert centreline_counts(empty, empty, 4).tolist() == [0, 0, 0]
    assert centreline_iou(centreline_counts(empty, empty, 4)) == 1.0
    assert centreline_iou(centreline_counts(empty, _line(20), 4)) == 0.0
    assert centreline_iou(centreline_counts(_line(20), empty, 4)) == 0.0
    # pooled over images (as OmniCrack30k reports it) versus the mean of per-image values
    counts = np.stack([centreline_counts(_line(20), _line(20), 4), centreline_counts(_line(20, 10, 50), _line(20), 0)])
    assert centreline_iou(counts.sum(axis=0)) == pytest.approx(120 / 160)
    assert centreline_iou(counts).tolist() == pytest.approx([1.0, 0.5])


# --- the paper protocol (SCSegamba's evaluation script) ----------------------------------------------------


def test_paper_thresholds_are_the_scripts():
    assert len(PAPER_THRESHOLDS) == 100
    assert PAPER_THRESHOLDS[0] == 0.0 and PAPER_THRESHOLDS[-1] == pytest.approx(0.99)


def test_paper_sweep_counts_match_the_scripts_loop():
    rng = np.random.default_rng(4)
    levels = rng.integers(0, 256, (17, 23)).astype(np.uint8)
    truth = rng.random((17, 23)) < 0.3
    counts = paper_sweep_counts(levels, truth)
    for i, t in enumerate(PAPER_THRESHOLDS):
        pred = levels / 255 > t  # the script's own comparison
        expected = [(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum(), (~pred & ~truth).sum()]
        assert counts[i].tolist() == expected, t


def test_paper_summary_hand_computed():
    """Three 1×4 images. A: truth 1100, levels 255 255 128 0; B (no crack): truth 0000, levels 255 0 0 0;
    C: truth 1000, levels 100 200 0 0 (128/255 ≈ 0.502, 100/255 ≈ 0.392, 200/255 ≈ 0.784).

    Per-image F1: A 0.8 for t ≤ 0.50, then 1; B 0 always (no crack labelled); C 2/3 for t ≤ 0.39, then 0.
    Mean F1: 22/45 for t ≤ 0.39 (ODS, lowest threshold of the tie), 4/15, then 1/3. OIS: (1 + 0 + 2/3) / 3 = 5/9.
    Per-image (crack IoU + background IoU) / 2: A 7/12 then 1 (t ≥ 0.51); B (0 + 3/4) / 2 = 3/8; C 7/12, then
    (0 + 1/2) / 2 = 1/4 (t ≥ 0.40), then (0 + 3/4) / 2 = 3/8 (t ≥ 0.79). Means 37/72, 29/72, 39/72, 42/72:
    mIoU 7/12 at 0.79, a threshold of its own, not ODS's.
    """
    truths = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], bool)
    levels = np.array([[255, 255, 128, 0], [255, 0, 0, 0], [100, 200, 0, 0]], np.uint8)
    counts = np.stack([paper_sweep_counts(lv, tr) for lv, tr in zip(levels, truths, strict=True)])
    f1 = paper_image_f1(counts)
    assert f1[0, :51].tolist() == pytest.approx([0.8] * 51) and f1[0, 51:].tolist() == pytest.approx([1.0] * 49)
    assert not f1[1].any()
    assert f1[2, :40].tolist() == pytest.approx([2 / 3] * 40) and not f1[2, 40:].any()
    summary = paper_summary(counts)
    assert summary == {
        "images": 3,
        "ods_f1": pytest.approx(22 / 45),
        "ods_threshold": 0.0,
        "ois_f1": pytest.approx(5 / 9),
        "miou": pytest.approx(7 / 12),
        "miou_threshold": 0.79,
    }


def test_paper_image_miou_conventions():
    # no crack labelled or predicted: the script scores 0, not 1
    assert paper_image_miou(np.array([0, 0, 0, 16])) == 0.0
    # perfect: (1 + 1) / 2
    assert paper_image_miou(np.array([4, 0, 0, 12])) == 1.0
    # every pixel a crack in both: background IoU undefined, taken as 0
    assert paper_image_miou(np.array([16, 0, 0, 0])) == 0.5
