"""Crack-class metrics: confusion counts, scores from counts, and the one-pass threshold sweep.

Everything is for the crack class only (a two-class mean IoU would be inflated by the background).
Convention: an image whose ground truth and prediction are both empty scores IoU = F1 = precision = recall = 1.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = np.round(np.arange(1, 100) / 100, 2)  # 0.01 … 0.99
BINS = 1000  # probability histogram resolution of the sweep


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
