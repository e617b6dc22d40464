"""Pack the training data and the wheels `crackseg train` needs into one folder that fits the device machine's
transfer limit, unpack it there, and keep what a call brings back.

The device tool sends the checkout (tracked and untracked-not-ignored files) and up to 8 carried paths, 64 MiB in
all, and the machine reaches no package index. `../shared/data` (about 150 MiB of JPEGs) does not fit as it is, so
every pair is re-encoded: the photo as AVIF at the highest quality that fits the budget (a size-for-quality trade
JPEG cannot match at these rates), the mask as a 1-bit PNG, bit-exact as crackseg reads it. Unpacking restores
every original relative path, so `find_pairs` and `split_pairs` give the same pairs, sources and validation split
as on the original data; the manifest holds that split and the unpacking checks it. Teacher maps are not packed:
the device computes them (`tools/gpu_designs.py`).

Here, in the root of the checkout the device tool sends (the folder must be ignored, or it would travel twice):

    echo /.gpu/ >> "$(git rev-parse --git-common-dir)/info/exclude"
    python tools/gpu_pack.py --data ../shared/data --out .gpu
    python tools/gpu_pack.py --check --out .gpu                 # what will travel, against the limit
    python tools/gpu_pack.py --take-back FILES_AT --out .gpu    # after a call: keep what came back

The budget defaults to the limit less what the checkout itself sends; `--reserve-mib` of it is kept free for the
runs' resume states that `--take-back` adds to the pack, so a later call that continues the runs still fits.

OUT holds `data.zip` (the pairs, stored uncompressed under their original paths, the photos with the codec's suffix
added), `wheels/` (manylinux cp312 wheels of what the device lacks), `manifest.json` (codec, quality, sizes, the
pairs and the validation split) and, after `--take-back`, `resume/NAME.tar`.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

MIB = 2**20
TRANSFER_LIMIT = 64 * MIB
MARGIN = 1 * MIB  # git's view of the checkout can differ a little from what the tool copies
DEFAULT_RESERVE_MIB = 14.0  # two students' resume states (float16 weights, about 6.7 MiB each)

# What `crackseg teach` and `crackseg train` import that the device's image lacks (its package list is in the
# device tool's KINDS.md): pydantic for the settings, segmentation-models-pytorch for the networks, albumentations
# for the augmentation, and their own needs. None: the version installed here, which the tests ran with.
# stringzilla: albucore needs >= 3.10.4, and 3.12's wheel is a fourteenth of the size of the 5.x one.
WHEELS = {
    "pydantic": None,
    "pydantic-core": None,
    "annotated-types": None,
    "typing-inspection": None,
    "typing-extensions": None,
    "segmentation-models-pytorch": None,
    "albumentations": None,
    "albucore": None,
    "simsimd": None,
    "stringzilla": "3.12.6",
}
DEVICE_PLATFORMS = (
    "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
    "manylinux1_x86_64", "manylinux_2_5_x86_64",
)  # fmt: skip

CODECS = {"avif": ".avif", "webp": ".webp", "jpeg": ".jpg"}
QUALITY_RANGE = (1, 95)
SAMPLE_PHOTOS = 240  # the quality is chosen on this many photos spread over the data, then checked on all
JPEG_REWRITE = {"quality": 97, "subsampling": 0}  # unpacked photos keep their .jpg names; this adds little loss


class PackError(Exception):
    """The pack cannot be made or used as asked; the message says what to change."""


@dataclass(frozen=True)
class PackedPair:
    image: str  # relative to the data root, as in the original
    mask: str
    source: str


# --- sizes ----------------------------------------------------------------------------------------------------


def travelling_bytes(repo: Path) -> int:
    """What the device tool sends of the checkout at `repo`: tracked and untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo, capture_output=True, check=True,
    ).stdout  # fmt: skip
    files = (repo / name for name in listed.decode().split("\0") if name)
    return sum(path.stat().st_size for path in files if path.is_file())


def checkout_of(folder: Path) -> Path | None:
    """The root of the git checkout holding `folder` (which need not exist yet), or None."""
    probe = folder if folder.is_dir() else folder.parent
    while not probe.is_dir():
        probe = probe.parent
    found = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=probe, capture_output=True, text=True)
    return Path(found.stdout.strip()) if found.returncode == 0 else None


