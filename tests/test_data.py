from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_dilation

from crackseg.data import (
    CrackDataset,
    DataError,
    find_all_pairs,
    find_pairs,
    pairs_per_source,
    photo_group,
    signed_distance,
    split_pairs,
    train_transform,
)
from crackseg.errors import InputError
from crackseg.io.images import ImageReadError, read_image, read_mask, write_image
from crackseg.synthetic import DISTRACTOR_KINDS, add_distractor, synthetic_crack, write_synthetic_dataset

from .conftest import SHARED_DATA


def _write_pair(image_path: Path, mask_path: Path, size=(40, 56), seed=0, mask_mode="L"):
    image, mask = synthetic_crack(size, seed=seed)
    write_image(image_path, image)
    mask_img = Image.fromarray(mask.astype(np.uint8) * 255).convert(mask_mode)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    mask_img.save(mask_path)
    return mask


def test_khanhha_layout_with_jpg_masks(tmp_path):
    """train/test splits with JPG masks: JPEG grey values are binarised back to the drawn mask."""
    for split in ("train", "test"):
        for i, name in enumerate(["CFD_001", "CFD_002", "noncrack_003"]):
            mask = _write_pair(
                tmp_path / split / "images" / f"{name}.jpg",
                tmp_path / split / "masks" / f"{name}.jpg",
                seed=i,
            )
    pairs = find_pairs(tmp_path)
    assert len(pairs) == 6
    assert {p.source for p in pairs} == {"CFD", "noncrack"}
    assert len(find_pairs(tmp_path, exclude_splits=("test",))) == 3
    loaded = read_mask(pairs[-1].mask)
    assert loaded.dtype == bool
    # JPEG blurs edges: nearly every pixel still agrees with the drawn mask
    assert (loaded == mask).mean() > 0.97


@pytest.mark.parametrize("mode", ["L", "1", "P"])
def test_png_mask_modes(tmp_path, mode):
    mask = _write_pair(tmp_path / "train" / "images" / "a.jpg", tmp_path / "train" / "masks" / "a.png", mask_mode=mode)
    (pair,) = find_pairs(tmp_path)
    assert np.array_equal(read_mask(pair.mask), mask)


def test_zero_one_png_mask(tmp_path):
    image, mask = synthetic_crack((32, 48), seed=1)
    write_image(tmp_path / "images" / "x.png", image)
    write_image(tmp_path / "labels" / "x.png", mask.astype(np.uint8))  # values 0/1
    (pair,) = find_pairs(tmp_path)
    assert np.array_equal(read_mask(pair.mask), mask)


@pytest.mark.parametrize("suffix", ["_mask", "_label", "_gt"])
def test_flat_folder_with_suffixed_masks(tmp_path, suffix):
    _write_pair(tmp_path / "x.jpg", tmp_path / f"x{suffix}.png")
    _write_pair(tmp_path / "y.jpg", tmp_path / f"y{suffix}.png", seed=2)
    pairs = find_pairs(tmp_path)
    assert [p.name for p in pairs] == ["x", "y"]
    assert pairs[0].mask.name == f"x{suffix}.png"


def test_sibling_gt_folder_and_different_extensions(tmp_path):
    _write_pair(tmp_path / "imgs" / "a.jpeg", tmp_path / "gt" / "a.bmp")
    (pair,) = find_pairs(tmp_path)
    assert pair.image.suffix == ".jpeg" and pair.mask.suffix == ".bmp"


def test_unpaired_files_are_listed(tmp_path):
    _write_pair(tmp_path / "train" / "images" / "a.jpg", tmp_path / "train" / "masks" / "a.png")
    write_image(tmp_path / "train" / "images" / "lonely.jpg", np.zeros((8, 8, 3), np.uint8))
    write_image(tmp_path / "train" / "masks" / "orphan.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="lonely.jpg: image has no mask.*orphan.png: mask has no image"):
        find_pairs(tmp_path)
    assert [p.name for p in find_pairs(tmp_path, skip_unpaired=True)] == ["a"]


def test_size_mismatch_names_the_file(tmp_path):
    write_image(tmp_path / "train" / "images" / "a.jpg", np.zeros((20, 30, 3), np.uint8))
    write_image(tmp_path / "train" / "masks" / "a.png", np.zeros((20, 31), np.uint8))
    with pytest.raises(DataError, match=r"a\.png: mask is 31×20 but its image a\.jpg is 30×20"):
        find_pairs(tmp_path)


def test_empty_folder_and_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no image/mask pairs"):
        find_pairs(tmp_path)
    with pytest.raises(DataError, match="not found"):
        find_pairs(tmp_path / "nope")


def test_non_image_files_are_ignored_with_a_warning(tmp_path, caplog):
    _write_pair(tmp_path / "train" / "images" / "a.jpg", tmp_path / "train" / "masks" / "a.png")
    (tmp_path / "train" / "images" / "notes.txt").write_text("hello")
    assert len(find_pairs(tmp_path)) == 1
    assert "notes.txt: not an image file" in caplog.text


def test_unreadable_and_truncated_images(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="bad.jpg: not an image"):
        read_image(bad)
    good = tmp_path / "good.jpg"
    write_image(good, synthetic_crack((64, 64))[0])
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ImageReadError, match="cut.jpg: unreadable or truncated"):
        read_image(truncated)


