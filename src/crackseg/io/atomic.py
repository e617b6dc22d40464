"""The one way outputs reach the disk: whole or not at all, never over an input or an earlier run's file unasked.

Every writer goes through `atomic_write_bytes` (bytes in hand) or `atomic_path` (for libraries that write to a
path themselves: GDAL, rasterio, ezdxf); both write next to the target under a hidden temporary name
(`.NAME.XXXX.tmp`) and rename it into place, so a reader never sees a partial file. A run killed mid-write leaves
only such names, which `remove_debris` clears at the start of the next run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from crackseg.errors import OutputExistsError


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read the umask is to set it
    os.umask(mask)
    return mask


# Read once, at import: setting it later, while server threads write files, could leave one world-writable.
_UMASK = _read_umask()


def default_mode(folder: bool = False) -> int:
    """The permissions open() or mkdir() would give under the umask (mkstemp's are owner-only)."""
    return (0o777 if folder else 0o666) & ~_UMASK


def temporary_prefix(target: Path) -> str:
    return f".{target.name}."


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, folder: bool = False) -> Iterator[Path]:
    """A temporary path beside `target` to write to; renamed onto `target` when the block ends without an error,
    removed when it fails. With `folder`, the temporary path is a folder (moved into place whole)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=temporary_prefix(target), suffix=".tmp"))
    try:
        # GDAL may add -journal files beside the file it writes, so a file is written inside a private folder.
        tmp = work if folder else work / target.name
        yield tmp
        os.chmod(tmp, default_mode(folder))
        os.replace(tmp, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` whole or not at all (fsync'd before the rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())  # outputs are not secrets: the usual permissions, not mkstemp's
        os.replace(tmp, path)
    except OSError as err:  # e.g. a full disk: say which file, leave nothing half-written
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, f"{path}: cannot write it ({err.strerror or err})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_debris(targets: Iterable[str | os.PathLike]) -> int:
    """Remove what a killed run left of these outputs: only hidden `.NAME.*.tmp` files and folders of the targets'
    own names, never anything else. Returns how many were removed."""
    removed = 0
    for target in targets:
        target = Path(target)
        if not target.parent.is_dir():
            continue
        for leftover in target.parent.glob(f"{temporary_prefix(target)}*.tmp"):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def ensure_output_folder(path: str | os.PathLike, option: str = "-o") -> Path:
    """Create the output folder and check that files can be written there, before any work starts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OSError(f"{option} {path}: is a file, not a folder; name a folder for the outputs")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise OSError(
            f"{option} {path}: cannot write there ({err.strerror}); choose a folder you can write to"
        ) from None
    return path


def check_outputs_free(
    out_dir: str | os.PathLike, paths, overwrite: bool = False, what: str = "run", keep: str = ""
) -> None:
    """Nothing existing is replaced without `overwrite`: refuse when any of `paths` (the files a run would write in
    `out_dir`) is there already, naming the first. Called before a model loads or an input is read, so that a
    refused run costs nothing. `what` made the files (an earlier "run", "comparison"); `keep` is a way to keep them
    that the command offers (", --skip-existing to ..."), put between --overwrite and choosing another folder."""
    if overwrite:
        return
    first = next((Path(p) for p in paths if os.path.lexists(p)), None)
    if first is not None:
        raise OutputExistsError(
            f"-o {out_dir}: {first} is there already (an earlier {what}?); add --overwrite to replace it{keep}, "
            "or choose another folder"
        )
