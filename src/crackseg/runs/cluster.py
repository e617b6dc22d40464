"""Predict and measure runs on a Dask cluster: the same plan, the same per-input work, spread over worker processes.

The plan is made once, on the client, exactly as for a local run. Each worker builds the segmenter once, from the
model's weights path and its `SegmentOptions` (a `WorkerPlugin` sent pickled; the network never travels), and each
task takes one plan `Item` and does for it what the local loop does, writing its outputs itself through `io.atomic`.
A raster processed in blocks is run here instead, by the local code, with its blocks as the tasks: each worker reads
its own window, and returns a block's statistics (measure) or leaves its segmented arrays on the shared disk
(predict), which the local code writes into the GeoTIFFs in raster order; so the files are those of a local run.
Tasks take paths and return small results (a failure's message, a measurement's cracks.csv rows), so the scheduler
never holds an image. The client gathers results as they complete and folds them in the plan's order, so failures
and cracks.csv come out as in a local run.

A worker that dies mid-task (killed, or over its memory limit) leaves no partial output: outputs are renamed into
place whole, and the temporary files it left are cleared when the run ends. The scheduler runs its task again on
another worker, up to `distributed.scheduler.allowed-failures` times; past that the input is reported as failed.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from crackseg.errors import CracksegError, InputError
from crackseg.io.atomic import remove_debris
from crackseg.options import DEFAULT_BLOCK, MeasureOptions, SegmentOptions
from crackseg.runs.plan import Item, Plan

try:
    from distributed import WorkerPlugin
except ImportError:  # the module still imports (the CLI's flags, ModelSpec); starting a cluster says what to install
    WorkerPlugin = object

PLUGIN_NAME = "crackseg-segmenter"  # one segmenter per worker: registering another model replaces it
CONNECT_TIMEOUT = "10s"  # to reach a scheduler, and for it to have a worker


class ClusterError(InputError):
    """The cluster named cannot be used (a malformed or unreachable address, Dask not installed, no workers)."""


def import_distributed():
    try:
        import distributed
    except ImportError:
        raise ClusterError('--cluster needs Dask distributed: pip install "crackseg[cluster]"') from None
    return distributed


@dataclass(frozen=True)
class ModelSpec:
    """What a worker builds its segmenter from: a weights file on the shared file system and how to run it."""

    weights: Path
    options: SegmentOptions

    @classmethod
    def find(cls, name_or_path=None, options: SegmentOptions | None = None) -> ModelSpec:
        """A shipped model by name (default: the default model) or a trained model's path, resolved here, on the
        client, so that a bad name is refused before the cluster starts."""
        from crackseg.engines import ModelHandle
        from crackseg.inference import is_weights_path

        is_path = is_weights_path(name_or_path)
        handle = ModelHandle.find(name_or_path if is_path else None, None if is_path else name_or_path)
        return cls(handle.path.absolute(), options or SegmentOptions())

    @property
    def max_pixels(self) -> int:
        """The photo limit, as the segmenter's: what the plan needs to tell photos from rasters in blocks."""
        return self.options.photo_limit

    @property
    def max_raster_pixels(self) -> int:
        """The raster limit, as the segmenter's: checked before a raster's blocks are sent out."""
        return self.options.raster_limit

    @classmethod
    def of(cls, segmenter) -> ModelSpec:
        """The spec of a segmenter made by `CrackSegmenter.from_pretrained`, pinned to the engine it chose, so that
        the workers run what it runs rather than each measuring `auto` again."""
        path = getattr(getattr(segmenter, "model", None), "path", None)
        if path is None:
            raise ClusterError(
                "on a cluster the workers load the model from its weights file: give a segmenter made by "
                "CrackSegmenter.from_pretrained, or a runs.cluster.ModelSpec"
            )
        engine = segmenter.backend
        options = segmenter.options.replace(backend=engine.name, precision=engine.precision)
        return cls(Path(path).absolute(), options)


def model_spec(model) -> ModelSpec | None:
    """None (masks measured as they are), a ModelSpec, or the spec of a from_pretrained segmenter."""
    return model if model is None or isinstance(model, ModelSpec) else ModelSpec.of(model)


def local_workers(address: str) -> int | None:
    """N for `local` (the cores here) and `local:N`; None for a scheduler's address (`tcp://HOST:PORT`)."""
    kind, _, count = address.partition(":")
    if kind != "local":
        if "://" not in address:
            raise ClusterError(f"--cluster {address}: expected local, local:N or a scheduler's tcp://HOST:PORT")
        return None
    try:
        workers = int(count) if count else os.cpu_count() or 1
        assert workers >= 1
    except (ValueError, AssertionError):
        raise ClusterError(f"--cluster {address}: expected local:N with N ≥ 1 worker processes") from None
    return workers


