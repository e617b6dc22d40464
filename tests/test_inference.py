import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from crackseg import inference
from crackseg.cli import main
from crackseg.errors import InputError, OutputExistsError
from crackseg.inference import CrackSegmenter, Prediction, blend_window, tile_starts
from crackseg.io.atomic import default_mode
from crackseg.io.images import normalize_image, read_mask, write_image
from crackseg.models.networks import ModelConfig, load_model
from crackseg.runs.plan import output_paths
from crackseg.runs.predict import predict_files
from crackseg.synthetic import synthetic_crack


class LocalNet(torch.nn.Module):
    """A small-receptive-field network (7×7), so tiled and whole-image predictions can be compared."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
            torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3, padding=1),
        )  # fmt: skip

    def forward(self, x):
        return self.body(x)


def test_tiled_prediction_is_seamless():
    image, _ = synthetic_crack((300, 410), seed=1, n_cracks=3)
    whole = CrackSegmenter(LocalNet(), ModelConfig(), tile=1024, precision="fp32").predict_prob(image)
    tiled_seg = CrackSegmenter(LocalNet(), ModelConfig(), tile=96, overlap=0.25, batch_size=3, precision="fp32")
    tiled = tiled_seg.predict_prob(image)
    assert tiled.shape == whole.shape == (300, 410)
    # away from tile borders the receptive field sees the same pixels; the blend must not add seams
    assert np.abs(tiled - whole)[4:-4, 4:-4].max() < 1e-4


@pytest.mark.parametrize("tile", [1024, 96], ids=["one-pass", "tiled"])
def test_flip_tta_averages_the_four_flipped_predictions(tile):
    image, _ = synthetic_crack((120, 150), seed=2, n_cracks=2)
    plain = CrackSegmenter(LocalNet(), ModelConfig(), tile=tile, precision="fp32")
    expected = np.mean(
        [
            np.flip(plain.predict_prob(np.ascontiguousarray(np.flip(image, axes))), axes)
            for axes in [(), (1,), (0,), (0, 1)]
        ],
        axis=0,
    )
    tta = CrackSegmenter(LocalNet(), ModelConfig(), tile=tile, precision="fp32", tta=True).predict_prob(image)
    assert tta.shape == image.shape[:2]
    assert np.abs(tta - expected).max() < 1e-5
    assert np.abs(tta - plain.predict_prob(image)).max() > 1e-3  # the network is not flip-invariant


@pytest.mark.parametrize("tile", [1024, 96], ids=["one-pass", "tiled"])
def test_turn_tta_gives_a_photo_turned_by_quarter_turns_the_same_probabilities_turned(tile):
    image, _ = synthetic_crack((120, 150), seed=2, n_cracks=2)
    turns = CrackSegmenter(LocalNet(), ModelConfig(), tile=tile, precision="fp32", tta_turns=True)
    flips = CrackSegmenter(LocalNet(), ModelConfig(), tile=tile, precision="fp32", tta=True)
    prob = turns.predict_prob(image)
    assert prob.shape == image.shape[:2]
    small = np.ascontiguousarray(image[:9, 20:33])  # smaller than the mirrored margin the turns move it in
    for k in (1, 2, 3):
        turned = turns.predict_prob(np.ascontiguousarray(np.rot90(image, k)))
        assert np.abs(np.rot90(turned, -k) - prob).max() < 1e-5
        turned = turns.predict_prob(np.ascontiguousarray(np.rot90(small, k)))
        assert np.abs(np.rot90(turned, -k) - turns.predict_prob(small)).max() < 1e-5
    # flips alone are not enough: the network is not symmetric under a quarter turn
    turned = flips.predict_prob(np.ascontiguousarray(np.rot90(image)))
    assert np.abs(np.rot90(turned, -1) - flips.predict_prob(image)).max() > 1e-3
    assert "turn and flip TTA" in turns.describe()


class LatticeNet(torch.nn.Module):
    """Each pixel's logit is its 32×32 cell's mean on the network's own lattice: a map that moves with where the
    photo falls on the lattice, as a stride-32 encoder's does, only more so."""

    def forward(self, x):
        height, width = x.shape[-2:]
        padded = torch.nn.functional.pad(x, (0, -width % 32, 0, -height % 32), mode="replicate")
        cells = torch.nn.functional.avg_pool2d(padded.mean(1, keepdim=True), 32)
        return 8 * torch.nn.functional.interpolate(cells, scale_factor=32, mode="nearest")[..., :height, :width]


