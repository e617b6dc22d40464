"""A comparison's changes as a table (CSV) and as maps (GeoJSON, GeoPackage).

Everything is in AFTER's frame. GeoJSON: WGS 84 longitude, latitude when AFTER is georeferenced, else AFTER's
image pixels with `"crs": null`, as `crackseg measure` writes them. GeoPackage: AFTER's CRS, else mm (px without a
pixel size) from AFTER's bottom-left corner, y up. Each crack is one feature (`part` "crack"); an extended crack's
new segments are one more feature (`part` "added") with the same attributes, so that a GIS can style them apart.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import shapely

from crackseg.compare.changes import RECORD_FIELDS, Changes, CrackChange
from crackseg.outputs import PIXEL_NOTE, write_gpkg_layer

GPKG_LAYER = "changes"
DIGITS = {"px": 3, "lonlat": 10}


def features(changes: Changes) -> list[tuple[str, CrackChange, shapely.MultiLineString]]:
    """(part, crack, geometry): each crack, then the added segments of each extended one."""
    out = [("crack", c, c.line) for c in changes.cracks]
    return out + [("added", c, c.added) for c in changes.cracks if c.change == "extended"]


def csv_bytes(changes: Changes) -> bytes:
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=RECORD_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(c.record(changes.pixel_size_mm) for c in changes.cracks)
    return table.getvalue().encode()


def local_note(changes: Changes) -> str:
    return f"{'mm' if changes.pixel_size_mm else 'px'} from AFTER's bottom-left corner, y up"


def geojson_dict(changes: Changes) -> dict:
    """A FeatureCollection of MultiLineStrings: WGS 84 when AFTER is georeferenced, else AFTER's pixels."""
    georef = changes.after.georef
    convert, digits = (georef.to_wgs84, DIGITS["lonlat"]) if georef else (None, DIGITS["px"])
    collection = {"type": "FeatureCollection", "name": "changes"}
    collection |= {"source_crs": georef.crs_name()} if georef else {"crs": None, "note": PIXEL_NOTE}
    collection["pixel_size_mm"] = changes.pixel_size_mm
    collection["features"] = [
        {
            "type": "Feature",
            "geometry": {"type": "MultiLineString", "coordinates": line_coordinates(geometry, convert, digits)},
            "properties": {"part": part, **crack.record(changes.pixel_size_mm)},
        }
        for part, crack, geometry in features(changes)
    ]
    return collection


def line_coordinates(geometry, convert, digits: int) -> list:
    out = []
    for line in shapely.get_parts(geometry):
        xy = shapely.get_coordinates(line)
        out.append(np.round(convert(xy) if convert else xy, digits).tolist())
    return out


def write_gpkg(path: Path, changes: Changes) -> None:
    georef, scale, height = changes.after.georef, changes.pixel_size_mm or 1.0, changes.after.shape[0]

    def local(xy):  # mm (or px) from the bottom-left corner, y up, so that a GIS shows the drawing upright
        return np.column_stack([xy[:, 0] * scale, (height - xy[:, 1]) * scale])

    rows = features(changes)
    geometry = [shapely.transform(g, georef.to_map if georef else local) for _, _, g in rows]
    records = [{"part": part, **crack.record(changes.pixel_size_mm)} for part, crack, _ in rows]
    columns = {name: column([r[name] for r in records]) for name in ["part", *RECORD_FIELDS]}
    note = f"AFTER's CRS, {georef.crs_name()}" if georef else local_note(changes)
    write_gpkg_layer(path, GPKG_LAYER, geometry, columns, georef.crs_wkt if georef else None, {"coordinates": note})


def column(values: list) -> np.ndarray:
    """An attribute column: numbers as float64 (None as NULL), ids as int64, text as text."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.array(values, np.int64)
    if all(v is None or isinstance(v, float | int) for v in values):
        return np.array([np.nan if v is None else v for v in values], np.float64)
    return np.array(values, dtype=object)
