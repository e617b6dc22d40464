"""A Measurement as the records, features and drawings its outputs hold: one layout for every table and map.

Every format carries the same per-crack attributes (`crack_record`: the CSV's columns, the GeoJSON's properties,
the GeoPackage's fields) and the same centrelines (`Measurement.centrelines`, one line per branch), placed as each
format's users expect:

- GeoJSON (RFC 7946): WGS 84 longitude, latitude when the photo is georeferenced; otherwise image pixels
  (x right, y down, from the top-left corner), said by `"crs": null` and a `note`, as RFC 7946 has no way
  to name another system.
- GeoPackage: the raster's own CRS (no reprojection, so nothing is lost); otherwise mm (or px without a
  pixel size) from the image's bottom-left corner, y up, so that a GIS shows it upright.
- DXF: always a drawing of the photo, mm when the pixel size is known (else px), y up from the bottom-left
  corner (CAD's y points up, the image's down), one layer per width class.

Nothing here touches the disk: `io.vector` writes what these functions build.
"""

from __future__ import annotations

import io
import re
from dataclasses import asdict, fields
from typing import TYPE_CHECKING

import numpy as np

from crackseg.io.vector import attribute_column
from crackseg.measure.classes import UNKNOWN_WIDTH_CLASS
from crackseg.measure.figure import label_positions
from crackseg.measure.result import Crack, Measurement

if TYPE_CHECKING:
    from crackseg.io.georef import Georeference

CRACK_FIELDS = [f.name for f in fields(Crack) if f.name != "bbox"] + ["bbox_x", "bbox_y", "bbox_w", "bbox_h"]
CSV_FIELDS = ["image", *CRACK_FIELDS]
PIXEL_NOTE = "coordinates are image pixels: x right, y down, from the image's top-left corner (pixel centres at +0.5)"
LONLAT_DIGITS = 10  # 1e-10° is about 0.01 mm: finer than any photo's pixel
PIXEL_DIGITS = 3
GPKG_LAYER = "cracks"
# AutoCAD colour index per width class, narrow to wide: green, yellow, orange, red, magenta, blue, cyan, white.
DXF_COLOURS = (3, 2, 30, 1, 6, 5, 4, 7)
DXF_UNKNOWN_COLOUR = 8  # grey
DXF_ID_LAYER = "crack id"  # each crack's number, as in the tables, beside its skeleton's middle
# NAME_measure.json says what it is, so that a reader (crackseg compare) can refuse files it would misread.
# Version 1: the first with this field, and the first with each crack's centreline ("centrelines").
MEASURE_FORMAT = "crackseg-measure"
MEASURE_FORMAT_VERSION = 1


def crack_record(crack: Crack) -> dict:
    """The crack's attributes, flat (bbox as four columns), in CRACK_FIELDS order."""
    record = asdict(crack)
    record["bbox_x"], record["bbox_y"], record["bbox_w"], record["bbox_h"] = record.pop("bbox")
    return {name: record[name] for name in CRACK_FIELDS}


def csv_row(image: str, crack: Crack) -> dict:
    return {"image": image, **crack_record(crack)}


def local_xy(result: Measurement, xy: np.ndarray) -> np.ndarray:
    """Image coordinates → mm (px without a pixel size) from the image's bottom-left corner, y up."""
    scale = result.pixel_size_mm or 1.0
    return np.column_stack([xy[:, 0] * scale, (result.height - xy[:, 1]) * scale])


def converted(result: Measurement, convert) -> list[list[np.ndarray]]:
    """Every centreline through `convert` ((n, 2) → (n, 2)) in one call: a pyproj call per line costs more."""
    lines = [line for crack in result.centrelines for line in crack]
    if not lines:
        return [[] for _ in result.centrelines]
    pieces = iter(np.split(convert(np.concatenate(lines)), np.cumsum([len(line) for line in lines])[:-1]))
    return [[next(pieces) for _ in crack] for crack in result.centrelines]


def coordinate_note(result: Measurement, georef: Georeference | None) -> dict:
    """What the coordinates of each map format are, for the summary JSON."""
    unit = "mm" if result.pixel_size_mm else "px"
    local = f"{unit} from the image's bottom-left corner, y up"
    return {
        "geojson": "WGS 84 longitude, latitude (degrees)" if georef else PIXEL_NOTE,
        "gpkg": f"the raster's CRS, {georef.crs_name()}" if georef else local,
        "dxf": local,
    }


def geojson_dict(result: Measurement, georef: Georeference | None = None, name: str | None = None) -> dict:
    """A FeatureCollection: one MultiLineString feature per crack (one line per branch), its record as properties."""
    convert, digits = (georef.to_wgs84, LONLAT_DIGITS) if georef else ((lambda xy: xy), PIXEL_DIGITS)
    centrelines = converted(result, convert)
    features = [
        {
            "type": "Feature",
            "id": crack.id,
            "geometry": {
                "type": "MultiLineString",
                "coordinates": [np.round(line, digits).tolist() for line in lines],
            },
            "properties": crack_record(crack),
        }
        for crack, lines in zip(result.cracks, centrelines, strict=True)
    ]
    collection = {"type": "FeatureCollection", "name": name or "cracks"}
    if georef is None:  # RFC 7946 coordinates are WGS 84: say plainly that these are not
        collection |= {"crs": None, "note": PIXEL_NOTE}
    else:
        collection["source_crs"] = georef.crs_name()
    collection |= {"pixel_size_mm": result.pixel_size_mm, "width_classes": result.width_classes.name}
    return collection | {"features": features}