def test_the_turns_meet_the_photo_at_four_lattice_positions_per_axis():
    assert {shift for _, shift in inference.TURNS_SHIFTED} == {
        (4, 12), (4, -12), (-4, 12), (-4, -12), (12, 4), (12, -4), (-12, 4), (-12, -4),
    }  # fmt: skip


@pytest.mark.parametrize("tile", [1024, 128], ids=["one-pass", "tiled"])
def test_shifted_turns_make_the_map_of_a_shifted_photo_agree_better(tile, monkeypatch):
    noise = np.random.default_rng(4).normal(0, 1, (200, 230, 3)).astype(np.float32)
    blobs = cv2.GaussianBlur(noise, (0, 0), 8)
    image = np.clip(128 + blobs / blobs.std() * 60, 0, 255).astype(np.uint8)  # light and dark patches ~30 px wide
    turns = CrackSegmenter(LatticeNet(), ModelConfig(), tile=tile, precision="fp32", tta_turns=True)

    def disagreement():
        moved = turns.predict_prob(image[7:, 19:])
        return np.abs(turns.predict_prob(image)[7:, 19:] - moved)[16:-16, 16:-16].mean()

    shifted = disagreement()
    monkeypatch.setattr(inference, "TURNS_SHIFTED", [(t, (0, 0)) for t, _ in inference.TURNS_SHIFTED])
    assert shifted < 0.8 * disagreement()  # measured: 0.67× in one pass, 0.26× tiled


@pytest.mark.parametrize("scales", [(1.0,), (1.0, 0.5)])
def test_a_region_gets_the_whole_calls_probabilities_from_the_tiles_over_it(scales):
    image, _ = synthetic_crack((300, 410), seed=3, n_cracks=3)
    turns = CrackSegmenter(LocalNet(), ModelConfig(), tile=96, precision="fp32", tta_turns=True, scales=scales)
    where = np.zeros(image.shape[:2], bool)
    where[120:150, 200:260] = True
    where[5, 5] = True
    seen = []
    part = turns.predict_prob(image, progress=lambda done, total: seen.append(total), where=where)
    seen_all = []
    whole = turns.predict_prob(image, progress=lambda done, total: seen_all.append(total))
    assert np.abs(part[where] - whole[where]).max() < 1e-6 and not part[~where].any()
    assert seen[0] < seen_all[0] / 2  # the tiles it ran


def test_normalize_image_is_the_per_channel_standardisation_for_every_byte():
    values = np.arange(256, dtype=np.uint8)
    image = np.stack([values, 255 - values, values // 2], -1)[:, None].repeat(4, 1)  # every byte in every channel
    mean, std = (0.2, 0.5, 0.7), (0.3, 0.1, 0.25)
    expected = ((image.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)
    got = normalize_image(image[::2, ::-1], mean, std)  # a strided view too, as tiles are
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, expected[:, ::2, ::-1])


def test_tile_grid_covers_the_image():
    for length in (96, 97, 500, 1000):
        starts = tile_starts(length, 96, 0.25)
        assert starts[0] == 0 and starts[-1] + 96 == max(length, 96)
        assert all(b - a <= 72 for a, b in zip(starts, starts[1:]))
    assert blend_window(8).min() > 0


def test_tiles_are_the_models_own_size_and_overlap_by_64_px_past_256():
    """Without --tile a photo is cut into the model's tile (its training size unless its config names one); without
    --overlap, tiles share a quarter of themselves, and 64 px on tiles over 256 px."""
    trained = CrackSegmenter(LocalNet(), ModelConfig(train_size=96), precision="fp32")
    assert (trained.tile, trained.overlap) == (96, 0.25)
    own = CrackSegmenter(LocalNet(), ModelConfig(train_size=256, tile=384), precision="fp32")
    assert own.tile == 384 and own.overlap * 384 == pytest.approx(64) and "overlap 0.167" in own.describe()
    asked = CrackSegmenter(LocalNet(), ModelConfig(train_size=256, tile=384), tile=512, overlap=0.3, precision="fp32")
    assert (asked.tile, asked.overlap) == (512, 0.3)
    starts = tile_starts(4000, own.tile, own.overlap)
    assert min(b - a for a, b in zip(starts, starts[1:])) <= 384 - 64  # neighbours share at least 64 px


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (130, 250)])
def test_any_size_gives_same_size_output(tiny_model_dir, size):
    net, config = load_model(tiny_model_dir)
    seg = CrackSegmenter(net, config, tile=64, precision="fp32")
    result = seg.predict(synthetic_crack(size, seed=2)[0])
    assert result.prob.shape == size and result.mask.shape == size
    assert result.prob.dtype == np.float32 and 0 <= result.prob.min() and result.prob.max() <= 1
    assert result.mask.dtype == bool and result.threshold == config.threshold