def check_ignored(repo: Path, folder: Path) -> None:
    """A pack that git does not ignore would travel twice: once with the checkout, once carried."""
    rel = folder.resolve().relative_to(repo.resolve())
    if subprocess.run(["git", "check-ignore", "-q", f"{rel}/"], cwd=repo).returncode != 0:
        raise PackError(
            f"{folder}: not ignored by git, so it would travel with the checkout as well as carried; run "
            f'echo /{rel}/ >> "$(git rev-parse --git-common-dir)/info/exclude"'
        )


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def mib(size: float) -> str:
    return f"{size / MIB:.1f} MiB" if size >= MIB / 10 else f"{size / 1024:.1f} KiB"


# --- encoding -------------------------------------------------------------------------------------------------


def encode_photo(path: Path, codec: str, quality: int) -> bytes:
    """The photo as crackseg reads it (upright RGB), encoded with `codec` at `quality`."""
    from crackseg.io.images import read_image

    options = {"avif": {}, "webp": {"method": 4}, "jpeg": {"optimize": True}}[codec]
    buffer = io.BytesIO()
    Image.fromarray(read_image(path)).save(buffer, codec.upper(), quality=quality, **options)
    return buffer.getvalue()


def encode_mask(path: Path) -> bytes:
    """The mask as crackseg binarises it, as a 1-bit PNG (crackseg reads mode "1" back bit for bit)."""
    from crackseg.io.images import read_mask

    buffer = io.BytesIO()
    Image.fromarray(read_mask(path)).convert("1").save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def default_codec() -> str:
    """AVIF where this Pillow writes it, else WebP."""
    from PIL import features

    return "avif" if features.check("avif") else "webp"


def packed_name(pair_file: str, kind: str, codec: str) -> str:
    """The zip member of an original file: photos get the codec's suffix added, masks keep a .png name."""
    if kind == "image":
        return pair_file + CODECS[codec]
    return pair_file if pair_file.lower().endswith(".png") else pair_file + ".png"


def _encode_photo_job(job: tuple[Path, str, int]) -> bytes:
    return encode_photo(*job)


def encode_photos(paths: list[Path], codec: str, quality: int, workers: int) -> list[bytes]:
    jobs = [(p, codec, quality) for p in paths]
    if workers <= 1:
        return [_encode_photo_job(job) for job in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_encode_photo_job, jobs, chunksize=8))


def pixels(path: Path) -> int:
    with Image.open(path) as img:
        return img.width * img.height


