"""A Measurement as the records, features and drawings its outputs hold: one layout for every table and map.

Every format carries the same per-crack attributes (`crack_record`: the CSV's columns, the GeoJSON's properties,
the GeoPackage's fields, named by `result.FIELD_NAMES`, at most 10 characters so that a shapefile keeps them) and
the same centrelines (`Measurement.centrelines`, one line per branch, cut to the image's extent), placed as each
format's users expect:

- GeoJSON (RFC 7946): WGS 84 longitude, latitude, so only for a georeferenced photo: RFC 7946 has no way to name
  another system, and GDAL and QGIS read any GeoJSON as degrees. Without a georeference none is written.
- GeoPackage and DXF: the raster's own CRS and its units (no reprojection, so nothing is lost); otherwise the local
  frame, a local engineering CRS: mm (or px without a pixel size) from the image's bottom-left corner, y up, so that
  a GIS or CAD program shows the drawing upright and no program takes it for a place on Earth.
- DXF: one layer per width class, each crack's figures as XDATA on its polylines (application `DXF_APP`), its id as
  TEXT on its own layer, the units in the header ($INSUNITS, $MEASUREMENT) and the CRS as a custom property.

Nothing here touches the disk: `io.vector` writes what these functions build.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from crackseg.io.vector import attribute_column
from crackseg.measure.classes import UNKNOWN_WIDTH_CLASS
from crackseg.measure.figure import label_positions
from crackseg.measure.result import FIELD_NAMES, Crack, Measurement, crack_dict

if TYPE_CHECKING:
    from crackseg.io.georef import Georeference

BBOX_FIELDS = ["bbox_x", "bbox_y", "bbox_w", "bbox_h"]
CRACK_FIELDS = [FIELD_NAMES[f.name] for f in fields(Crack) if f.name != "bbox"] + BBOX_FIELDS
CSV_FIELDS = ["image", *CRACK_FIELDS]
PIXEL_NOTE = "image pixels: x right, y down, from the image's top-left corner (pixel centres at +0.5)"
NO_GEOJSON = (
    "not written: GeoJSON (RFC 7946) is WGS 84 longitude, latitude only, and {what} has no georeference "
    "(GIS programs would read its coordinates as degrees); the GeoPackage holds the same features in {local}"
)
LONLAT_DIGITS = 10  # 1e-10° is about 0.01 mm: finer than any photo's pixel
PIXEL_DIGITS = 3
GPKG_LAYER = "cracks"
# AutoCAD colour index per width class, narrow to wide: green, yellow, orange, red, magenta, blue, cyan, white.
DXF_COLOURS = (3, 2, 30, 1, 6, 5, 4, 7)
DXF_UNKNOWN_COLOUR = 8  # grey
DXF_ID_LAYER = "crack id"  # each crack's number, as in the tables, beside its skeleton's middle
DXF_APP = "CRACKSEG"  # the XDATA application a CAD user lists (e.g. AutoCAD's XDLIST) to read a crack's figures
# NAME_measure.json says what it is, so that a reader (crackseg compare) can refuse files it would misread.
# Version 1: Crack's own field names and the class "branched-network"; version 2: the short names of FIELD_NAMES
# and the class "branched". Both are read.
MEASURE_FORMAT = "crackseg-measure"
MEASURE_FORMAT_VERSION = 2
READABLE_MEASURE_VERSIONS = (1, 2)


def crack_record(crack: Crack) -> dict:
    """The crack's attributes, flat (bbox as four columns), in CRACK_FIELDS order."""
    record = crack_dict(crack)
    record.update(zip(BBOX_FIELDS, record.pop("bbox"), strict=True))
    return {name: record[name] for name in CRACK_FIELDS}


def csv_row(image: str, crack: Crack) -> dict:
    return {"image": image, **crack_record(crack)}


def crack_from_record(record: dict, format_version: int) -> Crack:
    """A crack of a measure file (`crack_dict`'s layout) of any readable version; a TypeError where fields lack."""
    names = FIELD_NAMES if format_version >= 2 else {name: name for name in FIELD_NAMES}
    values = {name: record[key] for name, key in names.items() if key in record}
    if format_version == 1 and values.get("crack_class") == "branched-network":
        values["crack_class"] = "branched"
    crack = Crack(**values)
    crack.bbox = tuple(crack.bbox)
    return crack


# --- where the maps put the cracks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """Where a map (GeoPackage, DXF) puts image coordinates: the raster's CRS, or the local frame."""

    convert: Callable[[np.ndarray], np.ndarray]  # image coordinates (n, 2) → the frame's
    crs_wkt: str
    description: str  # for the summary JSON and the layer's metadata
    units_per_px: float  # the frame's units along one pixel
    metres_per_unit: float | None  # None: degrees, or pixels of unknown size


