"""The figures of an evaluation report: confusion matrix, precision-recall curve, sample and degradation panels."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from crackseg.evaluate.scores import ImageRecord, load_pair

# Error overlay colours: true positives, false positives, false negatives.
TP_COLOR, FP_COLOR, FN_COLOR = (0, 200, 0), (255, 40, 40), (30, 144, 255)


def png_bytes(fig: Figure) -> bytes:
    """Render with Agg into memory, so that the file is written whole (`io.atomic`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


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


def report_figures(segmenter, records, kept, random_sample, threshold, summaries, n_samples, scale, degrader):
    """The report's figures as PNG bytes, by file name."""
    written = {
        "confusion_matrix.png": png_bytes(confusion_figure(summaries["clean"]["counts"])),
        "pr_curve.png": png_bytes(pr_curve_figure(summaries, threshold)),
    }
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
        written[f"samples_{name}.png"] = png_bytes(figure)
    if degrader is not None:
        rows = []
        for index in random_sample[:4]:
            record = records[index]
            image, truth = load_pair(record.pair)
            iou = {c: record.results[c].scores["iou"] for c in ("clean", "degraded")}
            label = f"{record.pair.name}  IoU {iou['clean']:.2f} → {iou['degraded']:.2f}"
            preds = kept[index]
            rows.append((label, image, degrader(image, record.pair), preds["clean"], preds["degraded"], truth))
        written["degradation.png"] = png_bytes(degradation_figure(rows, scale, threshold))
    return written
