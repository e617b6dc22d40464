"""Finding image/mask pairs in the common crack-dataset layouts, splitting them, and the training Dataset.

Layouts, detected per folder while walking a root:
  1. ``ROOT/<split>/images`` + ``ROOT/<split>/masks`` (Khanhha's Kaggle copy with JPG masks, ``../shared/data``),
     also nested one level deeper (``ROOT/<set>/<split>/images``);
  2. images in a folder and masks in a sibling ``masks`` / ``labels`` / ``gt`` folder, paired by file stem;
  3. masks beside the images with a suffix: ``x.jpg`` + ``x_mask.png`` / ``x_label.png`` / ``x_gt.png``.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import albumentations as A

from crackseg.errors import CracksegError
from crackseg.io.images import IMAGENET_MEAN, IMAGENET_STD, is_image_file, normalize_image, read_image, read_mask

log = logging.getLogger(__name__)

MASK_DIR_NAMES = ("masks", "mask", "labels", "label", "gt", "groundtruth", "annotations")
MASK_SUFFIXES = ("_mask", "_label", "_gt")
SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


class DataError(CracksegError):
    """A data folder or file cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path
    source: str  # sub-dataset, used to stratify the split
    group: str  # source photo, so crops of one photo stay on one side of the split

    @property
    def name(self) -> str:
        return self.image.stem


def photo_group(stem: str) -> str:
    """The source photo of a crop, from the naming conventions of CRACK500, DeepCrack and UAV75."""
    stem = re.sub(r"_\d+_\d+$", "", stem)  # CRACK500: <photo>_<x>_<y>
    stem = re.sub(r"-\d+$", "", stem)  # DeepCrack: <photo>-<n>
    return re.sub(r"(?<=\d)[a-z]$", "", stem)  # UAV75: DSC00552b


def _source_name(root: Path, image_dir: Path, stem: str) -> str:
    parts = [p for p in image_dir.relative_to(root).parts if p.lower() not in SPLIT_NAMES and p != "images"]
    if parts:
        return parts[0]
    prefix = re.match(r"^([A-Za-z]+)[_-]", stem)
    if prefix:
        return prefix.group(1)
    return root.parent.name if root.name.lower() in SPLIT_NAMES else root.name


def _mask_dirs(folder: Path) -> list[Path]:
    return [folder.parent / name for name in MASK_DIR_NAMES if (folder.parent / name).is_dir()]


def _index_by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and is_image_file(p)}


def _pairs_in_folder(root: Path, folder: Path, unpaired: list[str]) -> list[Pair]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = {p.stem: p for p in files if is_image_file(p)}
    beside = {}
    for stem in list(images):
        for suffix in MASK_SUFFIXES:
            if stem.endswith(suffix) and stem[: -len(suffix)] in images:
                beside[stem[: -len(suffix)]] = images.pop(stem)
    mask_dirs = _mask_dirs(folder) if folder.name.lower() not in MASK_DIR_NAMES else []
    if not beside and not mask_dirs:
        return []
    for p in files:  # only in folders of pairs: a README beside the dataset folders is no surprise
        if not is_image_file(p):
            log.warning("ignoring %s: not an image file", p)
    in_mask_dirs = {}
    for mask_dir in reversed(mask_dirs):
        in_mask_dirs.update(_index_by_stem(mask_dir))
    pairs = []
    for stem, image in images.items():
        mask = beside.get(stem) or in_mask_dirs.pop(stem, None)
        for suffix in MASK_SUFFIXES:
            mask = mask or in_mask_dirs.pop(stem + suffix, None)
        if mask is None:
            unpaired.append(f"{image}: image has no mask")
            continue
        pairs.append(Pair(image, mask, _source_name(root, folder, stem), photo_group(stem)))
    unpaired.extend(f"{m}: mask has no image" for m in in_mask_dirs.values())
    return pairs


def _check_size(pair: Pair) -> None:
    try:
        with Image.open(pair.image) as img, Image.open(pair.mask) as mask:
            image_size, mask_size = img.size, mask.size
    except OSError as err:
        raise DataError(f"{pair.image}: unreadable image or mask ({err})") from None
    if image_size != mask_size:
        raise DataError(
            f"{pair.mask}: mask is {mask_size[0]}×{mask_size[1]} but its image {pair.image.name} is "
            f"{image_size[0]}×{image_size[1]}; fix or remove the pair"
        )


