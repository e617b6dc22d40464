"""Tables and maps, written whole or not at all: CSV, JSON/GeoJSON and GeoPackage layers, for measure and compare.

Callers build the rows, features and columns (`measure.maps`, `compare.outputs`); this module owns how they reach
the disk (or, for the server's downloads, bytes), so that both commands and the server write the same way.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os

import numpy as np

from crackseg.io.atomic import atomic_path


def csv_bytes(rows: list[dict], fieldnames: list[str]) -> bytes:
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return table.getvalue().encode()


def json_bytes(value, indent: int | None = None, ascii: bool = False) -> bytes:
    """Strict JSON: NaN or infinity is refused (a ValueError), never written as the invalid `NaN`/`Infinity`."""
    return json.dumps(value, indent=indent, ensure_ascii=ascii, allow_nan=False).encode()


GPKG_VERSION = "1.3"
COLUMN_TYPES = {"float": np.float64, "int": np.int64, "bool": np.bool_, "str": object}


def attribute_column(values: list, kind: str | None = None) -> np.ndarray:
    """One attribute column of `kind` (float, int, bool or str), or typed by its values when not given: booleans,
    whole numbers as int64, numbers as float64, anything else as text. A missing number (None) is NULL (NaN)."""
    if kind is not None:
        if kind == "float":
            return np.array([np.nan if v is None else v for v in values], np.float64)
        return np.array(values, COLUMN_TYPES[kind])
    if values and all(isinstance(v, bool | np.bool_) for v in values):
        return np.array(values, np.bool_)
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        return np.array(values, np.int64)
    if all(v is None or isinstance(v, float | int | np.number) for v in values):
        return np.array([np.nan if v is None else v for v in values], np.float64)
    return np.array(values, dtype=object)


@contextlib.contextmanager
def gdal_errors_named(path: str | os.PathLike):
    """GDAL's errors (a full disk, a read-only folder) as one OSError line naming the file being written."""
    from pyogrio.errors import DataLayerError, DataSourceError

    try:
        yield
    except (DataSourceError, DataLayerError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(f"{path}: cannot write it ({first_line})") from None


def write_gpkg(path: str | os.PathLike, **layer) -> None:
    """A GeoPackage layer (`gpkg_into`'s arguments) written whole to `path`, or not at all."""
    with atomic_path(path) as tmp, gdal_errors_named(path):
        gpkg_into(tmp, **layer)


def gpkg_bytes(**layer) -> bytes:
    """A GeoPackage of one layer (`gpkg_into`'s arguments) as bytes: a download made in memory."""
    target = io.BytesIO()
    gpkg_into(target, **layer)
    return target.getvalue()


def gpkg_into(
    target,
    layer: str,
    geometry: list,
    columns: dict[str, np.ndarray],
    crs_wkt: str,
    metadata: dict[str, str],
) -> None:
    """MultiLineStrings (shapely geometries, one per row) and their attributes as a GeoPackage layer in `target`
    (a path or a BytesIO).

    `columns`: name → one array per attribute (float NaN is NULL); `crs_wkt`: the map's CRS, or a local engineering
    one. GeoPackage 1.3 (GPKG_VERSION), not GDAL's default 1.4, which readers older than it warn about or refuse.
    """
    import pyogrio
    import shapely

    pyogrio.raw.write(
        target,
        np.asarray(shapely.to_wkb(geometry), dtype=object),
        list(columns.values()),
        list(columns),
        layer=layer,
        driver="GPKG",
        geometry_type="MultiLineString",
        crs=crs_wkt,
        layer_metadata=metadata,
        dataset_options={"VERSION": GPKG_VERSION},
    )