def crack_columns(result: Measurement) -> dict[str, np.ndarray]:
    """The GeoPackage's attribute columns, each typed by its Crack field (so an empty layer keeps its types)."""
    kinds = {f.name: str(f.type).split("|")[0].strip() for f in fields(Crack)}
    kinds |= dict.fromkeys(["bbox_x", "bbox_y", "bbox_w", "bbox_h"], "int")
    records = [crack_record(c) for c in result.cracks]
    return {name: attribute_column([r[name] for r in records], kinds[name]) for name in CRACK_FIELDS}


def gpkg_layer(result: Measurement, georef: Georeference | None = None) -> dict:
    """The GeoPackage layer "cracks" as `io.vector.write_gpkg`'s arguments: MultiLineStrings in the raster's CRS,
    else in local mm (or px), y up."""
    import shapely

    convert = georef.to_map if georef else (lambda xy: local_xy(result, xy))
    return {
        "layer": GPKG_LAYER,
        "geometry": [shapely.MultiLineString(lines) for lines in converted(result, convert)],
        "columns": crack_columns(result),
        "crs_wkt": georef.crs_wkt if georef else None,
        "metadata": {
            "coordinates": coordinate_note(result, georef)["gpkg"],
            "width_classes": result.width_classes.name,
        },
    }


def dxf_layer_name(label: str) -> str:
    """A width class as a DXF layer name: DXF forbids < > / \\ " : ; ? * | = ` in names."""
    words = label.replace(">=", "ge ").replace("<=", "le ").replace("<", "lt ").replace(">", "gt ")
    return "crack " + re.sub(r'[<>/\\":;?*|=`\x00-\x1f]', "_", words)


def dxf_bytes(result: Measurement) -> bytes:
    """A drawing of the cracks: one LWPOLYLINE per branch, on one layer per width class (mm, else px; y up)."""
    import ezdxf
    from ezdxf import units

    doc = ezdxf.new("R2010")
    doc.units = units.MM if result.pixel_size_mm else units.InsertUnits.Unitless
    layers = {}
    for i, label in enumerate(result.width_labels):  # every class, used or not: a CAD user toggles them
        colour = DXF_UNKNOWN_COLOUR if label == UNKNOWN_WIDTH_CLASS else DXF_COLOURS[i % len(DXF_COLOURS)]
        layers[label] = doc.layers.add(dxf_layer_name(label), color=colour)
        layers[label].description = label  # the class as the tables write it, where the name had to change
    msp = doc.modelspace()
    add_ids(doc, result)
    for crack, lines in zip(result.cracks, result.centrelines, strict=True):
        for line in lines:
            points = local_xy(result, line)
            closed = len(points) > 3 and np.array_equal(points[0], points[-1])  # a loop: a closed polyline
            msp.add_lwpolyline(
                (points[:-1] if closed else points).tolist(),
                close=closed,
                dxfattribs={"layer": layers[crack.width_class].dxf.name},
            )
    text = io.StringIO()
    doc.write(text)
    return text.getvalue().encode(doc.output_encoding)


def add_ids(doc, result: Measurement) -> None:
    """Each crack's id as TEXT on its own layer, where the width figure writes it, to find a crack's table row."""
    doc.layers.add(DXF_ID_LAYER, color=7)
    scale = result.pixel_size_mm or 1.0
    height = max(8.0, min(result.height, result.width) / 60) * scale  # readable beside the cracks at full view
    for crack_id, (row, col) in label_positions(result).items():
        place = local_xy(result, np.array([[col + 0.5, row + 0.5]]))[0]
        doc.modelspace().add_text(str(crack_id), height=height, dxfattribs={"layer": DXF_ID_LAYER}).set_placement(
            tuple(place)
        )


def report_dict(
    result: Measurement,
    source_path: str,
    source: str,
    georef: Georeference | None = None,
    pixel_size_from: str | None = None,
) -> dict:
    """NAME_measure.json: the input, its georeference, the units, the summary, every crack and its centreline."""
    return {
        "format": MEASURE_FORMAT,
        "format_version": MEASURE_FORMAT_VERSION,
        "input": source_path,
        "source": source,
        **result.to_dict(),
        "pixel_size_from": pixel_size_from,
        "georeference": georef.to_dict() if georef else None,
        "units": {
            "px": "pixels of the image (lengths, widths; px2: areas)",
            "mm": "millimetres: px × pixel_size_mm (mm2: areas)" if result.pixel_size_mm else "no pixel size given",
            "coordinates": coordinate_note(result, georef),
        },
        "centrelines": centreline_records(result),
    }


def centreline_records(result: Measurement) -> list[dict]:
    """Each crack's centreline in image pixels, one point list per branch: what `crackseg compare` matches."""
    return [
        {"id": crack.id, "lines": [np.round(line, PIXEL_DIGITS).tolist() for line in lines]}
        for crack, lines in zip(result.cracks, result.centrelines, strict=True)
    ]