@contextlib.contextmanager
def cluster_client(address: str) -> Iterator:
    """A `distributed.Client` of `local[:N]` (a LocalCluster of N worker processes of one thread each, each with
    its share of this machine's memory) or of the scheduler at `tcp://HOST:PORT`; closed on leaving, and a local
    cluster shut down."""
    distributed = import_distributed()
    import dask

    workers = local_workers(address)
    if workers is None:
        with connect(distributed, address) as client:
            yield client
        return
    # Dask's nannies set MALLOC_TRIM_THRESHOLD_ in their workers, so that glibc hands freed memory back at once;
    # setting it also turns off glibc's adaptive mmap threshold, so each photo's arrays are mapped afresh and
    # page-faulted in again: a sixth more CPU per photo. A worker here holds one photo or block at a time.
    no_trim = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with quiet_logger("distributed"), dask.config.set(no_trim):  # the scheduler and nannies run in this process
        cluster = distributed.LocalCluster(  # no dashboard; its HTTP server on a free port, not a taken 8787
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
            scheduler_kwargs={"dashboard": False},
        )  # fmt: skip
        try:
            with distributed.Client(cluster) as client:
                yield client
        finally:
            # A worker that loaded torch may take seconds to exit; the nanny then kills it, with a warning. Its work
            # is done or abandoned by now: nothing is lost, so the warning is not the user's news either.
            with quiet_logger("distributed.nanny", logging.ERROR):
                cluster.close()


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.WARNING) -> Iterator[None]:
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(max(level, before))
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def connect(distributed, address: str) -> Iterator:
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as err:
        raise ClusterError(f"--cluster {address}: no scheduler answers there ({first_line(err)})") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
        except TimeoutError:
            raise ClusterError(f"--cluster {address}: the scheduler has no workers") from None
        yield client


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def check_shared_folder(client, folder: Path) -> None:
    """Refuse workers that do not see the output folder: tasks name inputs and outputs by the client's paths."""
    blind = [worker for worker, seen in client.run(os.path.isdir, str(folder)).items() if not seen]
    if blind:
        raise ClusterError(
            f"worker {blind[0]} does not see the output folder {folder}: the workers must share this file system "
            "at the same paths (give absolute paths, or start the workers in this folder)"
        )


def use_threads(threads: int) -> None:
    """Size this worker's thread pools to its task threads: ONNX Runtime and OpenVINO take torch's thread count, or
    OMP_NUM_THREADS without torch (`engines.base.default_threads`); OpenCV's pool is the machine's cores otherwise.
    Dask's nannies set OMP_NUM_THREADS=1 whatever the worker's threads, unless the caller's environment says
    otherwise: a worker of N threads runs one engine call at a time (the segmenter's lock), on N threads."""
    import cv2

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


class ThreadsPlugin(WorkerPlugin):
    """Sizes the thread pools of every worker, those that join later too (`use_threads`), for runs without a model
    (masks measured as they are); a segmenter's plugin does it before it builds the engine."""

    name = "crackseg-threads"

    def setup(self, worker) -> None:
        use_threads(worker.state.nthreads)


def build_segmenter(model: ModelSpec, worker):
    from crackseg.inference import CrackSegmenter

    use_threads(worker.state.nthreads)  # read by ONNX Runtime and OpenVINO as they are built
    segmenter = CrackSegmenter.from_pretrained(model.weights, model.options)
    use_threads(worker.state.nthreads)  # torch, where the engine imported it: its pool starts at the process's count
    return segmenter


class SegmenterPlugin(WorkerPlugin):
    """Builds the segmenter once per worker: when registered, and on every worker that joins later (one restarted
    after a crash too). `model` is what was asked for; `engine` the same pinned to the engine `auto` chose."""

    name = PLUGIN_NAME

    def __init__(self, model: ModelSpec, engine: ModelSpec | None = None):
        self.model, self.engine = model, engine or model
        self.segmenter = None

    def setup(self, worker) -> None:
        self.segmenter = build_segmenter(self.engine, worker)

    def teardown(self, worker) -> None:
        self.segmenter = None


def load_model(client, model: ModelSpec) -> str:
    """Have every worker hold `model`'s segmenter (built there once; kept where it is held already); returns what
    runs, as a worker says it (e.g. "openvino int8, tile 448, overlap 0.25")."""
    if set(client.run(held_model).values()) != {model}:
        engine, described = pin_engine(client, model)
        client.register_plugin(SegmenterPlugin(model, engine))
        if described:
            return described
    return next(iter(client.run(describe_model).values()), "")


