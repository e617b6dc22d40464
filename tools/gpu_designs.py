"""The comparison of designs and the distillation on a lent GPU, in one call of the device tool, resumable.

An optional path: the shipped default's recipe never depends on a GPU. By default the runs are U-Nets on the Lite0
encoder with the decoders narrow enough to near 2.5× the default under int8 (`d64`, `d48`, `d32`: (64, 32, 16, 8, 4),
(48, 24, 12, 8, 4), (32, 16, 8, 8, 4)), each started from unet-lite0 (`--init-from`) and trained side by side at the
same budget on the labels, with every hard-negative distractor (`--distractors all`) and the skeleton recall loss,
at larger batches and crops than a CPU affords. `--runs distilled labels` asks the distillation question instead:
the slim student of docs/designs-tried.md ("A slim student distilled from unet-lite0", decoder (64, 32, 16, 16, 8))
on the labels plus the teacher's soft targets, and on the labels alone.

Here, before the call (the pack of data and wheels: tools/gpu_pack.py):

    echo /.gpu/ >> "$(git rev-parse --git-common-dir)/info/exclude"
    python tools/gpu_pack.py --data ../shared/data --out .gpu

The call (the device tool's `run`):

    command:   PYTHONUNBUFFERED=1 python3 tools/gpu_designs.py --pack .gpu --minutes 8.5
    carry:     [".gpu"]
    timeout_s: 600

then `give_back` (the device time lent covers about one such call). After it, FILES_AT being the folder the reply
names:

    python tools/gpu_pack.py --take-back FILES_AT --out .gpu

keeps what came back under runs/ and puts each run's resume state into the pack, so the same call continues the
runs where they stopped (weights, schedule and history; Adam's moments start again, as what travels must be small).
Keep --epochs the same across calls: it is the length of the cosine schedule. Without a GPU, the whole plan at toy
sizes on generated data, on CPU:

    python tools/gpu_designs.py --smoke --work /tmp/gpu-smoke

Within --minutes it installs the wheels into /tmp/site, unpacks the data and checks its validation split, computes
the teacher's maps (`crackseg teach`'s work, split over processes), trains the runs side by side, each bounded by
--max-train-minutes so the whole ends in time, and writes to $OUT, each file under the tool's 16 MiB: log.txt,
summary.json (settings, commands, timings, each run's history) and RUN.tar per run (history.csv, run.json,
loss_curve.png, best/ in float16, and last.pt with float16 weights and no optimiser moments, to resume from).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import gpu_pack  # noqa: E402  (a sibling script, not a package)

MIB = 2**20
OUT_FILE_LIMIT = 16 * MIB  # per file the device tool brings back
OUT_FILES = 8
SHIPPED = REPO / "src" / "crackseg" / "weights"


@dataclass(frozen=True)
class Design:
    """One run of the comparison: its `crackseg train` options beside the shared ones (size, batch, epochs, lr)."""

    name: str
    args: tuple[str, ...]
    distilled: bool = False  # also learns the teacher's maps


def student(decoder: tuple[int, ...]) -> tuple[str, ...]:
    """A U-Net on the Lite0 encoder with this decoder, on the default's recipe (every hard negative, skeleton
    recall); every run starts from the teacher (`--init-from`: its encoder, and its strongest decoder channels)."""
    return (
        "--arch", "unet", "--encoder", "timm-tf_efficientnet_lite0",
        "--arch-kwargs", json.dumps({"decoder_channels": list(decoder)}),
        "--lr-schedule", "cosine", "--loss", "bce+dice+skel",
        "--source-balance", "0.5", "--distractor-prob", "0.3", "--distractors", "all",
        "--degrade-prob", "0.3", "--scale-range", "0.4,1.3",
        "--select", "sources", "--threshold-by", "sources",
    )  # fmt: skip


# The distillation question (`distilled` against `labels`, the slim student of docs/designs-tried.md), and the
# decoders narrow enough to near 2.5× the default under int8 on CPUs with VNNI (docs/designs-tried.md, "How fast a Lite0
# U-Net can get under int8"), on labels alone: on the CPU, distilling gave them nothing measurable.
DESIGNS = {
    d.name: d
    for d in (
        Design("distilled", (*student((64, 32, 16, 16, 8)), "--distill-weight", "0.5"), distilled=True),
        Design("labels", student((64, 32, 16, 16, 8))),
        Design("d64", student((64, 32, 16, 8, 4))),
        Design("d48", student((48, 24, 12, 8, 4))),
        Design("d32", student((32, 16, 8, 8, 4))),
    )
}


@dataclass(frozen=True)
class Plan:
    """What one call does. The defaults are the GPU's; `smoke()` shrinks them to a CPU check."""

    pack: Path
    out: Path
    work: Path = Path("/tmp/crackseg-gpu")
    site: Path = Path("/tmp/site")
    minutes: float = 8.5  # the whole call; the device tool stops a command at 10
    finish_minutes: float = 1.25  # after the training bound: the last validation, saving, archiving
    runs: tuple[str, ...] = ("d64", "d48", "d32")
    teacher: str = "unet-lite0"
    size: int = 384
    batch_size: int = 32
    epochs: int = 12
    lr: float = 6e-4  # the CPU recipe's 3e-4 at batch 8, times the square root of the batch ratio (Adam's scaling)
    device: str = "cuda"
    workers: int | None = None  # data-loading processes per run; None: the cores shared out
    threads: int = 2
    teach_shards: int = 8
    teach_tiles: int = 16
    install: bool = True

    def loader_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return max(1, ((os.cpu_count() or 2) - 2) // len(self.runs))

    def smoke(self) -> Plan:
        """The same steps at toy sizes on CPU, loading in the training process."""
        return replace(
            self, size=64, batch_size=2, device="cpu", workers=0, threads=1, teach_shards=2, teach_tiles=4,
            install=False, minutes=5, finish_minutes=0.5,
        )  # fmt: skip


class Log:
    """Every line to stdout and to OUT/log.txt as it comes, so a call stopped at its limit still brings it back."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a", encoding="utf-8")
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self.lock:
            print(line, flush=True)
            self.file.write(line + "\n")
            self.file.flush()


# --- commands -------------------------------------------------------------------------------------------------


def child_env(plan: Plan) -> dict:
    """The environment of every process it starts: the installed wheels and the checkout's crackseg first."""
    paths = ([str(plan.site)] if plan.install else []) + [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "PYTHONUNBUFFERED": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",  # no network there: albumentations' version check would only wait
    }


def train_command(plan: Plan, design: Design, data: Path, maps: Path, run_dir: Path, minutes: float, resume: bool):
    command = [sys.executable, "-m", "crackseg", "train", "--data", str(data), "--out", str(run_dir), *design.args]
    command += ["--init-from", str(SHIPPED / plan.teacher), "--size", str(plan.size)]
    command += ["--batch-size", str(plan.batch_size), "--epochs", str(plan.epochs), "--lr", f"{plan.lr:g}"]
    command += ["--device", plan.device, "--workers", str(plan.loader_workers()), "--threads", str(plan.threads)]
    command += ["--max-train-minutes", f"{minutes:.2f}"]
    if design.distilled:
        command += ["--teacher-maps", str(maps)]
    return command + ["--resume" if resume else "--overwrite"]


def teach_command(plan: Plan, data: Path, maps: Path, index: int) -> list[str]:
    """`crackseg teach` on the index-th slice of the pairs, in one of plan.teach_shards processes."""
    command = [sys.executable, "-m", "crackseg", "teach", "--data", str(data), "--out", str(maps)]
    command += ["--model", plan.teacher, "--backend", "torch", "--device", plan.device]
    return command + ["--batch-size", str(plan.teach_tiles), "--shard", f"{index}/{plan.teach_shards}"]


# --- processes ------------------------------------------------------------------------------------------------


def forward(process: subprocess.Popen, name: str, log: Log) -> threading.Thread:
    def copy() -> None:
        for line in process.stdout:
            if line.strip():
                log(f"[{name}] {line.rstrip()}")

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


def run_side_by_side(commands: dict[str, list[str]], env: dict, stop_at: float, log: Log) -> dict[str, int]:
    """Run the commands at once, their output in the log; past `stop_at` (time.time()) each is interrupted (a
    training keeps its last finished epoch), then killed. The exit codes."""
    processes = {
        name: subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, command in commands.items()
    }
    readers = [forward(process, name, log) for name, process in processes.items()]
    interrupted = False
    while any(p.poll() is None for p in processes.values()):
        if time.time() > stop_at and not interrupted:
            log(f"time is up: interrupting {', '.join(n for n, p in processes.items() if p.poll() is None)}")
            for p in processes.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            interrupted, stop_at = True, time.time() + 30
        elif time.time() > stop_at:
            for p in processes.values():
                p.kill()
        time.sleep(1)
    for reader in readers:
        reader.join(timeout=5)
    return {name: p.returncode for name, p in processes.items()}


# --- steps ----------------------------------------------------------------------------------------------------


def install_wheels(plan: Plan, log: Log) -> None:
    wheels = sorted((plan.pack / "wheels").glob("*.whl"))
    if not wheels:
        log("no wheels in the pack: using what is installed")
        return
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    command += ["--no-cache-dir", "--upgrade", "--target", str(plan.site), *map(str, wheels)]
    subprocess.run(command, check=True)
    sys.path.insert(0, str(plan.site))
    log(f"installed {len(wheels)} wheels into {plan.site}")


def prepare_data(plan: Plan, log: Log) -> tuple[Path, dict]:
    """The unpacked data (kept between calls on a machine still warm), its validation split checked."""
    data = plan.work / "data"
    stamp = plan.work / "data.stamp"
    manifest = gpu_pack.read_manifest(plan.pack)
    if stamp.is_file() and stamp.read_text() == manifest["made"]:
        log(f"data already unpacked in {data}")
        return data, manifest
    for stale in (data, plan.work / "teacher-maps"):  # another pack's, on a machine still warm
        shutil.rmtree(stale, ignore_errors=True)
    gpu_pack.unpack(plan.pack, data, workers=os.cpu_count() or 1)
    gpu_pack.check_split(manifest, data)
    stamp.write_text(manifest["made"])
    log(f"unpacked {len(manifest['pairs'])} pairs ({manifest['codec']} quality {manifest['quality']}) into {data}; "
        f"validation split as on the original ({len(manifest['split']['val'])} photos)")  # fmt: skip
    return data, manifest


def teach(plan: Plan, data: Path, maps: Path, env: dict, stop_at: float, log: Log) -> bool:
    """The teacher's maps of every pair (those already there are kept); whether all were made."""
    commands = {f"teach {i}": teach_command(plan, data, maps, i) for i in range(plan.teach_shards)}
    codes = run_side_by_side(commands, {**env, "OMP_NUM_THREADS": str(plan.threads)}, stop_at, log)
    return all(code == 0 for code in codes.values())


def restore_run(plan: Plan, run_dir: Path) -> bool:
    """Whether the run continues: its folder is still here (a warm machine), or its resume state was carried."""
    if (run_dir / "last.pt").is_file():
        return True
    state = plan.pack / "resume" / f"{run_dir.name}.tar"
    if not state.is_file():
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(state) as archive:
        archive.extractall(run_dir, filter="data")
    return True


# --- what comes back ------------------------------------------------------------------------------------------


def half_floats(state: dict) -> dict:
    """Float tensors in float16 (those float16 cannot hold stay as they are); others unchanged."""
    import torch

    def half(value):
        floating = isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel()
        if floating and value.abs().max() < 6e4:
            return value.half()
        return value

    return {key: half(value) for key, value in state.items()}


def compact_checkpoint(path: Path) -> bytes:
    """last.pt small enough to travel: float16 weights and no optimiser moments. crackseg's resume loads it as it
    is (load_state_dict casts the weights back; Adam starts its moments again, its learning rate and schedule kept)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    state["model"] = half_floats(state["model"])
    if state.get("ema"):
        state["ema"] = half_floats(state["ema"])
    state["optimizer"] = {"state": {}, "param_groups": state["optimizer"]["param_groups"]}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def half_model(path: Path) -> bytes:
    """A crackseg model.safetensors in float16, as the shipped models are stored."""
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(path), "pt") as weights:
        state = {key: weights.get_tensor(key) for key in weights.keys()}
        metadata = weights.metadata()
    return save(half_floats(state), metadata=metadata)


def run_archive(run_dir: Path, log: Log) -> bytes | None:
    """RUN.tar's bytes: the run's records, its best model and its compact last.pt; None when it has nothing."""
    contents = {name: (run_dir / name).read_bytes() for name in ("history.csv", "run.json", "loss_curve.png")
                if (run_dir / name).is_file()}  # fmt: skip
    if (run_dir / "best" / "model.safetensors").is_file():
        contents["best/config.json"] = (run_dir / "best" / "config.json").read_bytes()
        contents["best/model.safetensors"] = half_model(run_dir / "best" / "model.safetensors")
    if (run_dir / "last.pt").is_file():
        contents["last.pt"] = compact_checkpoint(run_dir / "last.pt")
    if not contents:
        return None
    archive = tar_bytes(contents)
    if len(archive) > OUT_FILE_LIMIT and "last.pt" in contents:
        log(f"{run_dir.name}: with its resume state the archive is over 16 MiB; it comes back without last.pt")
        archive = tar_bytes({k: v for k, v in contents.items() if k != "last.pt"})
    return archive if len(archive) <= OUT_FILE_LIMIT else None


def tar_bytes(contents: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in contents.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(content), int(time.time())
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def read_history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.csv"
    return list(csv.DictReader(path.open())) if path.is_file() else []


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import platform

    return platform.processor() or platform.machine()


def collect(plan: Plan, runs: dict, summary: dict, log: Log) -> None:
    from crackseg.io.atomic import atomic_write_bytes

    for name, entry in runs.items():
        run_dir = plan.work / "runs" / name
        entry["history"] = read_history(run_dir)
        archive = run_archive(run_dir, log)
        entry["archive"] = f"{name}.tar" if archive else None
        if archive:
            atomic_write_bytes(plan.out / f"{name}.tar", archive)
    summary["runs"] = runs
    atomic_write_bytes(plan.out / "summary.json", json.dumps(summary, indent=1, default=str).encode())
    log(f"wrote {', '.join(sorted(p.name for p in plan.out.iterdir() if p.is_file()))} to {plan.out}")


# --- the call -------------------------------------------------------------------------------------------------


class Clock:
    """The call's time: when it must end, and how long each step took."""

    def __init__(self, minutes: float):
        self.started = self.mark = time.time()
        self.end = self.started + minutes * 60
        self.steps: dict[str, float] = {}

    def lap(self, step: str) -> None:
        now = time.time()
        self.steps[step], self.mark = round(now - self.mark, 1), now

    def minutes_left(self) -> float:
        return (self.end - time.time()) / 60


def preflight(plan: Plan, log: Log) -> bool:
    """Fail in seconds, not after the unpacking: the wheels import, the GPU is there, the photos decode."""
    problems = []
    try:
        import albumentations  # noqa: F401
        import segmentation_models_pytorch  # noqa: F401
        import torch

        import crackseg.train  # noqa: F401
    except ImportError as err:
        problems.append(f"{err}: a wheel is missing from the pack (tools/gpu_pack.py WHEELS)")
    else:
        if plan.device.startswith("cuda") and not torch.cuda.is_available():
            problems.append("no CUDA device here: use --smoke for a CPU check")
    manifest = gpu_pack.read_manifest(plan.pack)
    image, _ = manifest["pairs"][0]
    try:
        with zipfile.ZipFile(plan.pack / "data.zip") as archive:
            gpu_pack.decode(archive.read(gpu_pack.packed_name(image, "image", manifest["codec"])))
    except gpu_pack.PackError as err:
        problems.append(str(err))
    for problem in problems:
        log(f"error: {problem}")
    return not problems


def train_runs(plan: Plan, designs: list[Design], data: Path, maps: Path, env: dict, clock: Clock, log: Log):
    """Each design's run, side by side for the minutes left; per run: resumed, command, exit code."""
    minutes = clock.minutes_left() - plan.finish_minutes
    runs = {d.name: {"resumed": restore_run(plan, plan.work / "runs" / d.name)} for d in designs}
    if minutes < 0.5:
        log(f"only {clock.minutes_left():.1f} min left after the teacher: no training in this call")
        return runs
    commands = {}
    for d in designs:
        run_dir = plan.work / "runs" / d.name
        commands[d.name] = train_command(plan, d, data, maps, run_dir, minutes, runs[d.name]["resumed"])
        runs[d.name]["command"] = commands[d.name]
    log(f"training {', '.join(commands)} side by side for {minutes:.1f} min each")
    for name, code in run_side_by_side(commands, env, clock.end - 30, log).items():
        runs[name]["exit"] = code
    return runs


def run_plan(plan: Plan) -> int:
    clock = Clock(plan.minutes)
    plan.out.mkdir(parents=True, exist_ok=True)
    log = Log(plan.out / "log.txt")
    if not plan.runs or len(plan.runs) > OUT_FILES - 2 or any(name not in DESIGNS for name in plan.runs):
        log(f"error: --runs: expected 1 to {OUT_FILES - 2} of {', '.join(DESIGNS)}, not {' '.join(plan.runs)}")
        return 2
    if plan.install:
        install_wheels(plan, log)
    clock.lap("install")
    if not preflight(plan, log):
        return 2
    data, manifest = prepare_data(plan, log)
    clock.lap("unpack")
    designs, maps, env = [DESIGNS[name] for name in plan.runs], plan.work / "teacher-maps", child_env(plan)
    teach_until = clock.end - 60 * plan.finish_minutes
    if any(d.distilled for d in designs) and not teach(plan, data, maps, env, teach_until, log):
        log("the teacher's maps are incomplete: the distilled runs are left out of this call")
        designs = [d for d in designs if not d.distilled]
    clock.lap("teach")
    runs = train_runs(plan, designs, data, maps, env, clock, log)
    clock.lap("train")
    summary = {
        "device": device_name(plan.device),
        "plan": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(plan).items()},
        "loader_workers": plan.loader_workers(),
        "pack": {k: manifest[k] for k in ("made", "codec", "quality", "sources")},
        "steps_seconds": clock.steps,
    }
    collect(plan, runs, summary, log)
    log(f"done in {(time.time() - clock.started) / 60:.1f} min")
    return 0 if runs and all(entry.get("exit") == 0 for entry in runs.values()) else 1


