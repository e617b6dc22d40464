"""A comparison's changes as a table (CSV) and as maps (GeoJSON, GeoPackage).

Everything is in AFTER's frame, each line cut to AFTER's image (a BEFORE crack carried over may run beyond it).
GeoJSON: WGS 84 longitude, latitude, only when AFTER is georeferenced (RFC 7946 knows no other system; without a
georeference `changes_geojson` is None and no file is written). GeoPackage: AFTER's CRS, else the local frame, mm
(px without a pixel size) from AFTER's bottom-left corner, y up, as `crackseg measure` writes them. Each crack is one
feature (`part` "crack"); an extended crack's new segments are one more feature (`part` "added") with the same
attributes, so that a GIS can style them apart.
"""

from __future__ import annotations

import numpy as np
import shapely

from crackseg.compare.changes import RECORD_FIELDS, Changes, CrackChange
from crackseg.io.vector import attribute_column, csv_bytes
from crackseg.measure.maps import LONLAT_DIGITS, NO_GEOJSON, Frame, clip_to_extent, map_frame

GPKG_LAYER = "changes"


def features(changes: Changes) -> list[tuple[str, CrackChange, shapely.MultiLineString]]:
    """(part, crack, geometry): each crack, then the added segments of each extended one."""
    out = [("crack", c, c.line) for c in changes.cracks]
    return out + [("added", c, c.added) for c in changes.cracks if c.change == "extended"]


def changes_csv(changes: Changes) -> bytes:
    return csv_bytes([c.record(changes.pixel_size_mm) for c in changes.cracks], RECORD_FIELDS)


def after_frame(changes: Changes) -> Frame:
    """Where the GeoPackage puts AFTER's image coordinates: its CRS, else its local frame."""
    return map_frame(changes.after.shape[0], changes.pixel_size_mm, changes.after.georef, "AFTER's")


def coordinate_note(changes: Changes) -> dict:
    """What the maps' coordinates are, for summary.json (and why there is no changes.geojson)."""
    gpkg = after_frame(changes).description
    if changes.after.georef:
        return {"geojson": "WGS 84 longitude, latitude (degrees)", "gpkg": gpkg}
    return {"geojson": NO_GEOJSON.format(what="AFTER", local=gpkg), "gpkg": gpkg}


def in_view(geometry, changes: Changes) -> list[np.ndarray]:
    """The geometry's lines (image coordinates) cut to AFTER's image."""
    height, width = changes.after.shape
    return clip_to_extent([shapely.get_coordinates(line) for line in shapely.get_parts(geometry)], width, height)


def changes_geojson(changes: Changes) -> dict | None:
    """A FeatureCollection of MultiLineStrings in WGS 84; None when AFTER has no georeference."""
    georef = changes.after.georef
    if georef is None:
        return None
    collection = {"type": "FeatureCollection", "name": "changes", "source_crs": georef.crs_name()}
    collection["pixel_size_mm"] = changes.pixel_size_mm
    collection["features"] = [
        {
            "type": "Feature",
            "geometry": {
                "type": "MultiLineString",
                "coordinates": [
                    np.round(georef.to_wgs84(line), LONLAT_DIGITS).tolist() for line in in_view(geometry, changes)
                ],
            },
            "properties": {"part": part, **crack.record(changes.pixel_size_mm)},
        }
        for part, crack, geometry in features(changes)
    ]
    return collection


def gpkg_layer(changes: Changes) -> dict:
    """The GeoPackage layer "changes" as `io.vector.write_gpkg`'s arguments: AFTER's CRS, else its local frame."""
    frame = after_frame(changes)
    rows = features(changes)
    records = [{"part": part, **crack.record(changes.pixel_size_mm)} for part, crack, _ in rows]
    geometry = [shapely.MultiLineString([frame.convert(line) for line in in_view(g, changes)]) for _, _, g in rows]
    return {
        "layer": GPKG_LAYER,
        "geometry": geometry,
        "columns": {name: attribute_column([r[name] for r in records]) for name in ["part", *RECORD_FIELDS]},
        "crs_wkt": frame.crs_wkt,
        "metadata": {"coordinates": frame.description},
    }
