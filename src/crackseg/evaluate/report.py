"""report.md: an evaluation's numbers and figures as a page a person reads."""

from __future__ import annotations

from crackseg.evaluate.scores import ImageRecord


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
    if "cliou" in summary:
        cl = summary["cliou"]
        rows.append((f"clIoU, {cl['radius']:g} px (dataset)", _num(cl["micro"])))
        rows.append((f"clIoU, {cl['radius']:g} px (mean per image)", _num(cl["mean"])))
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


def paper_section(report: dict, conditions: list[str]) -> list[str]:
    """The published protocol's figures, apart from the strict ones they must not be mixed with."""
    papers = [report[c]["paper"] for c in conditions]

    def row(label: str, values) -> str:
        return f"| {label} | " + " | ".join(values) + " |"

    lines = [
        "## Paper protocol (SCSegamba's evaluation script)",
        "",
        row("metric", conditions),
        "|---|" + "---:|" * len(conditions),
        row("ODS F1 (threshold)", (f"{_num(p['ods_f1'])} ({p['ods_threshold']:g})" for p in papers)),
        row("OIS F1", (_num(p["ois_f1"]) for p in papers)),
        row("mIoU (threshold)", (f"{_num(p['miou'])} ({p['miou_threshold']:g})" for p in papers)),
        "",
        "As the crack-segmentation papers report them (SCSegamba's script, reused by CrackSSM and MixerCSeg): "
        "each photo and its ground truth resized to 512×512 (bicubic; truth > 127), the prediction divided by its "
        "own maximum and kept to 8 bits, crack = level/255 > t for t = 0.00…0.99. ODS: best mean per-image F1 at "
        "one threshold; OIS: mean of each image's best F1; mIoU: best mean per-image (crack IoU + background "
        "IoU) / 2 at one threshold. Images without cracks score F1 0. Not comparable with the strict numbers "
        "above.",
        "",
        "| source (clean) | images | ODS F1 | OIS F1 | mIoU |",
        "|---|---:|---:|---:|---:|",
    ]
    for source, s in report["clean"]["per_source"].items():
        p = s["paper"]
        lines.append(f"| {source} | {p['images']} | {_num(p['ods_f1'])} | {_num(p['ois_f1'])} | {_num(p['miou'])} |")
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
    if "cliou" in report["clean"]:
        lines[-1] += (
            " clIoU (OmniCrack30k): both masks thinned to centrelines; a true centreline pixel with a predicted one "
            "within R px is matched, a predicted one with no true one within R px is a false alarm; matched / "
            "(matched + missed + false alarms), pooled over the images."
        )
    for condition in conditions:
        lines += ["", f"## Per source ({condition})", ""] + source_table(report[condition])
    if "paper" in report["clean"]:
        lines += [""] + paper_section(report, conditions)
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