def find_pairs(root: str | Path, skip_unpaired: bool = False, exclude_splits: tuple[str, ...] = ()) -> list[Pair]:
    """All image/mask pairs under `root`, sorted by path; sizes are checked from the file headers."""
    root = Path(root)
    if root.is_file():
        raise DataError(f"{root}: is a file; pass the folder that holds the images and masks")
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    folders = [root] + sorted(p for p in root.rglob("*") if p.is_dir())
    excluded = {s.lower() for s in exclude_splits}
    folders = [f for f in folders if not excluded & {p.lower() for p in f.relative_to(root).parts}]
    unpaired: list[str] = []
    pairs = [pair for folder in folders for pair in _pairs_in_folder(root, folder, unpaired)]
    if unpaired:
        listing = "; ".join(unpaired[:5]) + (f"; ... ({len(unpaired)} in all)" if len(unpaired) > 5 else "")
        if not skip_unpaired:
            raise DataError(f"unpaired files under {root}: {listing} (pass --skip-unpaired to go on without them)")
        log.warning("skipping %d unpaired files: %s", len(unpaired), listing)
    if not pairs:
        raise DataError(
            f"{root}: no image/mask pairs found; expected <split>/images + <split>/masks, "
            "images + a sibling masks/labels/gt folder, or x.jpg beside x_mask.png"
        )
    for pair in pairs:
        _check_size(pair)
    return sorted(pairs, key=lambda p: str(p.image))


def find_all_pairs(roots, skip_unpaired: bool = False, exclude_splits: tuple[str, ...] = ()) -> list[Pair]:
    return [p for root in roots for p in find_pairs(root, skip_unpaired, exclude_splits)]


def add_split_arguments(parser) -> None:
    """--val-fraction and --split-seed, the same for `train`, `data` and `evaluate --split-val`.

    The split has its own seed, apart from the training --seed: a fine-tune with a new --seed must validate on the
    photos the first run never trained on.
    """
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of each source's photos held out")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the validation split")


def split_pairs(pairs: list[Pair], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Deterministic train/val split, stratified by source and grouped by source photo.

    Each source gives about `val_fraction` of its pairs (at least one photo when it has two or more), so small
    sources are represented in validation; all crops of a photo land on the same side.
    """
    by_source: dict[str, dict[str, list[Pair]]] = defaultdict(lambda: defaultdict(list))
    for pair in pairs:
        by_source[pair.source][pair.group].append(pair)
    train, val = [], []
    for source in sorted(by_source):
        groups = by_source[source]
        names = sorted(groups)
        # A per-source seed keeps one source's split unchanged when another source is added.
        rng = np.random.default_rng([seed, zlib.crc32(source.encode())])
        rng.shuffle(names)
        target = val_fraction * sum(len(g) for g in groups.values())
        taken = 0
        for i, name in enumerate(names):
            wants_more = taken < target and (taken == 0 or taken + len(groups[name]) / 2 <= target)
            if wants_more and i < len(names) - 1 and val_fraction > 0:
                val.extend(groups[name])
                taken += len(groups[name])
            else:
                train.extend(groups[name])
    return sorted(train, key=lambda p: str(p.image)), sorted(val, key=lambda p: str(p.image))


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Normalised signed distance map of a crack mask, for the boundary loss.

    Negative inside the crack, positive outside, zero on the crack's boundary; each side is min-max scaled so
    values lie in [-1, 1]. A crack-free mask gives all zeros (no boundary to pull towards).
    """
    from scipy.ndimage import distance_transform_edt
    from skimage.segmentation import find_boundaries

    mask = mask.astype(bool)
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    outside = distance_transform_edt(~mask)
    inside = distance_transform_edt(mask)
    sdf = np.zeros(mask.shape, np.float64)
    if outside.max() > 0:
        sdf += (outside - outside.min()) / (outside.max() - outside.min())
    if inside.max() > inside.min():
        sdf -= (inside - inside.min()) / (inside.max() - inside.min())
    sdf[find_boundaries(mask, mode="inner")] = 0
    return sdf.astype(np.float32)


def train_transform(
    size: int,
    strong: bool = True,
    distractor_prob: float = 0.0,
    scale_range: tuple[float, float] = (0.7, 1.3),
    distractors: str = "classic",
) -> A.Compose:
    """Random scale (a factor in `scale_range`, for 70 % of crops) and crop to `size`, flips, 90° turns, and
    photometric changes seen on real surfaces.

    With `distractor_prob` > 0, that share of crops also gets 1–2 generated non-cracks before the photometric
    changes, so they are shadowed, blurred and compressed like the rest of the photo: the classic lines, markings
    and stains, or with `distractors="all"` also `synthetic.DISTRACTOR_KINDS`' hard negatives and, on a quarter of
    that share, a padded black border that also clears the mask under it.
    """
    import albumentations as A  # here, not at the top: only training needs it, and it slows every start

    ops = [
        A.RandomScale(scale_limit=(scale_range[0] - 1, scale_range[1] - 1), p=0.7),
        A.PadIfNeeded(size, size, border_mode=4),  # cv2.BORDER_REFLECT_101
        A.RandomCrop(size, size),
        A.HorizontalFlip(),
        A.VerticalFlip(),
        A.RandomRotate90(),
    ]
    if distractor_prob > 0:
        ops.append(_distractor_transform(A, distractor_prob, distractors))
        if distractors == "all":
            ops.append(_padding_transform(A, distractor_prob / 4))
    if strong:
        ops += [
            A.RandomBrightnessContrast(0.25, 0.25, p=0.7),
            A.RandomGamma(p=0.3),
            A.HueSaturationValue(10, 20, 10, p=0.3),
            A.RandomShadow(p=0.2),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=0.2),
            A.GaussNoise(std_range=(0.02, 0.06), p=0.2),
            A.ImageCompression(quality_range=(40, 95), p=0.3),
        ]
    return A.Compose(ops)


