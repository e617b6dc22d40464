"""Crack-class metrics: confusion counts, scores from counts, and the one-pass threshold sweep.

Everything is for the crack class only (a two-class mean IoU would be inflated by the background).
Convention: an image whose ground truth and prediction are both empty scores IoU = F1 = precision = recall
= 1; a ratio whose denominator is zero is 1 (e.g. precision with no predicted pixels), so an empty
prediction of a cracked image scores precision 1, recall 0, IoU = F1 = 0.

Beyond one threshold: the one-pass sweep (ODS/OIS F1, AIU, IoU_max), tolerance F1 (a pixel counts as matched
within R pixels of the other mask, as in DeepCrack/CrackForest evaluations), centreline IoU with a tolerance
(clIoU, as OmniCrack30k defines it), HD95 between boundaries, and the published protocol's per-image sweep
(ODS/OIS/mIoU as SCSegamba's evaluation script computes them; its own conventions, not the ones above).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

THRESHOLDS = np.round(np.arange(1, 100) / 100, 2)  # 0.01 … 0.99
BINS = 1000  # probability histogram resolution of the sweep
FOUR_CONNECTED = generate_binary_structure(2, 1)


def confusion(pred: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """Pixel confusion counts of a bool prediction against a bool ground truth."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(pred.size) - tp - fp - fn}


def _ratio(num, den, empty=1.0):
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.where(den > 0, num / np.maximum(den, 1), empty)


def scores(tp, fp, fn, tn=0) -> dict:
    """IoU, precision, recall, F1 and accuracy from counts (scalars or arrays, broadcast)."""
    tp, fp, fn, tn = (np.asarray(v, np.float64) for v in (tp, fp, fn, tn))
    out = {
        "iou": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
    }
    return {k: (float(v) if v.ndim == 0 else v) for k, v in out.items()}