def local_crs_wkt(unit: str, image: str) -> str:
    """A local engineering CRS (WKT1 LOCAL_CS) in mm or px from `image`'s bottom-left corner, y up. GDAL stores a
    GeoPackage layer without a CRS as "undefined", which a GIS may read as degrees; this one names the frame and its
    unit ("pixel": its factor 1 to metres is nominal, a pixel's size being unknown)."""
    name = f"crackseg local frame: {unit} from {image} bottom-left corner, y up"
    unit_wkt = 'UNIT["millimetre",0.001]' if unit == "mm" else 'UNIT["pixel",1]'
    return f'LOCAL_CS["{name}",LOCAL_DATUM["{image} plane",32767],{unit_wkt},AXIS["X",EAST],AXIS["Y",NORTH]]'


def map_frame(
    height: int, pixel_size_mm: float | None, georef: Georeference | None, image: str = "the image's"
) -> Frame:
    """The raster's CRS where there is a georeference, else the local frame of an image `height` px high."""
    if georef is not None:
        a, _, _, d = georef.transform[:4]
        crs = georef.crs
        metres = None if crs.is_geographic else crs.axis_info[0].unit_conversion_factor
        return Frame(georef.to_map, georef.crs_wkt, f"the raster's CRS, {georef.crs_name()}", math.hypot(a, d), metres)
    unit, scale = ("mm", pixel_size_mm) if pixel_size_mm else ("px", 1.0)

    def local(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([xy[:, 0] * scale, (height - xy[:, 1]) * scale])

    description = f"{unit} from {image} bottom-left corner, y up (a local engineering CRS)"
    return Frame(local, local_crs_wkt(unit, image), description, scale, 0.001 if pixel_size_mm else None)


def clip_to_extent(lines: list[np.ndarray], width: float, height: float) -> list[np.ndarray]:
    """Each line (n, 2 image coordinates) cut to the image's extent [0, width] × [0, height]: a centreline's tip may
    end a fraction of a pixel past the edge, and a line carried over from another survey may run beyond it."""
    import shapely

    box, out = shapely.box(0.0, 0.0, width, height), []
    for line in lines:
        if len(line) == 0 or (line.min(axis=0) >= 0).all() and line[:, 0].max() <= width and line[:, 1].max() <= height:
            out.append(line)
        elif len(line) == 1:
            out.append(np.clip(line, 0.0, [width, height]))
        else:
            parts = shapely.get_parts(shapely.intersection(shapely.LineString(line), box))
            out += [shapely.get_coordinates(p) for p in parts if shapely.get_type_id(p) == 1 and not p.is_empty]
    return out


def converted(result: Measurement, convert) -> list[list[np.ndarray]]:
    """Every centreline, cut to the image, through `convert` ((n, 2) → (n, 2)) in one call: a pyproj call per line
    costs more."""
    cracks = [clip_to_extent(lines, result.width, result.height) for lines in result.centrelines]
    lines = [line for crack in cracks for line in crack]
    if not lines:
        return [[] for _ in cracks]
    pieces = iter(np.split(convert(np.concatenate(lines)), np.cumsum([len(line) for line in lines])[:-1]))
    return [[next(pieces) for _ in crack] for crack in cracks]


def coordinate_note(result: Measurement, georef: Georeference | None) -> dict:
    """What the coordinates of each map format are, for the summary JSON (and why a GeoJSON is missing)."""
    maps = map_frame(result.height, result.pixel_size_mm, georef).description
    geojson = "WGS 84 longitude, latitude (degrees)" if georef else NO_GEOJSON.format(what="the input", local=maps)
    return {"geojson": geojson, "gpkg": maps, "dxf": maps, "centrelines": PIXEL_NOTE}


def geojson_dict(result: Measurement, georef: Georeference, name: str | None = None) -> dict:
    """A FeatureCollection in WGS 84: one MultiLineString feature per crack (one line per branch), its record as
    properties. Only for a georeferenced measurement (see the module notes)."""
    centrelines = converted(result, georef.to_wgs84)
    features = [
        {
            "type": "Feature",
            "id": crack.id,
            "geometry": {
                "type": "MultiLineString",
                "coordinates": [np.round(line, LONLAT_DIGITS).tolist() for line in lines],
            },
            "properties": crack_record(crack),
        }
        for crack, lines in zip(result.cracks, centrelines, strict=True)
    ]
    collection = {"type": "FeatureCollection", "name": name or "cracks", "source_crs": georef.crs_name()}
    collection |= {"pixel_size_mm": result.pixel_size_mm, "width_classes": result.width_classes.name}
    return collection | {"features": features}


def crack_columns(result: Measurement) -> dict[str, np.ndarray]:
    """The GeoPackage's attribute columns, each typed by its Crack field (so an empty layer keeps its types)."""
    kinds = {FIELD_NAMES[f.name]: str(f.type).split("|")[0].strip() for f in fields(Crack)}
    kinds |= dict.fromkeys(BBOX_FIELDS, "int")
    records = [crack_record(c) for c in result.cracks]
    return {name: attribute_column([r[name] for r in records], kinds[name]) for name in CRACK_FIELDS}


def gpkg_layer(result: Measurement, georef: Georeference | None = None) -> dict:
    """The GeoPackage layer "cracks" as `io.vector.write_gpkg`'s arguments: MultiLineStrings in the raster's CRS,
    else in the local frame."""
    import shapely

    frame = map_frame(result.height, result.pixel_size_mm, georef)
    return {
        "layer": GPKG_LAYER,
        "geometry": [shapely.MultiLineString(lines) for lines in converted(result, frame.convert)],
        "columns": crack_columns(result),
        "crs_wkt": frame.crs_wkt,
        "metadata": {"coordinates": frame.description, "width_classes": result.width_classes.name},
    }


# --- the drawing ----------------------------------------------------------------------------------------------


def dxf_layer_name(label: str) -> str:
    """A width class as a DXF layer name: DXF forbids < > / \\ " : ; ? * | = ` in names."""
    words = label.replace(">=", "ge ").replace("<=", "le ").replace("<", "lt ").replace(">", "gt ")
    return "crack " + re.sub(r'[<>/\\":;?*|=`\x00-\x1f]', "_", words)


def dxf_units(metres_per_unit: float | None):
    """The $INSUNITS of a frame's unit, and its $MEASUREMENT (0 for feet, else 1: metric)."""
    from ezdxf.units import InsertUnits

    known = {
        1.0: InsertUnits.Meters,
        0.001: InsertUnits.Millimeters,
        1000.0: InsertUnits.Kilometers,
        0.3048: InsertUnits.Feet,
        1200 / 3937: InsertUnits.USSurveyFeet,
    }
    unit = next((u for m, u in known.items() if metres_per_unit and math.isclose(m, metres_per_unit)), None)
    return unit or InsertUnits.Unitless, 0 if unit in (InsertUnits.Feet, InsertUnits.USSurveyFeet) else 1


def dxf_bytes(result: Measurement, georef: Georeference | None = None) -> bytes:
    """A drawing of the cracks in the raster's CRS, else the local frame: one LWPOLYLINE per branch, on one layer
    per width class, carrying its crack's figures as XDATA."""
    import ezdxf

    frame = map_frame(result.height, result.pixel_size_mm, georef)
    doc = ezdxf.new("R2010")
    doc.units, doc.header["$MEASUREMENT"] = dxf_units(frame.metres_per_unit)
    doc.header.custom_vars.append("coordinates", frame.description)
    doc.appids.add(DXF_APP)
    layers = {}
    for i, label in enumerate(result.width_labels):  # every class, used or not: a CAD user toggles them
        colour = DXF_UNKNOWN_COLOUR if label == UNKNOWN_WIDTH_CLASS else DXF_COLOURS[i % len(DXF_COLOURS)]
        layers[label] = doc.layers.add(dxf_layer_name(label), color=colour)
        layers[label].description = label  # the class as the tables write it, where the name had to change
    msp = doc.modelspace()
    add_ids(doc, result, frame)
    for crack, lines in zip(result.cracks, converted(result, frame.convert), strict=True):
        xdata = dxf_xdata(crack)
        for points in lines:
            closed = len(points) > 3 and np.array_equal(points[0], points[-1])  # a loop: a closed polyline
            polyline = msp.add_lwpolyline(
                (points[:-1] if closed else points).tolist(),
                close=closed,
                dxfattribs={"layer": layers[crack.width_class].dxf.name},
            )
            polyline.set_xdata(DXF_APP, xdata)
    corners = frame.convert(np.array([[0.0, 0.0], [result.width, result.height]], np.float64))
    doc.set_modelspace_vport(float(np.abs(np.diff(corners[:, 1]))[0]) or 1.0, tuple(corners.mean(axis=0)))
    text = io.StringIO()
    doc.write(text)
    return text.getvalue().encode(doc.output_encoding)


def dxf_xdata(crack: Crack) -> list[tuple[int, object]]:
    """A crack's figures as XDATA: name (1000) and value (1000 text, 1040 real, 1071 integer) pairs, in mm where
    the pixel size is known, else px, named as in the tables."""
    record = crack_record(crack)
    unit = "mm" if crack.length_mm is not None else "px"
    names = ["id", f"len_{unit}", f"w_mean_{unit}", f"w_p95_{unit}", f"w_max_{unit}", "width_cls", "orient_cls"]
    names.append("crack_cls")
    out = []
    for name in names:
        value = record[name]
        code = 1000 if isinstance(value, str) else 1071 if isinstance(value, int) else 1040
        out += [(1000, name), (code, value)]
    return out


def add_ids(doc, result: Measurement, frame: Frame) -> None:
    """Each crack's id as TEXT on its own layer, where the width figure writes it, to find a crack's table row."""
    doc.layers.add(DXF_ID_LAYER, color=7)
    height = max(8.0, min(result.height, result.width) / 60) * frame.units_per_px  # readable at full view
    for crack_id, (row, col) in label_positions(result).items():
        place = frame.convert(np.array([[col + 0.5, row + 0.5]]))[0]
        doc.modelspace().add_text(str(crack_id), height=height, dxfattribs={"layer": DXF_ID_LAYER}).set_placement(
            tuple(place)
        )


# --- the summary ----------------------------------------------------------------------------------------------


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