def _distractor_transform(A, p: float, distractors: str):
    """An albumentations transform around `synthetic.add_distractor`, drawing from the pipeline's seeded generator."""
    from crackseg.synthetic import CLASSIC_KINDS, DISTRACTOR_KINDS, add_distractor

    kinds = DISTRACTOR_KINDS if distractors == "all" else CLASSIC_KINDS

    class Distractors(A.ImageOnlyTransform):
        def apply(self, img, **params):
            for _ in range(int(self.random_generator.integers(1, 3))):
                img = add_distractor(img, self.random_generator, kinds)
            return img

    return Distractors(p=p)


def _padding_transform(A, p: float):
    """A padded border (`synthetic.pad_border`) on image, mask and teacher map alike: no crack under the padding."""
    from crackseg.synthetic import pad_border

    class PaddedBorder(A.DualTransform):
        def get_params_dependent_on_data(self, params, data):
            height, width = params["shape"][:2]
            side = int(self.random_generator.integers(0, 4))
            extent = height if side in (0, 2) else width
            strip = int(self.random_generator.uniform(0.05, 0.4) * extent)
            return {"side": side, "strip": max(strip, 1), "fill": int(self.random_generator.integers(0, 12))}

        def apply(self, img, side=0, strip=1, fill=0, **params):
            return pad_border(img, side, strip, fill)

        def apply_to_mask(self, mask, side=0, strip=1, fill=0, **params):
            return pad_border(mask, side, strip, 0)

    return PaddedBorder(p=p)


