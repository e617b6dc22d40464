"""`crackseg evaluate`: run a model over a labelled set and write a report a person can read.

Every image is predicted at its original size through `CrackSegmenter.predict_prob` (the one inference path)
and scored against its untouched ground truth. Only counts are kept per image (the confusion at the
threshold, the 99-threshold sweep, tolerance counts, HD95), so memory does not grow with image size or count;
the few images shown in figures are re-read (and, for the worst/best, re-predicted) at the end.

Writes to REPORT_DIR: metrics.json (every number, the model, data, threshold and software versions),
per_image.csv, report.md, confusion_matrix.png, pr_curve.png, samples_{random,worst,best}.png and, with
`degrade`, degradation.png plus "degraded" numbers beside the "clean" ones.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import zlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from tqdm import tqdm

from crackseg import __version__
from crackseg.data import DataError, Pair
from crackseg.errors import InputError
from crackseg.io.atomic import atomic_write_bytes, check_outputs_free
from crackseg.io.images import read_image, read_mask
from crackseg.metrics import (
    confusion,
    dataset_scores,
    hausdorff,
    sweep_counts,
    sweep_summary,
    tolerance_counts,
    tolerance_scores,
)

# Error overlay colours: true positives, false positives, false negatives.
TP_COLOR, FP_COLOR, FN_COLOR = (0, 200, 0), (255, 40, 40), (30, 144, 255)
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


# --- inputs ------------------------------------------------------------------------------------------------


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
    """(image, pair) -> the degraded image of issue 11 (blur, bicubic down ×scale and back up)."""
    from crackseg.degrade import degrade_image

    return lambda image, pair: degrade_image(image, scale=scale, seed=image_degrade_seed(seed, pair))


# --- scoring -----------------------------------------------------------------------------------------------


def score_prediction(
    prob: np.ndarray, truth: np.ndarray, threshold: float, tolerance: float | None
) -> tuple[ImageResult, np.ndarray]:
    """All per-image numbers of one probability map, and the thresholded prediction."""
    pred = prob >= threshold
    counts = confusion(pred, truth)
    result = ImageResult(
        counts=np.array([counts["tp"], counts["fp"], counts["fn"], counts["tn"]], np.int64),
        sweep=sweep_counts(prob, truth),
        hd95=hausdorff(pred, truth, 95),
        tolerance=None if tolerance is None else tolerance_counts(pred, truth, tolerance),
    )
    return result, pred


def evaluate_pairs(
    segmenter,
    pairs: list[Pair],
    threshold: float,
    tolerance: float | None = None,
    degrader=None,
    keep: set[int] = frozenset(),
    progress: bool = True,
) -> tuple[list[ImageRecord], dict[int, dict[str, np.ndarray]]]:
    """Predict and score every pair (and its degraded copy when `degrader` is given).

    Returns the records and, for the indices in `keep`, the thresholded predictions per condition.
    """
    records, kept = [], {}
    for index, pair in enumerate(tqdm(pairs, desc="evaluate", unit="img", disable=not progress)):
        image, truth = load_pair(pair)
        record = ImageRecord(pair, truth.shape[0], truth.shape[1], float(truth.mean()))
        conditions = {"clean": image}
        if degrader is not None:
            conditions["degraded"] = degrader(image, pair)
        for condition, photo in conditions.items():
            result, pred = score_prediction(segmenter.predict_prob(photo), truth, threshold, tolerance)
            record.results[condition] = result
            if index in keep:
                kept.setdefault(index, {})[condition] = pred
        records.append(record)
    return records, kept


def summarize(records: list[ImageRecord], condition: str, tolerance: float | None, curve: bool = True) -> dict:
    """Per-image means, dataset-level scores, the sweep, HD95 and tolerance F1 of one condition."""
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
    return out


def summarize_condition(records: list[ImageRecord], condition: str, tolerance: float | None) -> dict:
    """The whole set's summary plus one per source (Pair.source), for per-source tables and model cards."""
    out = summarize(records, condition, tolerance)
    sources = sorted({r.pair.source for r in records})
    out["per_source"] = {
        s: summarize([r for r in records if r.pair.source == s], condition, tolerance, curve=False) for s in sources
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


# --- the whole evaluation ----------------------------------------------------------------------------------

REPORT_FILES = ("metrics.json", "report.md", "per_image.csv")  # every evaluation writes these (figures vary)


def check_report_free(out_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse to replace an earlier evaluation's report in `out_dir` unless `overwrite`."""
    check_outputs_free(out_dir, [Path(out_dir) / name for name in REPORT_FILES], overwrite, what="evaluation")


def evaluate(
    segmenter,
    pairs: list[Pair],
    out_dir: str | Path,
    threshold: float | None = None,
    tolerance: float | None = None,
    n_samples: int = 6,
    seed: int = 0,
    degrade: float | str | None = None,
    degrade_seed: int = 0,
    weights: str | None = None,
    data: list[str] | None = None,
    split: str = "all",
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Evaluate `segmenter` on `pairs` and write the report to `out_dir`; returns the metrics.json content.

    `threshold` defaults to the segmenter's (the model's stored threshold unless overridden). `degrade` (a
    scale such as 4 or "x4") also evaluates degraded copies of every image, seeded per image from
    `degrade_seed`. `weights`, `data` and `split` are recorded in the report as given. An earlier report in
    `out_dir` is replaced only with `overwrite`.
    """
    if not pairs:
        raise DataError("empty dataset: no image/mask pairs to evaluate")
    check_report_free(out_dir, overwrite)
    threshold = float(segmenter.threshold if threshold is None else threshold)
    if not 0 <= threshold <= 1:
        raise InputError(f"threshold {threshold} is outside [0, 1]")
    if tolerance is not None and tolerance < 0:
        raise InputError(f"tolerance {tolerance} must be ≥ 0 pixels")
    scale = parse_degrade(degrade)
    degrader = None if scale is None else make_degrader(scale, degrade_seed)
    out_dir = Path(out_dir)

    rng = np.random.default_rng(seed)
    random_sample = sorted(rng.choice(len(pairs), min(n_samples, len(pairs)), replace=False).tolist())
    records, kept = evaluate_pairs(
        segmenter, pairs, threshold, tolerance, degrader, keep=set(random_sample), progress=progress
    )

    conditions = ["clean"] + (["degraded"] if degrader else [])
    summaries = {c: summarize_condition(records, c, tolerance) for c in conditions}
    config = segmenter.config
    report = {
        "model": {
            "name": config.name,
            "arch": config.arch,
            "encoder": config.encoder,
            "version": config.version,
            "weights": None if weights is None else str(weights),
            "stored_threshold": config.threshold,
            "inference": segmenter.describe() if hasattr(segmenter, "describe") else None,
        },
        "data": {
            "roots": [str(d) for d in data] if data else sorted({str(p.image.parent) for p in pairs}),
            "split": split,
            "sources": {s: v["images"] for s, v in summaries["clean"]["per_source"].items()},
        },
        "threshold": threshold,
        "images": len(records),
        "tolerance": tolerance,
        "degrade": None if scale is None else {"scale": scale, "seed": degrade_seed},
        "software": software_versions(),
    } | summaries

    figures = write_figures(
        segmenter, records, kept, random_sample, threshold, summaries, n_samples, scale, degrader, out_dir
    )
    atomic_write_bytes(out_dir / "per_image.csv", per_image_csv(records, tolerance).encode())
    atomic_write_bytes(out_dir / "report.md", render_report(report, records, figures).encode())
    atomic_write_bytes(out_dir / "metrics.json", (json.dumps(report, indent=2) + "\n").encode())
    return report


# --- per_image.csv -----------------------------------------------------------------------------------------


def per_image_csv(records: list[ImageRecord], tolerance: float | None) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    conditions = list(records[0].results)
    columns = ["iou", "precision", "recall", "f1", "accuracy", "hd95"] + (["tolerance_f1"] if tolerance else [])
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
        writer.writerow(row)
    return buf.getvalue()


# --- figures -----------------------------------------------------------------------------------------------


def save_figure(fig: Figure, path: Path) -> None:
    """Render with Agg into memory, then write atomically (no half-written PNG if interrupted)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def error_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The photo dimmed to grey, with true positives, false positives and false negatives in three colours."""
    grey = (image.mean(axis=2) * 0.5).astype(np.uint8)
    out = np.repeat(grey[:, :, None], 3, axis=2)
    out[pred & truth] = TP_COLOR
    out[pred & ~truth] = FP_COLOR
    out[~pred & truth] = FN_COLOR
    return out


def error_legend(fig: Figure) -> None:
    handles = [
        Patch(color=np.array(c) / 255, label=name)
        for c, name in ((TP_COLOR, "TP (found)"), (FP_COLOR, "FP (false alarm)"), (FN_COLOR, "FN (missed)"))
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False)


def panel_grid(n_rows: int, n_cols: int, aspect: float) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(3.2 * n_cols, 3.2 * aspect * n_rows + 0.6), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])  # keep the frame: an all-white or all-black mask still shows its extent
        ax.set_yticks([])
    return fig, axes


def samples_figure(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], title: str, threshold: float):
    """input | ground truth | prediction | error overlay, one row per (label, image, truth, pred)."""
    aspect = max(image.shape[0] / image.shape[1] for _, image, _, _ in rows)
    fig, axes = panel_grid(len(rows), 4, aspect)
    for ax_row, (label, image, truth, pred) in zip(axes, rows, strict=True):
        panels = [
            (image, label),
            (truth, "ground truth"),
            (pred, f"prediction (t = {threshold:g})"),
            (error_overlay(image, truth, pred), "errors"),
        ]
        draw_panels(ax_row, panels)
    fig.suptitle(title)
    error_legend(fig)
    return fig


def draw_panels(ax_row, panels) -> None:
    """One figure row: (picture, title) pairs, masks in grey."""
    for ax, (picture, name) in zip(ax_row, panels, strict=True):
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1, interpolation="antialiased")
        ax.set_title(name, fontsize=9)


def degradation_figure(rows, scale: float, threshold: float) -> Figure:
    """clean photo | degraded photo | clean prediction | degraded prediction | ground truth."""
    aspect = max(row[1].shape[0] / row[1].shape[1] for row in rows)
    fig, axes = panel_grid(len(rows), 5, aspect)
    for ax_row, (label, clean, degraded, pred_clean, pred_degraded, truth) in zip(axes, rows, strict=True):
        panels = [
            (clean, label),
            (degraded, f"degraded ×{scale:g}"),
            (error_overlay(clean, truth, pred_clean), "prediction on clean"),
            (error_overlay(degraded, truth, pred_degraded), "prediction on degraded"),
            (truth, "ground truth"),
        ]
        draw_panels(ax_row, panels)
    fig.suptitle(f"clean vs degraded (×{scale:g}) input, threshold {threshold:g}")
    error_legend(fig)
    return fig


def confusion_figure(counts: dict) -> Figure:
    """Pixel confusion matrix: raw counts and row-normalised (each true class sums to 1)."""
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], np.float64)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(9, 4), layout="constrained")
    for ax, values, title, fmt in zip(
        fig.subplots(1, 2),
        (matrix, normalised),
        ("pixel counts", "row-normalised"),
        ("{:,.0f}", "{:.3f}"),
        strict=True,
    ):
        ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(values):
            ax.text(
                j,
                i,
                fmt.format(value),
                ha="center",
                va="center",
                color="white" if normalised[i, j] > 0.5 else "k",
            )
        ax.set_xticks([0, 1], ["background", "crack"])
        ax.set_yticks([0, 1], ["background", "crack"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("ground truth")
        ax.set_title(title)
    return fig


def pr_curve_figure(summaries: dict, threshold: float) -> Figure:
    """Dataset-level precision–recall over the sweep (ODS and the operating point marked), and F1/IoU vs t."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax_pr, ax_t = fig.subplots(1, 2)
    for f1 in (0.2, 0.4, 0.6, 0.8):  # iso-F1 lines: P = F1·R / (2R − F1)
        r = np.linspace(f1 / 2 + 1e-3, 1, 100)
        ax_pr.plot(r, f1 * r / (2 * r - f1), color="0.85", lw=0.8)
        ax_pr.text(1.0, f1 / (2 - f1), f" F1 {f1:g}", color="0.6", fontsize=7, va="center")
    for condition, summary in summaries.items():
        curve, sweep, micro = summary["sweep"]["curve"], summary["sweep"], summary["micro"]
        label = f"{condition}: ODS F1 {sweep['ods_f1']:.3f} @ {sweep['ods_threshold']:g}"
        # Thresholds that predict nothing have no measured precision: leave them off the curve.
        some = np.array(curve["predicted_pixels"]) > 0
        recall, precision = np.array(curve["recall"])[some], np.array(curve["precision"])[some]
        (line,) = ax_pr.plot(recall, precision, label=label)
        ods = curve["threshold"].index(sweep["ods_threshold"])
        ax_pr.plot(curve["recall"][ods], curve["precision"][ods], "o", color=line.get_color())
        ax_pr.plot(micro["recall"], micro["precision"], "x", color=line.get_color(), ms=9)
        ax_t.plot(curve["threshold"], curve["f1"], color=line.get_color(), label=f"{condition}: dataset F1")
        ax_t.plot(
            curve["threshold"],
            curve["mean_iou"],
            "--",
            color=line.get_color(),
            label=f"{condition}: mean IoU (AIU {sweep['aiu']:.3f})",
        )
    ax_pr.set(
        xlim=(0, 1.02),
        ylim=(0, 1.02),
        xlabel="recall",
        ylabel="precision",
        title=f"dataset precision–recall (● ODS, × threshold {threshold:g})",
    )
    ax_pr.legend(loc="lower left")
    ax_t.axvline(threshold, color="0.6", lw=0.8)
    ax_t.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="threshold", title="scores over thresholds")
    ax_t.legend(loc="best", fontsize=8)
    return fig


def pick_worst_best(records: list[ImageRecord], k: int) -> tuple[list[int], list[int]]:
    """Indices of the k lowest-IoU images, and of the k highest among images with cracks (crack-free images
    predicted empty all score 1 and would crowd out the informative ones)."""
    iou = np.array([r.results["clean"].scores["iou"] for r in records])
    worst = np.argsort(iou, kind="stable")[:k].tolist()
    cracked = [i for i, r in enumerate(records) if r.results["clean"].counts[[0, 2]].sum() > 0]
    pool = cracked or list(range(len(records)))
    best = sorted(pool, key=lambda i: -iou[i])[:k]
    return worst, best


def write_figures(segmenter, records, kept, random_sample, threshold, summaries, n_samples, scale, degrader, out_dir):
    """Write the report's figures; returns their file names."""
    figures = {
        "confusion_matrix.png": confusion_figure(summaries["clean"]["counts"]),
        "pr_curve.png": pr_curve_figure(summaries, threshold),
    }
    for name, figure in figures.items():
        save_figure(figure, out_dir / name)
    written = list(figures)
    if n_samples <= 0:
        return written
    worst, best = pick_worst_best(records, n_samples)
    # Only the random sample's predictions were kept; the worst and best are predicted again.
    predictions = {index: preds["clean"] for index, preds in kept.items()}

    def row(index: int) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
        record = records[index]
        image, truth = load_pair(record.pair)
        if index not in predictions:
            predictions[index] = segmenter.predict_prob(image) >= threshold
        pred = predictions[index]
        return f"{record.pair.name}  IoU {record.results['clean'].scores['iou']:.3f}", image, truth, pred

    titles = {
        "random": "random sample (seeded)",
        "worst": "lowest IoU",
        "best": "highest IoU (images with cracks)",
    }
    for name, indices in (("random", random_sample), ("worst", worst), ("best", best)):
        figure = samples_figure([row(i) for i in indices], titles[name], threshold)
        save_figure(figure, out_dir / f"samples_{name}.png")
        written.append(f"samples_{name}.png")
    if degrader is not None:
        rows = []
        for index in random_sample[:4]:
            record = records[index]
            image, truth = load_pair(record.pair)
            iou = {c: record.results[c].scores["iou"] for c in ("clean", "degraded")}
            label = f"{record.pair.name}  IoU {iou['clean']:.2f} → {iou['degraded']:.2f}"
            preds = kept[index]
            rows.append((label, image, degrader(image, record.pair), preds["clean"], preds["degraded"], truth))
        save_figure(degradation_figure(rows, scale, threshold), out_dir / "degradation.png")
        written.append("degradation.png")
    return written


# --- report.md ---------------------------------------------------------------------------------------------


def _num(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def metric_rows(summary: dict) -> list[tuple[str, str]]:
    """(label, value) rows of one condition's headline numbers."""
    micro, mean, sweep, hd95 = summary["micro"], summary["mean"], summary["sweep"], summary["hd95"]
    rows = [
        ("IoU (dataset)", _num(micro["iou"])),
        ("F1 (dataset)", _num(micro["f1"])),
        ("precision (dataset)", _num(micro["precision"])),
        ("recall (dataset)", _num(micro["recall"])),
        ("IoU (mean per image)", _num(mean["iou"])),
        ("F1 (mean per image)", _num(mean["f1"])),
        ("precision (mean per image)", _num(mean["precision"])),
        ("recall (mean per image)", _num(mean["recall"])),
        ("accuracy (mean per image)", _num(mean["accuracy"], 4)),
        ("ODS F1 (threshold)", f"{_num(sweep['ods_f1'])} ({sweep['ods_threshold']:g})"),
        ("OIS F1", _num(sweep["ois_f1"])),
        ("AIU", _num(sweep["aiu"])),
        ("IoU_max (threshold)", f"{_num(sweep['iou_max'])} ({sweep['iou_max_threshold']:g})"),
    ]
    if "tolerance" in summary:
        tol = summary["tolerance"]
        rows.append((f"tolerance F1, {tol['radius']:g} px (dataset)", _num(tol["micro"]["f1"])))
        rows.append((f"tolerance F1, {tol['radius']:g} px (mean per image)", _num(tol["mean_f1"])))
    rows.append(("HD95 px, mean / median", f"{_num(hd95['mean'], 1)} / {_num(hd95['median'], 1)}"))
    rows.append(("HD95 images scored / skipped", f"{hd95['images_scored']} / {hd95['images_skipped']}"))
    return rows


def source_table(summary: dict) -> list[str]:
    lines = [
        "| source | images | IoU | F1 | precision | recall | ODS F1 | AIU | HD95 median |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for source, s in summary["per_source"].items():
        m = s["micro"]
        lines.append(
            f"| {source} | {s['images']} | {_num(m['iou'])} | {_num(m['f1'])} | {_num(m['precision'])} | "
            f"{_num(m['recall'])} | {_num(s['sweep']['ods_f1'])} | {_num(s['sweep']['aiu'])} | "
            f"{_num(s['hd95']['median'], 1)} |"
        )
    return lines


def render_report(report: dict, records: list[ImageRecord], figures: list[str]) -> str:
    conditions = [c for c in ("clean", "degraded") if c in report]
    model, data = report["model"], report["data"]
    lines = [
        "# Crack segmentation evaluation",
        "",
        f"- model: {model['name'] or '(unnamed)'} ({model['arch']} / {model['encoder']}), "
        f"weights {model['weights'] or '(default)'}; inference {model['inference']}",
        f"- data: {', '.join(data['roots'])} ({data['split']}); {report['images']} images",
        f"- threshold: {report['threshold']:g} (model's stored threshold: {model['stored_threshold']:g})",
    ]
    if report["degrade"]:
        d = report["degrade"]
        lines.append(f"- degraded: blur + bicubic down ×{d['scale']:g} and back up, seed {d['seed']}")
    lines += ["", "## Results", ""]
    header = "| metric | " + " | ".join(conditions) + " |"
    lines += [header, "|---|" + "---:|" * len(conditions)]
    columns = [metric_rows(report[c]) for c in conditions]
    for i, (label, _) in enumerate(columns[0]):
        lines.append(f"| {label} | " + " | ".join(col[i][1] for col in columns) + " |")
    lines += [
        "",
        "Crack class only. Dataset scores come from pixel counts summed over all images; per-image scores "
        "are averaged over images (an image with no crack in truth or prediction scores 1). ODS F1: best "
        "dataset F1 at one threshold of 0.01…0.99; OIS F1: mean of each image's best F1; AIU: mean over "
        "those thresholds of the mean per-image IoU; IoU_max: its best value. HD95: the larger of the two "
        "directed 95th-percentile distances between predicted and true crack boundaries, skipped where "
        "either is empty.",
    ]
    for condition in conditions:
        lines += ["", f"## Per source ({condition})", ""] + source_table(report[condition])
    lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    worst = sorted(records, key=lambda r: r.results["clean"].scores["iou"])[:10]
    lines += [
        "",
        "## Lowest IoU (clean)",
        "",
        "| image | source | crack % | IoU | F1 |",
        "|---|---|---:|---:|---:|",
    ]
    for r in worst:
        s = r.results["clean"].scores
        lines.append(
            f"| {r.pair.name} | {r.pair.source} | {100 * r.crack_fraction:.2f} | {_num(s['iou'])} | {_num(s['f1'])} |"
        )
    software = ", ".join(f"{k} {v}" for k, v in report["software"].items())
    lines += ["", f"Software: {software}.", ""]
    return "\n".join(lines)