def test_non_binary_mask_is_an_error(tmp_path):
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    write_image(tmp_path / "m.png", ramp)
    with pytest.raises(InputError, match="m.png: not a binary mask"):
        read_mask(tmp_path / "m.png")


def test_grayscale_rgba_16bit_and_exif(tmp_path):
    Image.fromarray(np.full((10, 12), 7, np.uint8)).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").shape == (10, 12, 3)
    Image.fromarray(np.full((10, 12, 4), 9, np.uint8)).save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [9, 9, 9]
    Image.fromarray(np.full((10, 12), 65535, np.uint16)).save(tmp_path / "d.png")
    assert read_image(tmp_path / "d.png").max() == 255
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotated 90°: the upright photo is 20 high, 10 wide
    img.save(tmp_path / "r.jpg", exif=exif)
    assert read_image(tmp_path / "r.jpg").shape == (20, 10, 3)


def test_photo_groups():
    assert photo_group("20160222_165256_641_721") == "20160222_165256"
    assert photo_group("11116-3") == "11116"
    assert photo_group("DSC00552b") == "DSC00552"
    assert photo_group("DJI0090") == "DJI0090"


def _fake_pairs(tmp_path, counts: dict[str, int], crops_per_photo=3):
    from crackseg.data import Pair

    pairs = []
    for source, n in counts.items():
        for i in range(n):
            stem = f"{source}{i // crops_per_photo:03d}_{i}_0"
            pairs.append(Pair(tmp_path / f"{stem}.jpg", tmp_path / f"{stem}.png", source, photo_group(stem)))
    return pairs


def test_split_is_deterministic_stratified_and_grouped(tmp_path):
    pairs = _fake_pairs(tmp_path, {"big": 300, "small": 12})
    train, val = split_pairs(pairs, 0.1, seed=0)
    assert split_pairs(pairs, 0.1, seed=0) == (train, val)
    assert split_pairs(pairs, 0.1, seed=1)[1] != val
    assert len(train) + len(val) == len(pairs)
    assert {p.source for p in val} == {"big", "small"}  # the small source is represented
    assert 25 <= sum(p.source == "big" for p in val) <= 36
    assert not {p.group for p in train} & {p.group for p in val}  # crops of one photo stay together


def test_augmentation_keeps_image_and_mask_aligned(synthetic_root):
    pairs = find_pairs(synthetic_root)
    transform = train_transform(64)
    for seed in range(5):
        image, mask = synthetic_crack((96, 128), seed=seed, color=False)
        transform.set_random_seed(seed)
        out = transform(image=image, mask=mask.astype(np.uint8))
        assert out["image"].shape == (64, 64, 3) and out["mask"].shape == (64, 64)
        crack = out["mask"].astype(bool)
        if crack.sum() > 20 and (~crack).sum() > 20:
            # cracks are drawn darker than the surface: that must still hold where the mask says crack
            gray = out["image"].mean(axis=2)
            assert gray[crack].mean() < gray[~crack].mean() - 15
    dataset = CrackDataset(pairs, transform)
    item = dataset[0]
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
    assert item["sdf"].shape == (1, 64, 64) and item["image"].dtype == torch.float32


def test_distractors_change_the_photo_but_not_the_mask():
    image, mask = synthetic_crack((128, 128), seed=1, color=False)
    transform = train_transform(128, strong=False, distractor_prob=1.0)
    outputs = []
    for _ in range(2):
        transform.set_random_seed(7)
        outputs.append(transform(image=image, mask=mask.astype(np.uint8)))
    assert np.array_equal(outputs[0]["image"], outputs[1]["image"])  # seeded: the same crop twice
    plain = train_transform(128, strong=False)
    plain.set_random_seed(7)
    reference = plain(image=image, mask=mask.astype(np.uint8))
    assert np.array_equal(outputs[0]["mask"], reference["mask"])  # what is not a crack never enters the mask
    assert np.abs(outputs[0]["image"].astype(int) - reference["image"]).max() > 30