def smoke_pack(work: Path) -> Path:
    """A pack of generated pairs in two sources (no wheels), for the CPU check."""
    from crackseg.synthetic import write_synthetic_dataset

    pack_dir = work / "pack"
    if (pack_dir / "manifest.json").is_file():
        return pack_dir
    for source, seed in (("alpha", 0), ("beta", 50)):
        write_synthetic_dataset(work / "smoke-data" / source, 6, size=(64, 96), seed=seed, prefix=source)
    gpu_pack.pack(work / "smoke-data", pack_dir, 64 * MIB, reserve=0, wheels=False)
    return pack_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", type=Path, help="the folder tools/gpu_pack.py made (carried)")
    parser.add_argument("--out", type=Path, help="where the results go (default: $OUT, or WORK/out)")
    parser.add_argument("--work", type=Path, default=Plan.work, help="unpacked data, maps and runs")
    parser.add_argument("--minutes", type=float, default=Plan.minutes, help="the whole call, all steps")
    parser.add_argument("--runs", nargs="+", default=list(Plan.runs), help=f"of {', '.join(DESIGNS)}")
    parser.add_argument("--size", type=int, default=Plan.size)
    parser.add_argument("--batch-size", type=int, default=Plan.batch_size)
    parser.add_argument("--epochs", type=int, help=f"the schedule, kept when resuming (default {Plan.epochs}; smoke 1)")
    parser.add_argument("--lr", type=float, default=Plan.lr)
    parser.add_argument("--workers", type=int, help="loader processes per run (default: the cores shared out)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on CPU, on generated data unless --pack")
    parser.add_argument("--teacher", default=Plan.teacher, help="the model whose maps the distilled runs learn")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    if args.pack is None and not args.smoke:
        parser.error("--pack is required (the folder tools/gpu_pack.py made)")
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else args.work / "out")
    plan = Plan(
        pack=args.pack or args.work / "pack", out=out, work=args.work, minutes=args.minutes, runs=tuple(args.runs),
        teacher=args.teacher, size=args.size, batch_size=args.batch_size, epochs=args.epochs or Plan.epochs, lr=args.lr,
        workers=args.workers,
    )  # fmt: skip
    if args.smoke:
        plan = replace(plan.smoke(), pack=args.pack or smoke_pack(args.work), epochs=args.epochs or 1)
    elif not (plan.pack / "manifest.json").is_file():
        parser.error(f"--pack {plan.pack}: no manifest.json there; make it with tools/gpu_pack.py")
    try:
        return run_plan(plan)
    except gpu_pack.PackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