def test_predict_accepts_paths_pil_and_arrays(tiny_model_dir, tmp_path):
    seg = CrackSegmenter.from_pretrained(tiny_model_dir, precision="fp32")
    image, _ = synthetic_crack((40, 60), seed=3)
    write_image(tmp_path / "x.png", image)
    from_path = seg.predict(tmp_path / "x.png").prob
    assert np.allclose(from_path, seg.predict(Image.open(tmp_path / "x.png")).prob)
    assert np.allclose(from_path, seg.predict(image).prob)
    gray16 = image[:, :, 0].astype(np.uint16) * 257
    assert seg.predict(gray16).prob.shape == (40, 60)
    rgba = np.dstack([image, np.full((40, 60), 255, np.uint8)])
    assert np.allclose(seg.predict(rgba).prob, from_path)
    assert len(seg.predict_batch([image, image])) == 2


def test_pixel_limit(tiny_model_dir):
    seg = CrackSegmenter.from_pretrained(tiny_model_dir, max_pixels=1000)
    with pytest.raises(InputError, match="exceeds the limit"):
        seg.predict(np.zeros((40, 40, 3), np.uint8))


class OneCallAtATime:
    """A stand-in engine that fails when two threads call it at once, as some engines do."""

    name, precision, fixed_size = "one-call-at-a-time", "fp32", None

    def __init__(self):
        self.busy = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if not self.busy.acquire(blocking=False):
            raise RuntimeError("engine entered by two threads at once")
        try:
            time.sleep(0.01)  # widen the window in which a second call would overlap
            return np.zeros((len(batch), *batch.shape[2:]), np.float32)
        finally:
            self.busy.release()


def test_one_segmenter_can_be_shared_by_threads():
    seg = CrackSegmenter(None, ModelConfig(train_size=64), backend=OneCallAtATime())
    image = np.zeros((128, 128, 3), np.uint8)  # 3×3 tiles of 64: three batches of at most 4 per photo
    with ThreadPoolExecutor(max_workers=4) as pool:
        predictions = list(pool.map(seg.predict, [image] * 8))
    assert [p.prob.shape for p in predictions] == [(128, 128)] * 8


def test_predict_command_writes_masks_of_input_size(tiny_model_dir, tmp_path):
    inputs = tmp_path / "photos"
    for i, size in enumerate([(50, 70), (90, 40)]):
        write_image(inputs / f"p{i}.jpg", synthetic_crack(size, seed=i)[0])
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    code = main(["predict", str(inputs), "-o", str(out), "--weights", str(tiny_model_dir), "--prob", "--overlay",
                 "--tile", "64"])  # fmt: skip
    assert code == 1  # one input failed, the others were still written
    for name, (h, w) in [("p0", (50, 70)), ("p1", (90, 40))]:
        mask = np.asarray(Image.open(out / f"{name}.png"))
        assert mask.shape == (h, w) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.asarray(Image.open(out / f"{name}_prob.png")).shape == (h, w)
        assert Image.open(out / f"{name}_overlay.jpg").size == (w, h)
    assert not (out / "broken.png").exists()
    # written atomically, yet with the permissions of a normal file (not the temporary file's owner-only ones)
    assert (out / "p0.png").stat().st_mode & 0o777 == default_mode()


