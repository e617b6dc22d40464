"""`crackseg evaluate`: run a model over a labelled set and write a report a person can read.

Writes to the report folder: metrics.json (every number, the model, data, threshold and software versions),
per_image.csv, report.md, confusion_matrix.png, pr_curve.png, samples_{random,worst,best}.png and, with
`degrade`, degradation.png plus "degraded" numbers beside the "clean" ones. With protocol "paper", every photo is
also predicted and scored the way the crack-segmentation papers do (`evaluate.paper`), reported in its own section
beside the strict numbers. The few images shown in figures are re-read (and, for the worst/best, re-predicted) at
the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from crackseg.data import DataError, Pair
from crackseg.errors import InputError
from crackseg.evaluate.figures import report_figures
from crackseg.evaluate.paper import paper_counts, paper_truth
from crackseg.evaluate.report import render_report
from crackseg.evaluate.scores import (
    ImageRecord,
    load_pair,
    make_degrader,
    parse_degrade,
    per_image_csv,
    score_prediction,
    software_versions,
    summarize_condition,
)
from crackseg.io.atomic import atomic_write_bytes, check_outputs_free
from crackseg.options import SegmentOptions

PROTOCOLS = ("strict", "paper")  # paper: the strict numbers and, beside them, the published protocol's


def evaluate_pairs(
    segmenter,
    pairs: list[Pair],
    threshold: float,
    tolerance: float | None = None,
    degrader=None,
    keep: set[int] = frozenset(),
    progress: bool = True,
    cliou: float | None = None,
    paper: bool = False,
) -> tuple[list[ImageRecord], dict[int, dict[str, np.ndarray]]]:
    """Predict and score every pair (and its degraded copy when `degrader` is given); with `paper`, also each
    photo's 512×512 copy under the published protocol.

    Returns the records and, for the indices in `keep`, the thresholded predictions per condition.
    """
    records, kept = [], {}
    for index, pair in enumerate(tqdm(pairs, desc="evaluate", unit="img", disable=not progress)):
        image, truth = load_pair(pair)
        record = ImageRecord(pair, truth.shape[0], truth.shape[1], float(truth.mean()))
        conditions = {"clean": image}
        if degrader is not None:
            conditions["degraded"] = degrader(image, pair)
        small_truth = paper_truth(truth) if paper else None
        for condition, photo in conditions.items():
            result, pred = score_prediction(segmenter.predict_prob(photo), truth, threshold, tolerance, cliou)
            if paper:
                result.paper = paper_counts(segmenter, photo, small_truth)
            record.results[condition] = result
            if index in keep:
                kept.setdefault(index, {})[condition] = pred
        records.append(record)
    return records, kept


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
    cliou: float | None = None,
    protocol: str = "strict",
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

    `threshold` defaults to the segmenter's (the model's stored threshold unless overridden). `cliou` (a radius
    in pixels) adds centreline IoU at that tolerance. `protocol` "paper" adds the published protocol's ODS, OIS
    and mIoU (`evaluate.paper`) beside the strict numbers. `degrade` (a scale such as 4 or "x4") also evaluates
    degraded copies of every image, seeded per image from `degrade_seed`. `weights`, `data` and `split` are
    recorded in the report as given. An earlier report in `out_dir` is replaced only with `overwrite`.
    """
    if not pairs:
        raise DataError("empty dataset: no image/mask pairs to evaluate")
    check_report_free(out_dir, overwrite)
    threshold = segmenter.threshold if threshold is None else SegmentOptions.make(threshold=threshold).threshold
    if tolerance is not None and tolerance < 0:
        raise InputError(f"tolerance {tolerance} must be ≥ 0 pixels")
    if cliou is not None and not cliou >= 0:
        raise InputError(f"clIoU radius {cliou} must be ≥ 0 pixels")
    if protocol not in PROTOCOLS:
        raise InputError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    scale = parse_degrade(degrade)
    degrader = None if scale is None else make_degrader(scale, degrade_seed)
    out_dir = Path(out_dir)

    rng = np.random.default_rng(seed)
    random_sample = sorted(rng.choice(len(pairs), min(n_samples, len(pairs)), replace=False).tolist())
    records, kept = evaluate_pairs(
        segmenter, pairs, threshold, tolerance, degrader, set(random_sample), progress, cliou, protocol == "paper"
    )

    conditions = ["clean"] + (["degraded"] if degrader else [])
    summaries = {c: summarize_condition(records, c, tolerance, cliou) for c in conditions}
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

    figures = report_figures(segmenter, records, kept, random_sample, threshold, summaries, n_samples, scale, degrader)
    for name, png in figures.items():
        atomic_write_bytes(out_dir / name, png)
    atomic_write_bytes(out_dir / "per_image.csv", per_image_csv(records, tolerance, cliou).encode())
    atomic_write_bytes(out_dir / "report.md", render_report(report, records, list(figures)).encode())
    atomic_write_bytes(out_dir / "metrics.json", (json.dumps(report, indent=2) + "\n").encode())
    return report