def choose_quality(
    photos: list[Path], codec: str, budget: int, min_quality: int, workers: int, sample: int = SAMPLE_PHOTOS
) -> int:
    """The highest quality whose size, estimated from photos spread over the data (scaled by pixels), fits
    `budget`; PackError when even `min_quality` does not."""
    chosen = photos[:: max(1, len(photos) // sample)]
    scale = sum(map(pixels, photos)) / sum(map(pixels, chosen))

    def estimate(quality: int) -> float:
        return sum(map(len, encode_photos(chosen, codec, quality, workers))) * scale

    smallest = estimate(min_quality)
    if smallest > budget:
        raise PackError(
            f"--budget-mib: the photos need about {mib(smallest)} at {codec} quality {min_quality} "
            f"but {mib(max(budget, 0))} is left for them; raise --budget-mib, lower --reserve-mib or --min-quality"
        )
    low, high = min_quality, QUALITY_RANGE[1]
    while low < high:  # the size grows with the quality
        middle = (low + high + 1) // 2
        low, high = (middle, high) if estimate(middle) <= budget else (low, middle - 1)
    return low


# --- packing --------------------------------------------------------------------------------------------------


def find_training_pairs(data: Path) -> list[PackedPair]:
    """The pairs `crackseg train --data DATA` trains and validates on, as paths relative to DATA."""
    from crackseg.data import find_pairs

    return [
        PackedPair(str(p.image.relative_to(data)), str(p.mask.relative_to(data)), p.source)
        for p in find_pairs(data, exclude_splits=("test",))
    ]


def validation_images(data: Path, val_fraction: float = 0.1, split_seed: int = 0) -> list[str]:
    """The relative paths of the photos `crackseg train` validates on (its default split)."""
    from crackseg.data import find_pairs, split_pairs

    _, val = split_pairs(find_pairs(data, exclude_splits=("test",)), val_fraction, split_seed)
    return sorted(str(p.image.relative_to(data)) for p in val)


def download_wheels(dest: Path) -> list[Path]:
    """manylinux cp312 wheels of WHEELS (no dependencies: the list names each one)."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = [f"{name}=={version or metadata.version(name)}" for name, version in WHEELS.items()]
    platforms = [arg for platform in DEVICE_PLATFORMS for arg in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dest), *wanted]
    if subprocess.run(command).returncode != 0:
        raise PackError(f"pip download of {', '.join(wanted)} failed (see above); or pack with --no-wheels")
    return sorted(dest.glob("*.whl"))


def zip_overhead(names: list[str]) -> int:
    """Bytes a stored zip adds to its members: a local and a central header per member, and the end record."""
    return sum(30 + 46 + 2 * len(name.encode()) for name in names) + 22


def pack(
    data: Path,
    out: Path,
    budget: int,
    *,
    codec: str | None = None,
    reserve: int = int(DEFAULT_RESERVE_MIB * MIB),
    min_quality: int = 20,
    wheels: bool = True,
    workers: int = 1,
    say=print,
) -> dict:
    """Write OUT (data.zip, wheels/, manifest.json) within `budget` bytes, `reserve` of them left free; the
    manifest. PackError, naming the option to change, when it cannot fit; OUT appears whole or not at all.
    `codec`: default AVIF where this Pillow writes it."""
    from crackseg.io.atomic import atomic_path

    codec = codec or default_codec()
    if out.exists() and any(out.iterdir()):
        raise PackError(f"--out {out}: not empty; remove it first (a pack is made whole)")
    pairs = find_training_pairs(data)
    if not pairs:
        raise PackError(f"--data {data}: no image/mask pairs found (crackseg data {data} lists what it sees)")
    with atomic_path(out, folder=True) as work:
        manifest = pack_into(work, data, pairs, budget, codec, reserve, min_quality, wheels, workers, say)
    say(
        f"packed {len(pairs)} pairs ({codec} quality {manifest['quality']}) and {len(manifest['wheels'])} wheels "
        f"into {out}: {mib(folder_bytes(out))} of {mib(budget)}, {mib(reserve)} of it kept for resume states"
    )
    return manifest


def pack_into(work: Path, data: Path, pairs, budget, codec, reserve, min_quality, wheels, workers, say) -> dict:
    wheel_files = download_wheels(work / "wheels") if wheels else []
    wheel_bytes = sum(p.stat().st_size for p in wheel_files)
    say(f"{len(pairs)} pairs; {len(wheel_files)} wheels, {mib(wheel_bytes)}")
    masks = [encode_mask(data / p.mask) for p in pairs]
    names = [packed_name(p.image, "image", codec) for p in pairs] + [packed_name(p.mask, "mask", codec) for p in pairs]
    manifest = make_manifest(data, pairs, codec, min_quality, budget, reserve, wheel_files)
    fixed = wheel_bytes + sum(map(len, masks)) + zip_overhead(names) + len(json.dumps(manifest)) + 4096
    photo_budget = budget - reserve - fixed
    if photo_budget <= 0:
        raise PackError(
            f"--budget-mib: the masks, wheels and manifest ({mib(fixed)}) and the resume reserve ({mib(reserve)}) "
            f"leave nothing of {mib(budget)} for the photos; raise --budget-mib or lower --reserve-mib"
        )
    photos = [data / p.image for p in pairs]
    quality = choose_quality(photos, codec, photo_budget, min_quality, workers)
    while True:  # the estimate came from a sample: check on all, a step lower where they do not fit
        say(f"encoding {len(photos)} photos as {codec} quality {quality}")
        encoded = encode_photos(photos, codec, quality, workers)
        if sum(map(len, encoded)) <= photo_budget:
            break
        if quality <= min_quality:
            raise PackError(
                f"--budget-mib: the photos need {mib(sum(map(len, encoded)))} at {codec} quality {quality}, over "
                f"the {mib(photo_budget)} left for them; raise --budget-mib or lower --reserve-mib"
            )
        quality = max(min_quality, quality - 3)
    write_zip(work / "data.zip", names, encoded + masks)
    manifest["quality"] = quality
    manifest["bytes"] = {"photos": sum(map(len, encoded)), "masks": sum(map(len, masks)), "wheels": wheel_bytes}
    write_json(work / "manifest.json", manifest)
    return manifest


def make_manifest(data, pairs, codec, quality, budget, reserve, wheel_files) -> dict:
    sources: dict[str, int] = {}
    for p in pairs:
        sources[p.source] = sources.get(p.source, 0) + 1
    return {
        "format": 1,
        "made": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": str(data),
        "codec": codec,
        "quality": quality,
        "budget": budget,
        "reserve": reserve,
        "sources": sources,
        "wheels": [p.name for p in wheel_files],
        "split": {"val_fraction": 0.1, "split_seed": 0, "val": validation_images(data)},
        "pairs": [[p.image, p.mask] for p in pairs],
    }


def write_zip(path: Path, names: list[str], contents: list[bytes]) -> None:
    from crackseg.io.atomic import atomic_path

    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, content in zip(names, contents):
            archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), content)


def write_json(path: Path, value: dict) -> None:
    from crackseg.io.atomic import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(value, separators=(",", ":")).encode())


def read_manifest(pack_dir: Path) -> dict:
    path = pack_dir / "manifest.json"
    if not path.is_file():
        raise PackError(f"{pack_dir}: no manifest.json; make the pack with tools/gpu_pack.py --data DATA --out DIR")
    return json.loads(path.read_text())


# --- unpacking (on the device: Pillow and numpy only, no crackseg) ---------------------------------------------


def decode(content: bytes) -> Image.Image:
    """A packed photo; through OpenCV where this Pillow has no AVIF decoder."""
    try:
        return Image.open(io.BytesIO(content)).convert("RGB")
    except OSError:
        import cv2

        bgr = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            message = "neither Pillow nor OpenCV decodes the packed photos here; pack with --codec jpeg"
            raise PackError(message) from None
        return Image.fromarray(bgr[:, :, ::-1])


def restore(content: bytes, original: Path, kind: str) -> None:
    """Write a packed file back under its original name, in the format its suffix names."""
    original.parent.mkdir(parents=True, exist_ok=True)
    suffix = original.suffix.lower()
    if kind == "mask" and suffix == ".png":
        original.write_bytes(content)
        return
    img = decode(content) if kind == "image" else Image.open(io.BytesIO(content)).convert("L")
    if suffix in (".jpg", ".jpeg"):
        img.save(original, "JPEG", **(JPEG_REWRITE if kind == "image" else {"quality": 100, "subsampling": 0}))
    else:
        img.save(original)


def _unpack_job(job: tuple[Path, list[tuple[str, str, str]], Path]) -> int:
    archive_path, items, dest = job
    with zipfile.ZipFile(archive_path) as archive:
        for member, original, kind in items:
            restore(archive.read(member), dest / original, kind)
    return len(items)


def unpack(pack_dir: Path, dest: Path, workers: int = 1) -> dict:
    """Restore the pairs of `pack_dir` under `dest` with their original paths; the manifest."""
    manifest = read_manifest(pack_dir)
    codec = manifest["codec"]
    items = [(packed_name(image, "image", codec), image, "image") for image, _ in manifest["pairs"]]
    items += [(packed_name(mask, "mask", codec), mask, "mask") for _, mask in manifest["pairs"]]
    workers = max(1, workers)
    chunks = [(pack_dir / "data.zip", items[i::workers], dest) for i in range(workers)]
    if workers == 1:
        list(map(_unpack_job, chunks))
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_unpack_job, chunks))
    return manifest


def check_split(manifest: dict, data: Path) -> None:
    """The unpacked data must give crackseg the validation split the original gave."""
    split = manifest["split"]
    if validation_images(data, split["val_fraction"], split["split_seed"]) != split["val"]:
        raise PackError(f"{data}: the validation split differs from the original's; pack the data again")


# --- after a call ---------------------------------------------------------------------------------------------

RESUME_FILES = ("last.pt", "history.csv", "run.json")


def take_back(files_at: Path, pack_dir: Path, keep: Path) -> list[Path]:
    """Keep every file a call brought back in `keep`, and put each run's resume state (its last.pt, history and
    run.json from RUN.tar) in `pack_dir/resume/RUN.tar`, so the next call continues the runs; the states written."""
    read_manifest(pack_dir)
    tars = sorted(files_at.glob("*.tar"))
    if not tars:
        raise PackError(f"{files_at}: no run archives (RUN.tar) here; pass the folder the call's files came to")
    keep.mkdir(parents=True, exist_ok=True)
    for path in files_at.iterdir():
        if path.is_file():
            shutil.copyfile(path, keep / path.name)
    written = []
    for tar_path in tars:
        target = pack_dir / "resume" / tar_path.name
        if slim_copy(tar_path, target, RESUME_FILES):
            written.append(target)
    return written


def slim_copy(source: Path, target: Path, names: tuple[str, ...]) -> bool:
    """Copy only `names` of the tar `source` to `target` (atomically); False when it holds no last.pt."""
    from crackseg.io.atomic import atomic_path

    with tarfile.open(source) as archive:
        members = [m for m in archive.getmembers() if m.isfile() and m.name in names]
        if not any(m.name == "last.pt" for m in members):
            return False
        with atomic_path(target) as tmp, tarfile.open(tmp, "w") as slim:
            for member in members:
                slim.addfile(member, archive.extractfile(member))
    return True


def check_travel(pack_dir: Path) -> tuple[int, int]:
    """(bytes that will travel: the checkout and the pack, the limit); PackError when over it."""
    repo = checkout_of(pack_dir)
    if repo is None:
        raise PackError(f"--out {pack_dir}: not inside a git checkout; the pack must be carried from the checkout")
    check_ignored(repo, pack_dir)
    total = travelling_bytes(repo) + folder_bytes(pack_dir)
    if total > TRANSFER_LIMIT:
        raise PackError(
            f"{pack_dir}: the checkout and the pack come to {mib(total)}, over the {mib(TRANSFER_LIMIT)} the device "
            "tool sends; remove resume/ states you no longer need, or pack with a lower --budget-mib"
        )
    return total, TRANSFER_LIMIT


# --- command line ---------------------------------------------------------------------------------------------


def default_budget(out: Path) -> int:
    repo = checkout_of(out)
    if repo is None:
        raise PackError(f"--out {out}: not inside a git checkout; give --budget-mib")
    check_ignored(repo, out)
    return TRANSFER_LIMIT - travelling_bytes(repo) - MARGIN


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="the data root to pack (one folder, as for crackseg train)")
    parser.add_argument("--out", type=Path, required=True, help="the pack folder, inside the checkout, ignored")
    parser.add_argument("--budget-mib", type=float, help="the pack's size limit (default: 64 MiB less the checkout)")
    parser.add_argument("--reserve-mib", type=float, default=DEFAULT_RESERVE_MIB, help="kept for resume states")
    parser.add_argument("--codec", choices=sorted(CODECS), help="default: avif where Pillow writes it, else webp")
    parser.add_argument("--min-quality", type=int, default=20, help="refuse rather than go below this quality")
    parser.add_argument("--no-wheels", action="store_true", help="leave the wheels out (tests, or a second pack)")
    parser.add_argument("--workers", type=int, default=1, help="encoding processes")
    parser.add_argument("--check", action="store_true", help="only say what will travel, against the limit")
    parser.add_argument("--take-back", type=Path, metavar="FILES_AT", help="keep what a call brought back")
    parser.add_argument("--keep", type=Path, help="where --take-back keeps it (default: runs/gpu-<UTC time>)")
    args = parser.parse_args(argv)
    from crackseg.errors import CracksegError

    try:
        if args.take_back:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            keep = args.keep or Path("runs") / f"gpu-{stamp}"
            for state in take_back(args.take_back, args.out, keep):
                print(f"resume state: {state} ({mib(state.stat().st_size)})")
            print(f"kept the call's files in {keep}")
            args.check = checkout_of(args.out) is not None  # a pack outside a checkout is not what travels
            if not args.check:
                return 0
        if args.check:
            total, limit = check_travel(args.out)
            print(f"the checkout and {args.out} come to {mib(total)} of the {mib(limit)} the device tool sends")
            return 0
        if args.data is None:
            parser.error("--data is required to make a pack")
        budget = int(args.budget_mib * MIB) if args.budget_mib else default_budget(args.out)
        pack(args.data, args.out, budget, codec=args.codec, reserve=int(args.reserve_mib * MIB),
             min_quality=args.min_quality, wheels=not args.no_wheels, workers=args.workers)  # fmt: skip
    except (PackError, CracksegError) as err:  # the data's own problems come from crackseg's reader
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.exit(main())