def test_predict_shards_and_skip_existing(tiny_model_dir, tmp_path):
    for i in range(4):
        write_image(tmp_path / "in" / f"m{i}.png", synthetic_crack((32, 32), seed=i)[0])
    args = ["--weights", str(tiny_model_dir), "--tile", "64"]
    pattern, out = str(tmp_path / "in" / "m?.png"), str(tmp_path / "out")
    assert main(["predict", pattern, "-o", out, "--shard", "0/2", *args]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["m0.png", "m2.png"]
    assert main(["predict", pattern, "-o", out, "--shard", "1/2", *args]) == 0
    first = (tmp_path / "out" / "m0.png").stat().st_mtime_ns
    assert main(["predict", pattern, "-o", out, "--skip-existing", *args]) == 0
    assert (tmp_path / "out" / "m0.png").stat().st_mtime_ns == first  # not segmented again
    assert read_mask(tmp_path / "out" / "m0.png").shape == (32, 32)
    # all done already: the model is not even loaded (an unknown one would fail there)
    assert main(["predict", pattern, "-o", out, "--skip-existing", "--model", "no-such"]) == 0


def test_predict_replaces_an_earlier_runs_outputs_only_with_overwrite(tiny_model_dir, tmp_path, capsys):
    write_image(tmp_path / "in" / "site.jpg", synthetic_crack((48, 64), seed=0)[0])
    out = tmp_path / "out"
    args = [str(tmp_path / "in"), "-o", str(out), "--overlay", "--weights", str(tiny_model_dir), "--tile", "64"]
    assert main(["predict", *args]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["site.png", "site_overlay.jpg"]
    capsys.readouterr()
    # refused before the model loads (an unknown model would fail there) or the photo is read: one line, what to do
    assert main(["predict", *args[:3], "--overlay", "--model", "no-such"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: -o {out}: {out / 'site.png'} is there already")
    assert "--overwrite" in err and "--skip-existing" in err and "no-such" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # any output counts, not just the mask: an overlay alone is refused too
    (out / "site.png").unlink()
    assert main(["predict", *args]) == 2
    assert f"{out / 'site_overlay.jpg'} is there already" in capsys.readouterr().err
    assert (out / "site_overlay.jpg").read_bytes() == before["site_overlay.jpg"]
    # --overwrite replaces them
    (out / "site.png").write_bytes(b"an earlier mask")
    assert main(["predict", *args, "--overwrite"]) == 0
    assert read_mask(out / "site.png").shape == (48, 64)
    assert Image.open(out / "site_overlay.jpg").size == (64, 48)


def test_predict_files_is_safe_by_default(tiny_model_dir, tmp_path):
    write_image(tmp_path / "in" / "p.png", synthetic_crack((40, 40), seed=1)[0])
    segmenter = CrackSegmenter.from_pretrained(tiny_model_dir, backend="torch", tile=64)
    inputs, out = [str(tmp_path / "in")], tmp_path / "out"
    assert predict_files(segmenter, inputs, out, progress=False) == (1, [])
    (out / "p.png").write_bytes(b"kept")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        predict_files(segmenter, inputs, out, write_prob=True, progress=False)
    assert (out / "p.png").read_bytes() == b"kept" and not (out / "p_prob.png").exists()
    assert predict_files(segmenter, inputs, out, skip_existing=True, progress=False) == (0, [])
    assert predict_files(segmenter, inputs, out, overwrite=True, progress=False) == (1, [])
    assert read_mask(out / "p.png").shape == (40, 40)


def test_shards_name_their_outputs_over_all_the_inputs(tiny_model_dir, tmp_path):
    # two photos named alike fall into different shards: each shard must still give them their own names
    for i, folder in enumerate(["a", "b"]):
        write_image(tmp_path / "in" / folder / "x.jpg", synthetic_crack((32, 32), seed=i)[0])
    args = [str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--weights", str(tiny_model_dir), "--tile", "64"]
    assert main(["predict", *args, "--shard", "0/2"]) == 0
    assert main(["predict", *args, "--shard", "1/2"]) == 0  # not refused: the other shard wrote other files
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "a/x.png",
        "b/x.png",
    ]


def test_output_folder_that_holds_the_inputs_is_refused_and_nothing_is_touched(tiny_model_dir, tmp_path, capsys):
    # the bad-input report's folder: a photo beside files that carry the names of its would-be outputs
    photos = tmp_path / "site"
    write_image(photos / "site.jpg", synthetic_crack((48, 48), seed=0)[0])
    write_image(photos / "site_overlay.jpg", synthetic_crack((48, 48), seed=1)[0])
    write_image(photos / "site_prob.png", synthetic_crack((48, 48), seed=2)[0])
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    args = ["--weights", str(tiny_model_dir), "--tile", "64", "--overlay", "--prob"]
    for target in (photos, photos / "out"):  # the folder itself, or a folder inside it (a re-run would read it)
        assert main(["predict", str(photos), "-o", str(target), *args]) == 2
        assert f"the input folder {photos}" in capsys.readouterr().err
    assert main(["predict", str(photos / "site.jpg"), "-o", str(photos), *args]) == 2
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


def test_colliding_output_names_keep_the_extension_and_the_count_is_true(tiny_model_dir, tmp_path, capsys):
    photos = tmp_path / "in"
    for i, name in enumerate(["003.jpg", "003.png", "site.jpg", "site_prob.png", "other.jpg"]):
        write_image(photos / name, synthetic_crack((40, 40), seed=i)[0])
    out = tmp_path / "out"
    assert main(["predict", str(photos), "-o", str(out), "--prob", "--weights", str(tiny_model_dir)]) == 0
    assert "5 written" in capsys.readouterr().out
    # five masks and five probability maps, none replaced: the colliding ones keep their input's extension
    assert sorted(p.name for p in out.iterdir()) == [
        "003_jpg.png", "003_jpg_prob.png", "003_png.png", "003_png_prob.png", "other.png", "other_prob.png",
        "site_jpg.png", "site_jpg_prob.png", "site_prob_png.png", "site_prob_png_prob.png",
    ]  # fmt: skip


def test_name_collisions_keep_folder_structure(tmp_path):
    a, b = tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg"
    paths = output_paths([(a, a.parent), (b, b.parent)], tmp_path / "out", {"mask": ".png"})
    assert paths[a]["mask"] != paths[b]["mask"]
    assert paths[a]["mask"] == tmp_path / "out" / "a" / "x.png"


def test_missing_default_model_or_input_is_a_clear_error(tmp_path, capsys):
    write_image(tmp_path / "in" / "p.jpg", synthetic_crack((32, 32), seed=0)[0])
    assert main(["predict", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", "no-such"]) == 2
    assert "no shipped model named 'no-such'" in capsys.readouterr().err
    # a missing input is reported before any model is loaded
    assert main(["predict", str(tmp_path / "nothing.jpg"), "-o", str(tmp_path / "out"), "--model", "no-such"]) == 2
    assert "nothing.jpg: no such file" in capsys.readouterr().err


def test_hysteresis_keeps_weak_pixels_only_where_they_touch_strong_ones():
    prob = np.zeros((20, 40), np.float32)
    prob[5, 2:30] = 0.4  # a weak line ...
    prob[5, 10] = 0.9  # ... touching one strong pixel
    prob[15, 2:30] = 0.4  # a weak line on its own
    single = Prediction(prob, 0.5).mask
    hysteresis = Prediction(prob, 0.5, low_threshold=0.3).mask
    assert single.sum() == 1
    assert hysteresis[5, 2:30].all() and not hysteresis[15].any()
    assert Prediction(prob, 0.4, low_threshold=0.3).mask[15, 2:30].all()  # >= the threshold, as without hysteresis


def test_scales_average_the_maps_of_the_resized_photo_at_the_photos_size():
    image, _ = synthetic_crack((96, 128), seed=4)
    one = CrackSegmenter(LocalNet(), ModelConfig(), tile=64, precision="fp32")
    two = CrackSegmenter(LocalNet(), ModelConfig(), tile=64, precision="fp32", scales=(1.0, 2.0))
    base, mixed = one.predict_prob(image), two.predict_prob(image)
    assert mixed.shape == base.shape and not np.allclose(mixed, base)
    enlarged = cv2.resize(one.predict_prob(cv2.resize(image, (256, 192), interpolation=cv2.INTER_CUBIC)), (128, 96),
                          interpolation=cv2.INTER_AREA)  # fmt: skip
    assert np.allclose(mixed, (base + enlarged) / 2, atol=1e-5)
    assert "scales 1,2" in two.describe()
    with pytest.raises(InputError, match="scales"):
        CrackSegmenter(LocalNet(), ModelConfig(), tile=64, scales=(1.0, 9.0))