class CrackDataset:
    """Image/mask pairs as normalised tensors; reads lazily, one pair per item (a map-style dataset for
    torch's DataLoader; not derived from torch's Dataset so that commands which only find pairs never import torch).

    Items are dicts with ``image`` (3×H×W float), ``mask`` (1×H×W float 0/1), ``sdf`` (1×H×W, for the boundary
    loss), ``name`` and ``source``. Without a transform, images keep their full size (validation, evaluation).
    """

    def __init__(
        self, pairs: list[Pair], transform=None, mean=IMAGENET_MEAN, std=IMAGENET_STD, extra=None, soft_dir=None
    ):
        if not pairs:
            raise DataError("empty dataset: no image/mask pairs to read")
        self.pairs, self.transform, self.mean, self.std = pairs, transform, mean, std
        self.extra = extra  # optional callable(image) -> image, e.g. the paper's degradation
        # A teacher's probability maps (soft targets for distillation), transformed with the mask.
        self.soft_dir = Path(soft_dir) if soft_dir else None
        if self.soft_dir is not None and transform is not None:
            transform.add_targets({"soft": "mask"})

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[index]
        image, mask = read_image(pair.image), read_mask(pair.mask)
        if image.shape[:2] != mask.shape:
            raise DataError(f"{pair.mask}: mask size {mask.shape} differs from image size {image.shape[:2]}")
        return image, mask

    def soft_target(self, pair: Pair, shape: tuple[int, int]) -> np.ndarray:
        path = soft_target_path(self.soft_dir, pair)
        try:
            with Image.open(path) as img:
                soft = np.asarray(img.convert("L"))
        except OSError:
            raise DataError(f"{path}: no teacher map for this photo; make them with `crackseg teach`") from None
        if soft.shape != shape:
            raise DataError(f"{path}: teacher map size {soft.shape} differs from its photo's {shape}; make it anew")
        return soft

    def __getitem__(self, index: int) -> dict:
        import torch

        image, mask = self.load(index)
        targets = {"image": image, "mask": mask.astype(np.uint8)}
        if self.soft_dir is not None:
            targets["soft"] = self.soft_target(self.pairs[index], mask.shape)
        if self.transform is not None:
            targets = self.transform(**targets)
        image, mask = targets["image"], targets["mask"].astype(bool)
        if self.extra is not None:
            image = self.extra(image)
        item = {
            "image": torch.from_numpy(normalize_image(image, self.mean, self.std)),
            "mask": torch.from_numpy(mask[None].astype(np.float32)),
            "sdf": torch.from_numpy(signed_distance(mask)[None]),
            "name": self.pairs[index].name,
            "source": self.pairs[index].source,
        }
        if self.soft_dir is not None:
            item["soft"] = torch.from_numpy(targets["soft"][None].astype(np.float32) / 255)
        return item


def soft_target_path(folder: Path, pair: Pair) -> Path:
    """Where a teacher's probability map of `pair` is kept (8-bit PNG, the photo's size)."""
    return Path(folder) / pair.source / f"{pair.name}.png"


def pairs_per_source(pairs: list[Pair]) -> dict[str, dict]:
    """Per-source pair counts and crack-pixel fractions (reads every mask)."""
    stats: dict[str, dict] = defaultdict(lambda: {"pairs": 0, "crack_pixels": 0, "pixels": 0})
    for pair in pairs:
        mask = read_mask(pair.mask)
        entry = stats[pair.source]
        entry["pairs"] += 1
        entry["crack_pixels"] += int(mask.sum())
        entry["pixels"] += mask.size
    return {
        s: {"pairs": v["pairs"], "crack_fraction": v["crack_pixels"] / max(v["pixels"], 1)}
        for s, v in sorted(stats.items())
    }


# --- sampling for training ------------------------------------------------------------------------------------
# Plain classes (torch's DataLoader takes any sized map-style dataset and any iterable sampler), importing torch
# only when used: `crackseg data` and the inference commands import this module and must not pay for torch.


class EpochSeededDataset:
    """Seeds the augmentation per (seed, epoch, index): the same crops whatever the worker count or resume."""

    def __init__(self, dataset: CrackDataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item_seed = zlib.crc32(f"{self.seed}/{self.epoch}/{index}".encode())
        if self.dataset.transform is not None:
            self.dataset.transform.set_random_seed(item_seed)
        if self.dataset.extra is not None:
            self.dataset.extra.seed = item_seed
        return self.dataset[index]


def source_weights(sources: list[str], power: float):
    """Per-pair sampling weights 1/count(source)^power (a float64 tensor), so small sources (concrete, formwork)
    are seen more often; None for power 0, the data's own mix."""
    from collections import Counter

    import torch

    if power == 0:
        return None
    if not 0 < power <= 1:
        raise DataError(f"source balance {power}: expected a power between 0 and 1, e.g. 0.5")
    counts = Counter(sources)
    return torch.tensor([counts[s] ** -power for s in sources], dtype=torch.float64)


class BatchBlockSampler:
    """A seeded shuffle per epoch in which process r of w takes the r-th part of every global batch.

    With one process it is a plain seeded shuffle; under DDP the w processes together see exactly the batches
    one process would see, so a distributed run follows the single-process run. With `weights`, an epoch is as
    many draws with replacement, in proportion to the weights, instead of a permutation.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, weights=None):
        self.size, self.batch_size, self.seed, self.rank, self.world = size, batch_size, seed, rank, world
        self.weights, self.epoch = weights, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        import torch

        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        usable = self.size - self.size % self.batch_size
        part = self.batch_size // self.world
        starts = range(0, usable, self.batch_size)
        return [i for s in starts for i in order[s + self.rank * part : s + (self.rank + 1) * part].tolist()]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return (self.size // self.batch_size) * (self.batch_size // self.world)
