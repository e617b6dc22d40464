"""Predict and measure runs on a Dask cluster: the same plan, the same per-input work, spread over worker processes.

The plan is made once, on the client, exactly as for a local run. Each worker builds the segmenter once, from the
model's weights path and its `SegmentOptions` (a `WorkerPlugin` sent pickled; the network never travels), and each
task takes one plan `Item` and does for it what the local loop does, writing its outputs itself through `io.atomic`.
Tasks take paths and return small results (a failure's message, a measurement's cracks.csv rows), so the scheduler
never holds an image. The client gathers results as they complete and folds them in the plan's order, so failures
and cracks.csv come out as in a local run.

A worker that dies mid-task (killed, or over its memory limit) leaves no partial output: outputs are renamed into
place whole, and the temporary files it left are cleared when the run ends. The scheduler runs its task again on
another worker, up to `distributed.scheduler.allowed-failures` times; past that the input is reported as failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from crackseg.errors import InputError
from crackseg.io.atomic import remove_debris
from crackseg.options import MeasureOptions, SegmentOptions
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
    workers = local_workers(address)
    if workers is None:
        with connect(distributed, address) as client:
            yield client
        return
    with quiet_logger("distributed"):  # the scheduler and nannies run in this process: their INFO notes are noise
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


class SegmenterPlugin(WorkerPlugin):
    """Builds the segmenter once per worker: when registered, and on every worker that joins later (one restarted
    after a crash too)."""

    name = PLUGIN_NAME

    def __init__(self, model: ModelSpec):
        self.model = model
        self.segmenter = None

    def setup(self, worker) -> None:
        from crackseg.inference import CrackSegmenter

        self.segmenter = CrackSegmenter.from_pretrained(self.model.weights, self.model.options)

    def teardown(self, worker) -> None:
        self.segmenter = None


def load_model(client, model: ModelSpec) -> str:
    """Have every worker hold `model`'s segmenter (built there once; kept where it is held already); returns what
    runs, as a worker says it (e.g. "openvino int8, tile 448, overlap 0.25")."""
    if set(client.run(held_model).values()) != {model}:
        client.register_plugin(SegmenterPlugin(model))
    return next(iter(client.run(describe_model).values()), "")


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


def predict_on_cluster(client, model, plan: Plan, items: list[Item], progress: bool) -> list[str | None]:
    """`predict_item`'s outcome (a failure's message or None) for each of `items`, in their order, run on
    `client`'s workers; the progress bar counts the plan's inputs, those skipped included."""
    check_shared_folder(client, plan.out_dir)
    load_model(client, model_spec(model))
    return run_tasks(client, predict_task, items, "predict", len(plan.items), progress, plan.paths())


def measure_on_cluster(client, model, plan: Plan, progress: bool, debris: list[Path], **arguments) -> list:
    """`measure_item`'s outcome for each input of `plan`, in their order, run on `client`'s workers."""
    from crackseg.runs.measure import Measured

    check_shared_folder(client, plan.out_dir)
    spec = model_spec(model)
    if spec is not None:
        load_model(client, spec)
    arguments.update(out_dir=plan.out_dir, with_model=spec is not None)
    outcomes = run_tasks(client, measure_task, plan.items, "measure", len(plan.items), progress, debris, **arguments)
    return [Measured(failure=outcome) if isinstance(outcome, str) else outcome for outcome in outcomes]


def run_tasks(client, task, items: list[Item], desc: str, total: int, progress: bool, debris, **arguments) -> list:
    """`task(item, **arguments)` of every item on the workers, gathered as they complete (the progress bar counts
    inputs done of `total`); returns their results in the items' order, and for an input whose workers kept dying
    its failure's message. Any other error stops the run, as in a local loop."""
    distributed = import_distributed()
    futures = [client.submit(task, item, pure=False, **arguments) for item in items]
    position = {future.key: index for index, future in enumerate(futures)}
    results: list = [None] * len(items)
    bar = tqdm(total=total, initial=total - len(items), desc=desc, unit="img", disable=not progress)
    try:
        for future in distributed.as_completed(futures):
            index = position[future.key]
            try:
                results[index] = future.result()
            except distributed.KilledWorker as err:
                results[index] = killed_message(items[index], err.allowed_failures + 1)
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


def killed_message(item: Item, tries: int) -> str:
    times = "once" if tries == 1 else f"{tries} times"
    return (
        f"{item.source}: the worker running it died {times} (killed, or out of its memory); "
        "distributed.scheduler.allowed-failures says how often a task is run again"
    )
