"""The comparison's report in markdown, its summary.json, and after_measure.json (AFTER with the stable ids)."""

from __future__ import annotations

from pathlib import Path

from crackseg.compare.changes import Changes
from crackseg.compare.outputs import coordinate_note
from crackseg.measure.maps import report_dict


def summary_dict(changes: Changes) -> dict:
    """What summary.json holds: the comparison's summary, and what the maps' coordinates and the units are."""
    return changes.summary() | {
        "coordinates": coordinate_note(changes),
        "units": "lengths and widths in AFTER's pixels (BEFORE's scaled by the registration); mm × pixel_size_mm",
    }


def after_measure_dict(changes: Changes) -> dict:
    """AFTER's measure file, with the stable ids and what the next comparison needs to find its photo."""
    after, result = changes.after, changes.after_with_ids()
    source_from = changes.pixel_size_from if result.pixel_size_mm else None
    report = report_dict(result, after.name, after.source, after.georef, source_from)
    photo = str(Path(after.photo_path).resolve()) if after.photo_path else None
    return report | {"photo": photo, "next_crack_id": changes.next_id, "crack_ids": "stable across comparisons"}


def report_markdown(changes: Changes) -> str:
    s, a = changes.summary(), changes.alignment
    unit, factor = ("mm", changes.pixel_size_mm) if changes.pixel_size_mm else ("px", 1.0)
    if a.method == "features":
        how = (
            f"by features of the photos (SIFT, MAGSAC++ homography): {a.inliers} of {a.matches} matches agree, "
            f"RMS error {a.error_px:.2f} px"
        )
    else:
        how = {"georeference": "by the GeoTIFFs' coordinates", "assumed": "assumed (--assume-aligned)"}[a.method]
    lines = [
        "# Crack changes",
        "",
        f"- BEFORE: `{changes.before.name}` ({changes.before.measurement.count} cracks)",
        f"- AFTER: `{changes.after.name}` ({changes.after.measurement.count} cracks)",
        f"- Alignment {how}; scale ×{a.scale:.3f}; BEFORE covers {a.overlap:.0%} of AFTER.",
        f"- Matching tolerance {changes.tolerance_px:.2f} px (at least the alignment error + 2 px).",
        *tiling_lines(changes),
        *evidence_lines(changes),
        *noise_lines(changes, unit, factor),
        f"- Lengths and widths in AFTER's {unit}"
        + (
            f" ({changes.pixel_size_mm:g} mm per pixel, from {changes.pixel_size_from})."
            if changes.pixel_size_mm
            else "."
        ),
        "",
        "| change | cracks |",
        "|---|---|",
        *(f"| {name.replace('_', ' ')} | {count} |" for name, count in s["counts"].items()),
        "",
        f"New crack length: {s['total_new_length_px'] * factor:.1f} {unit} ({s['new_crack_length_px'] * factor:.1f} in "
        f"new cracks, {s['added_length_px'] * factor:.1f} added to existing ones).",
    ]
    widest = s["largest_widening"]
    if widest:
        lines.append(
            f"Largest widening: crack {widest['id']}, p95 width {widest['w95_bef_px'] * factor:.2f} → "
            f"{widest['w95_aft_px'] * factor:.2f} {unit}."
        )
    lines += ["", "![BEFORE aligned onto AFTER, and the changes](changes.png)", "", *crack_table(changes, unit, factor)]
    return "\n".join(lines) + "\n"


def evidence_lines(changes: Changes) -> list[str]:
    """What the changes rest on: each survey's evidence and thresholds, and any fallback."""
    evidence = changes.evidence()
    sides = []
    for name in ("before", "after"):
        side = evidence[name]
        thresholds = (
            f", present over {side['high_threshold']:g}, absent under {side['low_threshold']:g}"
            if side["high_threshold"] is not None
            else ""
        )
        sides.append(f"{name.upper()} from its {side['from']}{thresholds}")
    lines = [f"- Changes decided on evidence: {'; '.join(sides)}. {evidence['rule'][0].upper()}{evidence['rule'][1:]}."]
    if evidence["fallback"]:
        lines.append(f"- Fallback: {evidence['fallback']}.")
    return lines


def noise_lines(changes: Changes, unit: str, factor: float) -> list[str]:
    """The pair's noise floor, and what it is made of."""
    noise = changes.noise
    if noise is None:
        return []
    tips = [f"{b:.2f}" if b is not None else "unknown" for b in noise.tip_band_px]
    edges = [f"{b:.2f}" if b is not None else "unknown" for b in noise.edge_band_px]
    return [
        f"- Noise floor: no change under {noise.length_px * factor:.2f} {unit} in length or "
        f"{noise.width_px * factor:.2f} {unit} in width is reported (alignment error {noise.alignment_px:.2f} px, "
        f"pixels {noise.pixel_px[0]:.2f} and {noise.pixel_px[1]:.2f} px, tip repeatability {tips[0]} and {tips[1]} "
        f"px, edge repeatability {edges[0]} and {edges[1]} px, BEFORE and AFTER, in AFTER px)"
        + (f"; read from {noise.maps}." if noise.maps else ".")
    ]


def crack_table(changes: Changes, unit: str, factor: float) -> list[str]:
    def number(value):
        return "" if value is None else f"{value * factor:.1f}"

    def plain(value):
        return "" if value is None else f"{value:.2f}"

    rows = [
        f"| {c.id} | {c.change.replace('_', ' ')} | {plain(c.confidence)} | {', '.join(map(str, c.before_ids))} "
        f"| {plain(c.prob_before)} | {plain(c.prob_after)} | {number(c.length_before_px)} "
        f"| {number(c.length_after_px)} | {number(c.added_length_px) if c.change == 'extended' else ''} "
        f"| {number(c.width_p95_before_px)} | {number(c.width_p95_after_px)} |"
        for c in changes.cracks
    ]
    head = (
        f"| id | change | confidence | BEFORE ids | probability before | probability after | length before ({unit}) "
        f"| length after | added | p95 width before ({unit}) | p95 width after |"
    )
    return [head, "|---|---|---|---|---|---|---|---|---|---|---|", *rows]


def tiling_lines(changes: Changes) -> list[str]:
    """How the two photos were tiled for segmenting, where both were segmented here."""
    if changes.one_grid is None:
        return []
    if changes.one_grid:
        return ["- Both photos tiled on one grid (a shift apart): the same surface in the same place of the tiles."]
    return ["- Each photo tiled on its own grid (no whole-pixel shift lines the two up)."]
