"""A measurement drawn: each crack's skeleton coloured by its local width over the dimmed photo."""

from __future__ import annotations

import cv2
import numpy as np

from crackseg.errors import InputError
from crackseg.measure.result import Measurement


def width_figure(
    image,
    result: Measurement,
    max_side: int = 1600,
    min_side: int = 480,
    cmap: str = "turbo",
    overview: bool = False,
) -> np.ndarray:
    """The photo (dimmed, grey) with each skeleton coloured by local width, a colour bar and the crack ids.

    `image`: the photo or the mask (any array crackseg reads as an image), the size the mask was measured at; with
    `overview`, a reduced copy of it (of a raster too large to hold, `rasters.overview`), of the same proportions.
    Returns an RGB uint8 array. Widths are in mm when the measurement has a pixel size, else in px.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from crackseg.io.images import to_rgb_uint8

    base = to_rgb_uint8(image)
    proportions = abs(base.shape[0] * result.width / max(result.height, 1) - base.shape[1]) <= 1
    if base.shape[:2] != (result.height, result.width) and not (overview and proportions):
        raise InputError(
            f"the image is {base.shape[1]}×{base.shape[0]} px "
            f"but the measured mask was {result.width}×{result.height} px"
        )
    longest = max(result.height, result.width)
    scale = float(np.clip(longest, min_side, max_side)) / longest  # measured px → figure px
    size = (max(round(result.width * scale), 1), max(round(result.height * scale), 1))
    grey = cv2.cvtColor(base, cv2.COLOR_RGB2GRAY)
    interpolation = cv2.INTER_AREA if size[0] * size[1] < grey.size else cv2.INTER_NEAREST
    canvas = np.repeat((cv2.resize(grey, size, interpolation=interpolation) * 0.6).astype(np.uint8)[:, :, None], 3, 2)

    unit, factor = ("mm", result.pixel_size_mm) if result.pixel_size_mm else ("px", 1.0)
    widths = result.skeleton_width_px * factor
    norm = matplotlib.colors.Normalize(0.0, max(float(widths.max(initial=0.0)), 1.0 * factor))
    colormap = matplotlib.colormaps[cmap]
    # Paint in order of width, widest last, each skeleton pixel as a dot about 3 display pixels across.
    order = np.argsort(widths)
    rows = np.round((result.skeleton_rows[order] + 0.5) * scale - 0.5).astype(int)
    cols = np.round((result.skeleton_cols[order] + 0.5) * scale - 0.5).astype(int)
    colours = (colormap(norm(widths[order]))[:, :3] * 255).astype(np.uint8)
    radius = max(1, round(scale))
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            r, c = rows + dr, cols + dc
            ok = (r >= 0) & (r < size[1]) & (c >= 0) & (c < size[0])
            canvas[r[ok], c[ok]] = colours[ok]

    dpi, bar_px, title_px = 100, 110, 28
    fig = Figure(figsize=((size[0] + bar_px) / dpi, (size[1] + title_px) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    total_w, total_h = size[0] + bar_px, size[1] + title_px
    ax = fig.add_axes([0, 0, size[0] / total_w, size[1] / total_h])
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    for crack_id, (r, c) in label_positions(result).items():
        ax.text(
            c * scale,
            r * scale,
            str(crack_id),
            color="white",
            fontsize=8,
            ha="center",
            va="center",
            bbox={"boxstyle": "round,pad=0.15", "fc": "black", "ec": "none", "alpha": 0.6},
        )
    bar_ax = fig.add_axes([(size[0] + 12) / total_w, 0.08, 18 / total_w, 0.84 * size[1] / total_h])
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=colormap), cax=bar_ax, label=f"width ({unit})")
    s = result.summary()
    total = f"{s['total_length_mm']:.0f} mm" if result.pixel_size_mm else f"{s['total_length_px']:.0f} px"
    fig.text(
        0.01,
        1 - 0.5 * title_px / total_h,
        f"{result.count} cracks, total length {total}, max width {result.max_width_px * factor:.2f} {unit}",
        fontsize=9,
        va="center",
    )
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()


def label_positions(result: Measurement) -> dict[int, tuple[float, float]]:
    """For each crack, the skeleton pixel nearest its skeleton's centroid: where its id is written."""
    order = np.argsort(result.skeleton_id, kind="stable")
    ids, starts = np.unique(result.skeleton_id[order], return_index=True)
    out = {}
    if len(ids) == 0:
        return out
    for crack_id, nodes in zip(ids, np.split(order, starts[1:]), strict=True):
        r, c = result.skeleton_rows[nodes].astype(float), result.skeleton_cols[nodes].astype(float)
        i = np.argmin((r - r.mean()) ** 2 + (c - c.mean()) ** 2)
        out[int(crack_id)] = (r[i], c[i])
    return out
