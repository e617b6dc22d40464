"""A comparison's changes as a table (CSV) and as maps (GeoJSON, GeoPackage).

Everything is in AFTER's frame. GeoJSON: WGS 84 longitude, latitude when AFTER is georeferenced, else AFTER's
image pixels with `"crs": null`, as `crackseg measure` writes them. GeoPackage: AFTER's CRS, else mm (px without a
pixel size) from AFTER's bottom-left corner, y up. Each crack is one feature (`part` "crack"); an extended crack's
new segments are one more feature (`part` "added") with the same attributes, so that a GIS can style them apart.
"""

from __future__ import annotations

import numpy as np
import shapely

from crackseg.compare.changes import RECORD_FIELDS, Changes, CrackChange
from crackseg.io.vector import attribute_column, csv_bytes
from crackseg.measure.maps import PIXEL_NOTE

GPKG_LAYER = "changes"
DIGITS = {"px": 3, "lonlat": 10}


def features(changes: Changes) -> list[tuple[str, CrackChange, shapely.MultiLineString]]:
    """(part, crack, geometry): each crack, then the added segments of each extended one."""
    out = [("crack", c, c.line) for c in changes.cracks]
    return out + [("added", c, c.added) for c in changes.cracks if c.change == "extended"]


def changes_csv(changes: Changes) -> bytes:
    return csv_bytes([c.record(changes.pixel_size_mm) for c in changes.cracks], RECORD_FIELDS)


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


def gpkg_layer(changes: Changes) -> dict:
    """The GeoPackage layer "changes" as `io.vector.write_gpkg`'s arguments: AFTER's CRS, else mm (or px) from
    AFTER's bottom-left corner, y up, so that a GIS shows the drawing upright."""
    georef, scale, height = changes.after.georef, changes.pixel_size_mm or 1.0, changes.after.shape[0]

    def local(xy):
        return np.column_stack([xy[:, 0] * scale, (height - xy[:, 1]) * scale])

    rows = features(changes)
    records = [{"part": part, **crack.record(changes.pixel_size_mm)} for part, crack, _ in rows]
    return {
        "layer": GPKG_LAYER,
        "geometry": [shapely.transform(g, georef.to_map if georef else local) for _, _, g in rows],
        "columns": {name: attribute_column([r[name] for r in records]) for name in ["part", *RECORD_FIELDS]},
        "crs_wkt": georef.crs_wkt if georef else None,
        "metadata": {"coordinates": f"AFTER's CRS, {georef.crs_name()}" if georef else local_note(changes)},
    }