@pytest.mark.parametrize("kind", DISTRACTOR_KINDS)
def test_a_crack_under_a_distractor_stays_darker_than_its_surroundings(kind):
    rng = np.random.default_rng(0)
    changed = 0
    for seed in range(10):
        image, mask = synthetic_crack((128, 128), seed=seed, color=False)
        out = add_distractor(image, rng, (kind,)).mean(axis=2)
        ring = binary_dilation(mask, iterations=3) & ~mask  # the surface right beside the crack
        assert out.shape == mask.shape and out[mask].mean() < out[ring].mean()
        changed += np.abs(out - image.mean(axis=2)).max() > 20
    assert changed >= 8


def test_padded_border_clears_mask_and_teacher_map_under_it():
    image, mask = synthetic_crack((128, 128), seed=1, color=False)
    soft = (mask * 200).astype(np.uint8)
    transform = train_transform(128, strong=False, distractor_prob=1.0, distractors="all")
    transform.add_targets({"soft": "mask"})
    padded = 0
    for seed in range(40):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=mask.astype(np.uint8), soft=soft)
        dark = (out["image"] < 12).all(axis=2)
        rows, cols = dark.all(axis=1), dark.all(axis=0)
        if rows[0] or rows[-1] or cols[0] or cols[-1]:  # a strip along one side
            padded += 1
            strip = np.zeros_like(dark)
            strip[rows, :] = True
            strip[:, cols] = True
            assert not out["mask"][strip].any() and not out["soft"][strip].any()
    assert padded >= 3


def test_validation_items_keep_full_size(synthetic_root):
    item = CrackDataset(find_pairs(synthetic_root))[0]
    assert item["image"].shape == (3, 96, 128)
    assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}


def test_signed_distance_convention():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 8:12] = True
    sdf = signed_distance(mask)
    assert sdf[10, 10] < 0 and sdf[0, 0] > 0
    assert sdf.min() >= -1 and sdf.max() <= 1 and sdf.max() == pytest.approx(1)
    assert sdf[5, 9] == 0  # the inner boundary
    assert not signed_distance(np.zeros((8, 8), bool)).any()


def test_synthetic_dataset_with_empty_masks(tmp_path):
    root = write_synthetic_dataset(tmp_path, 4, size=(32, 32), n_empty=2)
    masks = [read_mask(p.mask) for p in find_pairs(root)]
    assert [m.any() for m in masks] == [True, True, False, False]


SHARED_SETS = ["aiglern", "cfd", "crack500", "deepcrack", "gaps384", "marble", "shadowcrack", "uav-crack", "uav75"]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not on this machine")
def test_reads_all_shared_data():
    sets = sorted(folder.name for folder in SHARED_DATA.iterdir() if folder.is_dir())
    assert set(SHARED_SETS) <= set(sets)  # the nine sets the shipped models were trained on (its README)
    pairs = find_all_pairs([SHARED_DATA], skip_unpaired=False)  # an image without its mask, or the reverse, raises
    # every set found, named after its folder, with every one of its images; no file in two pairs
    per_source = Counter(p.source for p in pairs)
    assert sorted(per_source) == sets
    for name in sets:
        images = [f for f in (SHARED_DATA / name).rglob("*") if f.is_file() and f.parent.name == "images"]
        assert per_source[name] == len(images), name
    assert len({p.image for p in pairs}) == len({p.mask for p in pairs}) == len(pairs)
    assert all(p.image.stem == p.mask.stem and p.mask.parent.name == "masks" for p in pairs)
    # a sample of each set, read in full: each image and its mask have one size, and the masks mark cracks
    for name in sets:
        sample = [p for p in pairs if p.source == name][:: per_source[name] // 3][:3]
        assert all(read_image(p.image).shape[:2] == read_mask(p.mask).shape for p in sample), name
        assert pairs_per_source(sample)[name]["crack_fraction"] > 0, name
    # the validation split takes photos, not crops: every crop of a photo on one side, every set in both
    train, val = split_pairs(pairs, 0.1, seed=0)
    assert len(train) + len(val) == len(pairs) and not {p.image for p in train} & {p.image for p in val}
    assert not {(p.source, p.group) for p in train} & {(p.source, p.group) for p in val}
    assert {p.source for p in train} == {p.source for p in val} == set(sets)
    # CRACK500's crops are grouped by their photo (many crops each), not one group per crop
    assert len({p.group for p in pairs if p.source == "crack500"}) < per_source["crack500"] / 3


def test_scale_range_sets_the_random_scale_factors():
    scale = train_transform(64, scale_range=(0.4, 1.3)).transforms[0]
    assert scale.scale_limit == pytest.approx((-0.6, 0.3))  # albumentations counts from 1
