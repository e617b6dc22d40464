"""Runs on a Dask cluster: the same files as a local run, nothing lost or half-written when a worker dies."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crackseg.cli import main
from crackseg.inference import CrackSegmenter
from crackseg.options import SegmentOptions
from crackseg.runs import cluster
from crackseg.runs.cluster import ModelSpec, cluster_client, load_model
from crackseg.runs.measure import measure_files
from crackseg.runs.predict import predict_files
from crackseg.synthetic import synthetic_crack
from tests.fakes import darkness_segmenter
from tests.test_rasters import write_geotiff

distributed = pytest.importorskip("distributed")

DEADLINE_S = 180  # a hung cluster fails its test instead of stalling the suite
SLOW = SegmentOptions(backend="torch", precision="fp32", overlap=0.9)  # many tiles: a task runs long enough to kill


def within(seconds: float, function, *args, **kwargs):
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(function, *args, **kwargs).result(timeout=seconds)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@pytest.fixture(scope="module")
def client():
    """Two worker processes of one thread each, shared by this module's tests."""
    with cluster_client("local:2") as client:
        yield client


@pytest.fixture
def photos(synthetic_root) -> list[Path]:
    return sorted((synthetic_root / "train" / "images").glob("*.jpg"))[:8]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def debris(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def test_predict_on_a_cluster_writes_the_same_files(client, tiny_model_dir, photos, tmp_path, capsys):
    args = [*map(str, photos[:4]), "--weights", str(tiny_model_dir), "--backend", "torch", "--precision", "fp32"]
    assert main(["predict", *args, "--prob", "-o", str(tmp_path / "here")]) == 0
    on_cluster = ["predict", *args, "--prob", "-o", str(tmp_path / "dask"), "--cluster", client.scheduler.address]
    assert within(DEADLINE_S, main, on_cluster) == 0
    assert "on 2 Dask workers" in capsys.readouterr().err
    assert len(files(tmp_path / "dask")) == 8
    assert files(tmp_path / "dask") == files(tmp_path / "here")


def test_measure_on_a_cluster_writes_the_same_files_and_cracks_csv(client, synthetic_root, tiny_model_dir, tmp_path):
    masks = sorted((synthetic_root / "train" / "masks").glob("*.png"))[:6]
    masks.append(tmp_path / "broken.png")
    masks[-1].write_bytes(b"not a png")
    formats = ("json", "csv", "geojson")  # not dxf: ezdxf stamps the time it was written
    here = measure_files(masks, tmp_path / "here", formats=formats, progress=False)
    dask = within(DEADLINE_S, measure_files, masks, tmp_path / "dask", formats=formats, progress=False, client=client)
    assert dask == here and here[0] == 6 and len(here[2]) == 1 and "broken.png" in here[2][0]
    assert files(tmp_path / "dask") == files(tmp_path / "here")
    # Photos, with a segmenter the workers rebuild from its weights file and options.
    segmenter = CrackSegmenter.from_pretrained(tiny_model_dir, backend="torch", precision="fp32")
    photos = sorted((synthetic_root / "train" / "images").glob("*.jpg"))[:3]
    measure_files(photos, tmp_path / "photos_here", segmenter, formats=("csv",), progress=False)
    within(DEADLINE_S, measure_files, photos, tmp_path / "photos_dask", segmenter, formats=("csv",), client=client)
    assert files(tmp_path / "photos_dask") == files(tmp_path / "photos_here")


def run_and_kill_a_worker(client, model: ModelSpec, photos: list[Path], out: Path) -> tuple[int, list[str]]:
    """Predict on `client`, SIGKILL a worker while it runs a task, and return the run's (written, failures)."""
    pool = ThreadPoolExecutor(1)
    run = pool.submit(predict_files, model, photos, out, progress=False, client=client)
    deadline = time.monotonic() + DEADLINE_S
    while not any(p.suffix == ".png" for p in out.glob("*")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the run is under way: the workers hold the model and run tasks
    busy = next((worker for worker, keys in client.processing().items() if keys), None)
    assert busy is not None and not run.done(), "no task left to interrupt: make the photos slower"
    os.kill(client.run(os.getpid, workers=[busy])[busy], signal.SIGKILL)
    try:
        return run.result(timeout=DEADLINE_S)
    finally:
        pool.shutdown(wait=False)


def test_a_worker_killed_mid_run_loses_no_output(client, tiny_model_dir, photos, tmp_path):
    model = ModelSpec.find(tiny_model_dir, SLOW)
    written, failures = run_and_kill_a_worker(client, model, photos, tmp_path / "out")
    assert (written, failures) == (len(photos), [])  # its tasks were run again on a live worker
    masks = sorted((tmp_path / "out").glob("*.png"))
    assert [m.stem for m in masks] == [p.stem for p in photos]
    for mask in masks:  # whole files: each decodes to the photo's size
        with Image.open(mask) as image:
            image.load()
            assert image.size == (128, 96)
    assert debris(tmp_path / "out") == []
    resumed = within(DEADLINE_S, predict_files, model, photos, tmp_path / "out", skip_existing=True, client=client)
    assert resumed == (0, [])


def test_an_input_whose_worker_keeps_dying_is_named_as_failed(client, tiny_model_dir, photos, tmp_path):
    def allow_failures(dask_scheduler, count):  # the scheduler's distributed.scheduler.allowed-failures
        dask_scheduler.allowed_failures, before = count, dask_scheduler.allowed_failures
        return before

    before = client.run_on_scheduler(allow_failures, count=0)
    try:
        written, failures = run_and_kill_a_worker(client, ModelSpec.find(tiny_model_dir, SLOW), photos, tmp_path)
    finally:
        client.run_on_scheduler(allow_failures, count=before)
    assert 1 <= len(failures) <= 2 and written + len(failures) == len(photos)
    failed = {Path(f.split(": ")[0]) for f in failures}
    assert failed <= set(photos) and all("the worker running it died once" in f for f in failures)
    done = {p.stem for p in tmp_path.glob("*.png")}
    assert done == {p.stem for p in photos if p not in failed}
    assert debris(tmp_path) == []


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("nowhere", "expected local, local:N or a scheduler's tcp://HOST:PORT"),
        ("local:0", "expected local:N with N ≥ 1"),
        ("tcp://127.0.0.1:9", "no scheduler answers there"),
    ],
)
def test_a_bad_cluster_address_is_a_one_line_error(address, says, photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", "1s")
    argv = ["predict", str(photos[0]), "-o", str(tmp_path / "out"), "--cluster", address]
    assert within(60, main, argv) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_without_dask_the_flag_says_what_to_install(photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    assert main(["measure", str(photos[0]), "--masks", "-o", str(tmp_path / "out"), "--cluster", "local:2"]) == 2
    assert 'pip install "crackseg[cluster]"' in capsys.readouterr().err


def test_the_cluster_is_given_pickled_options_never_a_model(tiny_model_dir):
    model = ModelSpec.find(tiny_model_dir, SLOW)
    assert len(pickle.dumps(cluster.SegmenterPlugin(model))) < 4000  # weights path and options only
    with pytest.raises(cluster.ClusterError, match="from_pretrained"):
        ModelSpec.of(darkness_segmenter())


# --- one large raster: its blocks are the tasks ----------------------------------------------------------------

BLOCK = 256  # the smallest block: the rasters below are 3 × 2 blocks


@pytest.fixture(scope="module")
def orthophoto(tmp_path_factory) -> Path:
    """A georeferenced photo of 3 × 2 blocks with cracks across the seams, and beside it its mask (deck_mask.tif)."""
    folder = tmp_path_factory.mktemp("ortho")
    image, mask = synthetic_crack((2 * BLOCK, 3 * BLOCK), seed=3, n_cracks=5)
    write_geotiff(folder / "deck.tif", image)
    write_geotiff(folder / "deck_mask.tif", mask[..., None].astype(np.uint8) * 255)
    return folder / "deck.tif"


def tasks_run(stream, name: str) -> int:
    return sum(str(task["key"]).startswith(name) for task in stream.data)


def test_a_rasters_blocks_are_segmented_on_the_workers_into_the_same_bytes(
    client, tiny_model_dir, orthophoto, tmp_path
):
    args = [str(orthophoto), "--weights", str(tiny_model_dir), "--backend", "torch", "--precision", "fp32"]
    args += ["--prob", "--block", str(BLOCK)]
    assert main(["predict", *args, "-o", str(tmp_path / "here")]) == 0
    with distributed.get_task_stream(client) as stream:
        on_cluster = ["predict", *args, "-o", str(tmp_path / "dask"), "--cluster", client.scheduler.address]
        assert within(DEADLINE_S, main, on_cluster) == 0
    assert tasks_run(stream, "segment_block_task") == 6 and tasks_run(stream, "predict_task") == 0
    assert sorted(files(tmp_path / "dask")) == ["deck.tif", "deck_prob.tif"]
    assert files(tmp_path / "dask") == files(tmp_path / "here")


def test_a_raster_measured_in_blocks_on_the_workers_gives_the_same_cracks(client, tiny_model_dir, orthophoto, tmp_path):
    formats = ("json", "csv", "geojson")  # not dxf: ezdxf stamps the time it was written
    mask = orthophoto.with_name("deck_mask.tif")
    here = measure_files(mask, tmp_path / "here", formats=formats, progress=False, block=BLOCK)
    with distributed.get_task_stream(client) as stream:
        dask = within(
            DEADLINE_S, measure_files, mask, tmp_path / "dask", formats=formats, progress=False, block=BLOCK,
            client=client,
        )  # fmt: skip
    assert tasks_run(stream, "measure_block_task") == 6 and tasks_run(stream, "measure_task") == 0
    assert dask == here and here[:2] == (1, 5)  # the five cracks drawn, over 3 × 2 blocks
    assert files(tmp_path / "dask") == files(tmp_path / "here")
    # The photo: segmented in blocks on the workers into a temporary mask, which they then measure in blocks.
    segmenter = CrackSegmenter.from_pretrained(tiny_model_dir, backend="torch", precision="fp32")
    here = measure_files(orthophoto, tmp_path / "photo_here", segmenter, formats=formats, progress=False, block=BLOCK)
    with distributed.get_task_stream(client) as stream:
        dask = within(
            DEADLINE_S, measure_files, orthophoto, tmp_path / "photo_dask", segmenter, formats=formats,
            progress=False, block=BLOCK, client=client,
        )  # fmt: skip
    assert tasks_run(stream, "segment_block_task") == tasks_run(stream, "measure_block_task") == 6
    assert dask == here and here[0] == 1
    assert files(tmp_path / "photo_dask") == files(tmp_path / "photo_here")


# --- the workers' processes ------------------------------------------------------------------------------------


def thread_pools() -> tuple[int, int]:
    import cv2
    import torch

    return torch.get_num_threads(), cv2.getNumThreads()


def test_a_workers_engine_and_opencv_run_on_its_task_threads(tiny_model_dir):
    """Dask gives every worker OMP_NUM_THREADS=1, whatever its threads; a worker of two threads runs on two."""
    options = dict(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0")
    with distributed.LocalCluster(**options) as two_threads, distributed.Client(two_threads) as client:
        within(DEADLINE_S, load_model, client, ModelSpec.find(tiny_model_dir, SLOW))
        assert set(client.run(thread_pools).values()) == {(2, 2)}


def test_local_workers_keep_glibcs_adaptive_memory_mapping(client):
    """Dask's MALLOC_TRIM_THRESHOLD_ would make every photo's arrays page-faulted in afresh."""
    assert set(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values()) == {None}