def pin_engine(client, model: ModelSpec) -> tuple[ModelSpec, str | None]:
    """`model` with `auto` resolved once, on one worker (measured there on first use with that worker's threads,
    then read from the engine cache), and how that worker describes its choice. Every worker then runs that
    engine: a photo's mask does not depend on which worker ran it, and the workers do not time candidates
    against each other on shared cores."""
    if "auto" not in (model.options.backend, model.options.precision):
        return model, None
    worker = next(iter(client.nthreads()))
    return client.submit(choose_engine, model, workers=[worker], pure=False).result()


def choose_engine(model: ModelSpec) -> tuple[ModelSpec, str]:
    from distributed import get_worker

    segmenter = build_segmenter(model, get_worker())
    return ModelSpec.of(segmenter), segmenter.describe()


def held_model(dask_worker) -> ModelSpec | None:
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    return plugin.model if plugin is not None else None


def describe_model(dask_worker) -> str:
    return dask_worker.plugins[PLUGIN_NAME].segmenter.describe()


def worker_segmenter():
    from distributed import get_worker

    return get_worker().plugins[PLUGIN_NAME].segmenter


def predict_task(item: Item) -> str | None:
    from crackseg.runs.predict import predict_item

    return predict_item(worker_segmenter(), item)


def measure_task(item: Item, out_dir: Path, options: MeasureOptions, marker_mm: float | None, with_model: bool):
    from crackseg.runs.measure import measure_item

    return measure_item(item, out_dir, worker_segmenter() if with_model else None, options, marker_mm)


def predict_on_cluster(
    client, model, plan: Plan, items: list[Item], progress: bool, block: int = DEFAULT_BLOCK
) -> list[str | None]:
    """`predict_item`'s outcome (a failure's message or None) for each of `items`, in their order, run on
    `client`'s workers: a photo per task, a raster's blocks `block` px a side as tasks; the progress bar counts the
    plan's inputs, those skipped included."""
    from crackseg.runs.predict import predict_item

    check_shared_folder(client, plan.out_dir)
    spec = model_spec(model)
    load_model(client, spec)

    def raster(item: Item) -> str | None:
        return predict_item(spec, item, block, client, progress)

    return run_tasks(client, predict_task, raster, items, "predict", len(plan.items), progress, plan.paths())


def measure_on_cluster(client, model, plan: Plan, progress: bool, debris: list[Path], **arguments) -> list:
    """`measure_item`'s outcome for each input of `plan`, in their order, run on `client`'s workers: a photo or
    mask per task, a raster's blocks as tasks."""
    from crackseg.runs.measure import Measured, measure_item

    check_shared_folder(client, plan.out_dir)
    spec = model_spec(model)
    if spec is not None:
        load_model(client, spec)
    else:
        client.register_plugin(ThreadsPlugin())

    def raster(item: Item) -> Measured:
        options, marker_mm = arguments["options"], arguments["marker_mm"]
        return measure_item(item, plan.out_dir, spec, options, marker_mm, progress, client)

    arguments.update(out_dir=plan.out_dir, with_model=spec is not None)
    total = len(plan.items)
    outcomes = run_tasks(client, measure_task, raster, plan.items, "measure", total, progress, debris, **arguments)
    return [Measured(failure=outcome) if isinstance(outcome, str) else outcome for outcome in outcomes]


def run_tasks(
    client, task, raster, items: list[Item], desc: str, total: int, progress: bool, debris, **arguments
) -> list:
    """`task(item, **arguments)` of every photo on the workers, gathered as they complete, and `raster(item)` of
    every raster here, which runs its blocks on the workers (the progress bar counts inputs done of `total`);
    returns their results in the items' order, and for a photo whose workers kept dying its failure's message. Any
    other error stops the run, as in a local loop."""
    distributed = import_distributed()
    photos = [index for index, item in enumerate(items) if not item.in_blocks]
    futures = [client.submit(task, items[index], pure=False, **arguments) for index in photos]
    position = {future.key: index for index, future in zip(photos, futures, strict=True)}
    results: list = [None] * len(items)
    bar = tqdm(total=total, initial=total - len(items), desc=desc, unit="img", disable=not progress)
    try:
        # The photos' tasks run meanwhile; the rasters' blocks queue behind them.
        for index in sorted(set(range(len(items))) - set(photos)):
            results[index] = raster(items[index])
            bar.update()
        for future in distributed.as_completed(futures):
            index = position[future.key]
            try:
                results[index] = future.result()
            except distributed.KilledWorker as err:
                results[index] = f"{items[index].source}: {killed_message(err.allowed_failures + 1)}"
            future.release()
            bar.update()
    except BaseException:
        client.cancel(futures)  # after an error (or Ctrl-C) no task goes on writing behind the caller's back
        raise
    finally:
        bar.close()
    # A worker killed mid-write leaves its temporary file beside the output, which a retry then wrote whole.
    remove_debris(debris)
    return results