def sweep_counts(prob: np.ndarray, truth: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """TP, FP, FN, TN at every threshold (prediction = prob ≥ t), from two histograms in one pass.

    Returns an array of shape (len(thresholds), 4).
    """
    prob = np.asarray(prob, np.float32).ravel()
    truth = np.asarray(truth, bool).ravel()
    bins = np.clip((prob * BINS).astype(np.int64), 0, BINS - 1)
    pos = np.bincount(bins[truth], minlength=BINS)
    neg = np.bincount(bins[~truth], minlength=BINS)
    # pixels with prob ≥ t are those in bins ≥ t·BINS; thresholds are multiples of 1/BINS
    start = np.round(np.asarray(thresholds) * BINS).astype(np.int64)
    pos_above = np.concatenate([np.cumsum(pos[::-1])[::-1], [0]])[start]
    neg_above = np.concatenate([np.cumsum(neg[::-1])[::-1], [0]])[start]
    tp, fp = pos_above, neg_above
    fn, tn = pos.sum() - tp, neg.sum() - fp
    return np.stack([tp, fp, fn, tn], axis=1)


def best_threshold(total_counts: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> tuple[float, float]:
    """(threshold, F1) with the best dataset-level F1 over summed sweep counts (the ODS threshold)."""
    f1 = scores(*total_counts.T)["f1"]
    i = int(np.argmax(f1))
    return float(thresholds[i]), float(f1[i])


def source_mean_f1_curve(source_counts: dict[str, np.ndarray]) -> np.ndarray:
    """The mean over sources of each source's dataset-level F1, at every threshold (each surface counts the same,
    however many photos it has)."""
    return np.mean([scores(*counts.T)["f1"] for counts in source_counts.values()], axis=0)


# --- one image at one threshold ----------------------------------------------------------------------------


def image_scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Confusion counts and IoU/precision/recall/F1/accuracy of one image's bool prediction."""
    counts = confusion(pred, truth)
    return counts | scores(counts["tp"], counts["fp"], counts["fn"], counts["tn"])


def dataset_scores(counts: np.ndarray) -> dict:
    """Per-image means and dataset-level (micro, from summed counts) scores of an (N, 4) TP/FP/FN/TN array."""
    counts = np.asarray(counts, np.int64).reshape(-1, 4)
    per_image = scores(*counts.T)
    total = counts.sum(axis=0)
    return {
        "mean": {k: float(np.mean(v)) for k, v in per_image.items()},
        "micro": scores(*total),
        "counts": dict(zip(("tp", "fp", "fn", "tn"), (int(v) for v in total), strict=True)),
    }


# --- the threshold sweep: ODS, OIS, AIU --------------------------------------------------------------------


def sweep_summary(image_counts: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> dict:
    """Threshold-free scores from per-image sweep counts of shape (N images, T thresholds, 4).

    - ODS F1: the best dataset-level F1 at one fixed threshold (and that threshold);
    - OIS F1: the mean over images of each image's best F1 (each image at its own best threshold);
    - AIU: the mean over thresholds of the mean per-image IoU (CSBSR); IoU_max: its best threshold's value.
    Also returns the curves (per threshold) the PR plot is drawn from.
    """
    image_counts = np.asarray(image_counts, np.int64)
    total = image_counts.sum(axis=0)
    micro = scores(*total.T)
    per_image = scores(*np.moveaxis(image_counts, -1, 0))  # each (N, T)
    mean_iou = per_image["iou"].mean(axis=0)
    ods, best_iou = int(np.argmax(micro["f1"])), int(np.argmax(mean_iou))
    return {
        "ods_f1": float(micro["f1"][ods]),
        "ods_threshold": float(thresholds[ods]),
        "ois_f1": float(per_image["f1"].max(axis=1).mean()),
        "aiu": float(mean_iou.mean()),
        "iou_max": float(mean_iou[best_iou]),
        "iou_max_threshold": float(thresholds[best_iou]),
        "curve": {
            "threshold": [float(t) for t in thresholds],
            "precision": micro["precision"].tolist(),
            "recall": micro["recall"].tolist(),
            "f1": micro["f1"].tolist(),
            "mean_iou": mean_iou.tolist(),
            "predicted_pixels": (total[:, 0] + total[:, 1]).tolist(),  # 0: precision is 1 by convention
        },
    }


# --- tolerance F1 ------------------------------------------------------------------------------------------


def _within(mask: np.ndarray, target: np.ndarray, radius: float) -> int:
    """How many `mask` pixels lie within `radius` (Euclidean, inclusive) of a `target` pixel."""
    if not mask.any() or not target.any():
        return 0
    distance_to_target = distance_transform_edt(~target)  # 0 on target pixels
    return int(np.count_nonzero(distance_to_target[mask] <= radius))


def tolerance_counts(pred: np.ndarray, truth: np.ndarray, radius: float) -> np.ndarray:
    """[predicted pixels, those within `radius` of ground truth, truth pixels, those within `radius` of a
    prediction]: the counts of tolerance precision and recall (sum them over images for a dataset)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    return np.array([pred.sum(), _within(pred, truth, radius), truth.sum(), _within(truth, pred, radius)], np.int64)


def tolerance_scores(counts: np.ndarray) -> dict:
    """Tolerance precision, recall and F1 from `tolerance_counts` (empty prediction and truth score 1)."""
    n_pred, pred_matched, n_truth, truth_matched = (np.asarray(v, np.float64) for v in np.asarray(counts).T)
    precision, recall = _ratio(pred_matched, n_pred), _ratio(truth_matched, n_truth)
    both = precision + recall  # a fraction: _ratio's integer-count guard does not apply
    f1 = np.where(both > 0, 2 * precision * recall / np.where(both > 0, both, 1), 0.0)
    out = {"precision": precision, "recall": recall, "f1": f1}
    return {k: (float(v) if v.ndim == 0 else v) for k, v in out.items()}


# --- centreline IoU (clIoU) --------------------------------------------------------------------------------


def centreline(mask: np.ndarray) -> np.ndarray:
    """A mask thinned to one-pixel lines (skimage's `thin`, as OmniCrack30k thins its predictions)."""
    from skimage.morphology import thin  # lazily: training imports this module and never needs it

    return thin(np.asarray(mask, bool))


def centreline_counts(pred: np.ndarray, truth: np.ndarray, radius: float) -> np.ndarray:
    """[TP, FP, FN] of the clIoU of two masks, each thinned to its centreline first.

    As OmniCrack30k's evaluation.py (github.com/ben-z-original/omnicrack30k) counts them: TP are the truth
    centreline pixels within `radius` (Euclidean, inclusive: its `disk(radius)` dilation) of a predicted one, FN
    the other truth centreline pixels, FP the predicted centreline pixels with no truth one within `radius`.
    Sum them over images for the dataset's clIoU (it pools its pixels the same way).
    """
    pred_line, truth_line = centreline(pred), centreline(truth)
    n_pred, n_truth = int(pred_line.sum()), int(truth_line.sum())
    tp = _within(truth_line, pred_line, radius)
    fp = n_pred - _within(pred_line, truth_line, radius)
    return np.array([tp, fp, n_truth - tp], np.int64)


def centreline_iou(counts: np.ndarray):
    """clIoU = TP / (TP + FP + FN) from `centreline_counts` (or an (N, 3) array of them); 1 when both are empty."""
    tp, fp, fn = (np.asarray(v, np.float64) for v in np.asarray(counts).T)
    iou = _ratio(tp, tp + fp + fn)
    return float(iou) if iou.ndim == 0 else iou


# --- the published protocol: SCSegamba's eval/evaluate.py ---------------------------------------------------
# Followed from github.com/Karl1109/SCSegamba (read in the fork whu-lyh/SCSegamba, eval/evaluate.py and test.py),
# whose script CrackSSM and MixerCSeg reuse. Its prediction is an 8-bit map (`paper_levels`), a pixel is a crack
# when level / 255 > t, and every score is per image first:
# - F1 per image: precision 1 when nothing is predicted, recall 0 when nothing is labelled, F1 0 when both are 0,
#   so an image without cracks scores F1 0 at every threshold, whatever is predicted;
# - ODS: the best over thresholds of the mean per-image F1 (not a dataset F1 from pooled counts);
# - OIS: the mean over images of each image's best F1;
# - mIoU: the best over thresholds of the mean per-image (crack IoU + background IoU) / 2, an image with no crack
#   labelled or predicted scoring 0; its threshold is chosen on its own, not ODS's.
# Ties go to the lowest threshold (np.argmax); the script reports only the values.

PAPER_THRESHOLDS = np.arange(0.0, 1.0, 0.01)  # 0.00 … 0.99, built as the script builds them (float steps and all)
PAPER_LEVELS = 256


def paper_sweep_counts(levels: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """TP, FP, FN, TN at each of the 100 thresholds (crack = level / 255 > t) of one image's 8-bit map.

    Returns an array of shape (100, 4); the comparison is the script's own, in float64, level by level.
    """
    levels, truth = np.asarray(levels, np.uint8).ravel(), np.asarray(truth, bool).ravel()
    pos = np.bincount(levels[truth], minlength=PAPER_LEVELS)
    neg = np.bincount(levels[~truth], minlength=PAPER_LEVELS)
    above = np.arange(PAPER_LEVELS)[:, None] / 255 > PAPER_THRESHOLDS[None, :]  # (levels, thresholds)
    tp, fp = pos @ above, neg @ above
    return np.stack([tp, fp, pos.sum() - tp, neg.sum() - fp], axis=1).astype(np.int64)


def _quotient(num, den) -> np.ndarray:
    """num / den, and 0 where den is 0 (the script's value for an undefined per-image score)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def paper_image_f1(counts: np.ndarray) -> np.ndarray:
    """The script's per-image F1 from (..., 4) counts: 2·TP / (2·TP + FP + FN) where TP > 0, else 0 (the same
    value its precision/recall conventions give)."""
    tp, fp, fn, _ = np.moveaxis(np.asarray(counts, np.float64), -1, 0)
    return np.where(tp > 0, _quotient(2 * tp, 2 * tp + fp + fn), 0.0)


def paper_image_miou(counts: np.ndarray) -> np.ndarray:
    """The script's per-image mean of crack and background IoU from (..., 4) counts; 0 when neither truth nor
    prediction has a crack pixel (as the script scores it) and a background IoU of 0 when neither has background."""
    tp, fp, fn, tn = np.moveaxis(np.asarray(counts, np.float64), -1, 0)
    miou = (_quotient(tp, tp + fp + fn) + _quotient(tn, tn + fp + fn)) / 2
    return np.where(tp + fp + fn > 0, miou, 0.0)


def paper_summary(image_counts: np.ndarray) -> dict:
    """ODS, OIS and mIoU (and the thresholds of ODS and mIoU) from per-image counts of shape (N, 100, 4)."""
    image_counts = np.asarray(image_counts, np.int64)
    f1, miou = paper_image_f1(image_counts), paper_image_miou(image_counts)  # each (N, 100)
    mean_f1, mean_miou = f1.mean(axis=0), miou.mean(axis=0)
    ods, best_miou = int(np.argmax(mean_f1)), int(np.argmax(mean_miou))
    return {
        "images": len(image_counts),
        "ods_f1": float(mean_f1[ods]),
        "ods_threshold": round(float(PAPER_THRESHOLDS[ods]), 2),
        "ois_f1": float(f1.max(axis=1).mean()),
        "miou": float(mean_miou[best_miou]),
        "miou_threshold": round(float(PAPER_THRESHOLDS[best_miou]), 2),
    }


# --- boundary distances: HD95 ------------------------------------------------------------------------------


def boundary(mask: np.ndarray) -> np.ndarray:
    """Crack pixels with a 4-connected background neighbour; the image edge counts as background.

    The same pixels as skimage's ``find_boundaries(mode="inner")`` on a zero-padded mask, in a quarter of the time.
    """
    mask = np.asarray(mask, bool)
    return mask & ~binary_erosion(mask, FOUR_CONNECTED, border_value=0)


def boundary_distances(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Distances from each predicted boundary pixel to the nearest truth boundary pixel, and the reverse;
    None when either mask is empty (the distance is undefined)."""
    pred_edge, truth_edge = boundary(pred), boundary(truth)
    if not pred_edge.any() or not truth_edge.any():
        return None
    pred_to_truth = distance_transform_edt(~truth_edge)[pred_edge]
    truth_to_pred = distance_transform_edt(~pred_edge)[truth_edge]
    return pred_to_truth, truth_to_pred


def hausdorff(pred: np.ndarray, truth: np.ndarray, percentile: float = 95) -> float | None:
    """Robust Hausdorff distance between the masks' boundaries, in pixels: the larger of the two directed
    `percentile`-th percentile distances (as DeepMind's surface-distance and MONAI compute HD95; 100 gives the
    classic Hausdorff distance). None when either mask is empty."""
    distances = boundary_distances(pred, truth)
    if distances is None:
        return None
    return float(max(np.percentile(d, percentile) for d in distances))
