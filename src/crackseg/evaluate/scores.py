"""One evaluation's numbers: per-image counts (never pixel arrays) and their summaries, overall and per source.

Every image is predicted at its original size through the one inference path and scored against its untouched
ground truth. Only counts are kept per image (the confusion at the threshold, the 99-threshold sweep, tolerance
and centreline counts, HD95, and with the paper protocol its own 100-threshold sweep of the 512×512 copy), so
memory does not grow with image size or count.
"""

from __future__ import annotations

import csv
import io
import platform
import zlib
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np

from crackseg import __version__
from crackseg.data import DataError, Pair
from crackseg.io.images import read_image, read_mask
from crackseg.metrics import (
    centreline_counts,
    centreline_iou,
    confusion,
    dataset_scores,
    hausdorff,
    paper_summary,
    sweep_counts,
    sweep_summary,
    tolerance_counts,
    tolerance_scores,
)

PACKAGES = (
    "numpy",
    "scipy",
    "scikit-image",
    "torch",
    "segmentation-models-pytorch",
    "matplotlib",
    "onnxruntime",
)


@dataclass
class ImageResult:
    """One image's numbers under one condition (clean or degraded); no pixel arrays."""

    counts: np.ndarray  # TP, FP, FN, TN at the threshold
    sweep: np.ndarray  # (thresholds, 4) counts of the sweep
    hd95: float | None  # None when the prediction or the ground truth is empty
    tolerance: np.ndarray | None  # tolerance_counts, when a tolerance radius is asked for
    centreline: np.ndarray | None = None  # centreline_counts (clIoU), when a clIoU radius is asked for
    paper: np.ndarray | None = None  # the paper protocol's (100, 4) sweep counts, when it is asked for

    @property
    def scores(self) -> dict:
        return dataset_scores(self.counts)["mean"]


@dataclass
class ImageRecord:
    pair: Pair
    height: int
    width: int
    crack_fraction: float
    results: dict[str, ImageResult] = field(default_factory=dict)  # "clean", and "degraded" when asked


def load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """The photo (RGB uint8) and its mask (bool), checked to be the same size."""
    image, mask = read_image(pair.image), read_mask(pair.mask)
    if image.shape[:2] != mask.shape:
        raise DataError(
            f"{pair.mask}: mask is {mask.shape[1]}×{mask.shape[0]} but its image {pair.image.name} is "
            f"{image.shape[1]}×{image.shape[0]}; fix or remove the pair"
        )
    return image, mask


def parse_degrade(spec: str | float | None) -> float | None:
    """The scale factor of a --degrade value such as "x4" (or 4); None for no degradation."""
    if spec is None:
        return None
    from crackseg.degrade import parse_scale  # lazily: evaluation without --degrade doesn't need it

    return parse_scale(spec)


def image_degrade_seed(seed: int, pair: Pair) -> int:
    """A per-image seed that depends on the image, not on its position, so subsets degrade identically."""
    return zlib.crc32(f"{seed}:{pair.source}/{pair.image.name}".encode())


def make_degrader(scale: float, seed: int):
    """(image, pair) -> the paper's degraded image (blur, bicubic down ×scale and back up)."""
    from crackseg.degrade import degrade_image

    return lambda image, pair: degrade_image(image, scale=scale, seed=image_degrade_seed(seed, pair))


def score_prediction(
    prob: np.ndarray, truth: np.ndarray, threshold: float, tolerance: float | None, cliou: float | None = None
) -> tuple[ImageResult, np.ndarray]:
    """All per-image numbers of one probability map (the strict protocol's), and the thresholded prediction."""
    pred = prob >= threshold
    counts = confusion(pred, truth)
    result = ImageResult(
        counts=np.array([counts["tp"], counts["fp"], counts["fn"], counts["tn"]], np.int64),
        sweep=sweep_counts(prob, truth),
        hd95=hausdorff(pred, truth, 95),
        tolerance=None if tolerance is None else tolerance_counts(pred, truth, tolerance),
        centreline=None if cliou is None else centreline_counts(pred, truth, cliou),
    )
    return result, pred


def summarize(
    records: list[ImageRecord], condition: str, tolerance: float | None, cliou: float | None = None, curve: bool = True
) -> dict:
    """Per-image means, dataset-level scores, the sweep, HD95, tolerance F1, clIoU and the paper protocol's
    figures (those last three when they were scored) of one condition."""
    results = [r.results[condition] for r in records]
    out = {"images": len(results)} | dataset_scores(np.stack([r.counts for r in results]))
    out["sweep"] = sweep_summary(np.stack([r.sweep for r in results]))
    if not curve:
        del out["sweep"]["curve"]
    hd95 = [r.hd95 for r in results if r.hd95 is not None]
    out["hd95"] = {
        "mean": float(np.mean(hd95)) if hd95 else None,
        "median": float(np.median(hd95)) if hd95 else None,
        "images_scored": len(hd95),
        "images_skipped": len(results) - len(hd95),  # empty prediction or empty ground truth
    }
    if tolerance is not None:
        counts = np.stack([r.tolerance for r in results])
        out["tolerance"] = {
            "radius": tolerance,
            "micro": tolerance_scores(counts.sum(axis=0)),
            "mean_f1": float(np.mean(tolerance_scores(counts)["f1"])),
        }
    if cliou is not None:
        counts = np.stack([r.centreline for r in results])
        out["cliou"] = {
            "radius": cliou,
            "micro": centreline_iou(counts.sum(axis=0)),  # pooled over the images, as OmniCrack30k reports it
            "mean": float(np.mean(centreline_iou(counts))),
            "counts": dict(zip(("tp", "fp", "fn"), (int(v) for v in counts.sum(axis=0)), strict=True)),
        }
    if results[0].paper is not None:
        out["paper"] = paper_summary(np.stack([r.paper for r in results]))
    return out


def summarize_condition(
    records: list[ImageRecord], condition: str, tolerance: float | None, cliou: float | None = None
) -> dict:
    """The whole set's summary plus one per source (Pair.source), for per-source tables and model cards."""
    out = summarize(records, condition, tolerance, cliou)
    sources = sorted({r.pair.source for r in records})
    out["per_source"] = {
        s: summarize([r for r in records if r.pair.source == s], condition, tolerance, cliou, curve=False)
        for s in sources
    }
    return out


def software_versions() -> dict:
    versions = {"crackseg": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def per_image_csv(records: list[ImageRecord], tolerance: float | None, cliou: float | None = None) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    conditions = list(records[0].results)
    columns = ["iou", "precision", "recall", "f1", "accuracy", "hd95"] + (["tolerance_f1"] if tolerance else [])
    columns += ["cliou"] if cliou is not None else []
    header = ["name", "source", "image", "width", "height", "crack_fraction"]
    for condition in conditions:
        prefix = "" if condition == "clean" else f"{condition}_"
        header += [prefix + c for c in columns]
    writer.writerow(header)
    for r in records:
        row = [r.pair.name, r.pair.source, str(r.pair.image), r.width, r.height, f"{r.crack_fraction:.6f}"]
        for condition in conditions:
            result = r.results[condition]
            s = result.scores
            row += [f"{s[k]:.6f}" for k in ("iou", "precision", "recall", "f1", "accuracy")]
            row.append("" if result.hd95 is None else f"{result.hd95:.3f}")
            if tolerance:
                row.append(f"{tolerance_scores(result.tolerance)['f1']:.6f}")
            if cliou is not None:
                row.append(f"{centreline_iou(result.centreline):.6f}")
        writer.writerow(row)
    return buf.getvalue()