def killed_message(tries: int) -> str:
    times = "once" if tries == 1 else f"{tries} times"
    return (
        f"the worker running it died {times} (killed, or out of its memory); "
        "distributed.scheduler.allowed-failures says how often a task is run again"
    )


# --- a raster's blocks as tasks ------------------------------------------------------------------------------


class WorkerDied(CracksegError):
    """A raster's block whose workers kept dying: the raster fails, named, and the run goes on."""


def ordered_results(client, task, inputs: list, **arguments) -> Iterator:
    """`task(input, **arguments)` of each input on the workers, yielded in the inputs' order as the caller takes
    them. At most twice the workers' threads are in flight beyond the one awaited, so that the workers stay busy
    while results wait on them (or on the shared disk) only a few at a time. Cancels what is left when the caller
    stops early or fails."""
    distributed = import_distributed()
    submit = functools.partial(client.submit, task, pure=False, **arguments)
    queue = iter(inputs)
    pending = collections.deque(submit(one) for one in itertools.islice(queue, 1 + 2 * sum(client.nthreads().values())))
    try:
        while pending:
            future = pending.popleft()
            try:
                result = future.result()
            except distributed.KilledWorker as err:
                raise WorkerDied(f"a block of it: {killed_message(err.allowed_failures + 1)}") from None
            future.release()
            pending.extend(submit(one) for one in itertools.islice(queue, 1))  # before the caller works on it
            yield result
    finally:
        client.cancel(list(pending))


def segment_blocks(client, model, src, block: int, with_prob: bool, masked: bool, folder: Path) -> Iterator:
    """`runs.predict.RasterBlock`s of the open raster `src`, in raster order, each segmented on a worker that reads
    its own window and leaves the block's outputs in `folder` (on the shared disk: pixels never pass through the
    scheduler), read back here one at a time and removed."""
    from crackseg.io.images import check_pixels
    from crackseg.io.rasters import blocks
    from crackseg.runs.predict import RasterBlock

    check_pixels(src.width, src.height, model_spec(model).max_raster_pixels, str(src.name))
    windows = list(blocks(src.height, src.width, block))
    arguments = {"path": src.name, "with_prob": with_prob, "masked": masked, "folder": folder}
    for (row, col, _, _), saved in zip(windows, ordered_results(client, segment_block_task, windows, **arguments)):
        with np.load(saved) as arrays:
            yield RasterBlock(row, col, arrays["mask"], arrays.get("prob"), arrays.get("valid"))
        saved.unlink()


def segment_block_task(window: tuple[int, int, int, int], path: str, with_prob: bool, masked: bool, folder: Path):
    from crackseg.io.atomic import atomic_path
    from crackseg.io.rasters import open_raster
    from crackseg.runs.predict import raster_block

    row, col = window[:2]
    with open_raster(path) as src:
        prediction, valid = worker_segmenter().predict_block(src, *window)
    part = raster_block(row, col, prediction, valid, with_prob, masked)
    arrays = {name: getattr(part, name) for name in ("mask", "prob", "valid") if getattr(part, name) is not None}
    target = folder / f"block_{row}_{col}.npz"
    with atomic_path(target) as temporary:
        np.savez(temporary, **arrays)
    return target


def measure_mask_on_cluster(client, path: Path, options: MeasureOptions, progress: bool):
    """`runs.measure.measure_mask` with its blocks measured on the workers, each reading its own window of the mask
    and returning the block's statistics, joined here as the local loop joins them."""
    from crackseg.io.rasters import open_raster
    from crackseg.measure import DEFAULT_HALO
    from crackseg.measure.aggregate import block_windows, join_blocks

    with open_raster(path) as src:
        shape = (src.height, src.width)
    windows = block_windows(shape, options.block, DEFAULT_HALO)
    stats = ordered_results(client, measure_block_task, windows, path=str(path), shape=shape, options=options)
    bar = tqdm(stats, total=len(windows), desc="blocks", unit="block", disable=not progress, leave=False)
    return join_blocks(list(bar), shape, options, DEFAULT_HALO)


def measure_block_task(window, path: str, shape: tuple[int, int], options: MeasureOptions):
    from crackseg.io.rasters import READ_CACHE_MB, open_raster, rasterio_env, read_mask_window
    from crackseg.measure.aggregate import window_statistics

    with rasterio_env(GDAL_CACHEMAX=READ_CACHE_MB), open_raster(path) as src:
        return window_statistics(lambda *at: read_mask_window(src, *at), window, shape, options)
