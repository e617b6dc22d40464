"""Inference speed of every backend × precision, side by side in one run, plus end-to-end `crackseg predict`.

    python benchmarks/predict_speed.py [--weights MODEL] [--threads 2] [--data ../shared/data] [--quick]

Prints (a) images/s at 448² for batch 1 and 8 of PyTorch fp32 / fp32 channels_last / bf16, ONNX Runtime fp32 /
int8 and OpenVINO fp32 / bf16 / int8, with the ratio to PyTorch fp32 measured in the same run, and what `auto`
chose (with the timings it chose by) next to the fastest engine of the table; (b) achieved
GFLOP/s (model FLOPs from torch.utils.flop_counter × images/s) against the measured matmul peak; (c) the
agreement of each with fp32 PyTorch (mask F1, p99.9 |Δp|) on validation crops of --data, or on generated
cracks; (d) end-to-end `crackseg predict --backend auto` wall time and peak RSS (of the child process) for a
4000×3000 JPEG and a 20,000×5,000 image, first run (export/calibration included) and cached run.
Without --weights a randomly initialised PSPNet-ResNet18 is used (speed figures hold; agreement figures of a
random network say little about int8 on a trained one). --quick: batch 1 only, few iterations, small
calibration, and only the 4000×3000 image end to end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

TILE = 448


def images_per_second(run, batch: np.ndarray, iterations: int) -> float:
    run(batch)  # warm-up: first-call allocations and kernel selection
    run(batch)
    start = time.perf_counter()
    for _ in range(iterations):
        run(batch)
    return iterations * len(batch) / (time.perf_counter() - start)


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeat: int = 5) -> float:
    """GFLOP/s of a square matmul: the ceiling a convolution network can approach."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeat):
        torch.mm(a, b)
    return 2 * size**3 * repeat / (time.perf_counter() - start) / 1e9


def model_gflop(net: torch.nn.Module) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, TILE, TILE))
    return counter.get_total_flops() / 1e9


class Contiguous:
    """Plain eager PyTorch fp32, contiguous (NCHW) tensors: the baseline every ratio refers to."""

    name, precision, fixed_size = "torch", "fp32 contiguous", None

    def __init__(self, net):
        self.net = net.eval()

    @torch.inference_mode()
    def __call__(self, batch):
        return self.net(torch.from_numpy(batch))[:, 0].numpy()


def engines(handle, crops, hardware_bf16: bool):
    """(label, engine or None, reason) for every backend × precision, in table order, then the engine the Python
    API's defaults pick (`CrackSegmenter.from_pretrained()`, as `crackseg predict`)."""
    import copy

    from crackseg.engines import BackendError, build_backend
    from crackseg.engines.int8 import nncf_available
    from crackseg.engines.torch_engine import TorchBackend
    from crackseg.inference import CrackSegmenter

    net = handle.network

    yield "torch fp32", Contiguous(copy.deepcopy(net)), ""
    yield "torch fp32 channels_last", TorchBackend(copy.deepcopy(net), "fp32"), ""  # what --backend torch runs
    no_bf16 = "skipped: no bf16 hardware"
    if hardware_bf16:
        yield "torch bf16 + channels_last", TorchBackend(copy.deepcopy(net), "bf16"), ""
    else:
        yield "torch bf16 + channels_last", None, no_bf16
    for backend, precision in [
        ("onnx", "fp32"),
        ("onnx", "int8"),
        ("openvino", "fp32"),
        ("openvino", "bf16"),
        ("openvino", "int8"),
    ]:
        label = f"{backend} {precision}"
        if precision == "bf16" and not hardware_bf16:
            yield label, None, no_bf16
            continue
        if backend == "openvino" and precision == "int8" and not nncf_available():
            yield label, None, "skipped: NNCF not installed"
            continue
        try:
            started = time.perf_counter()
            engine = build_backend(backend, precision, handle, TILE, crops=crops)
            print(f"  built {label} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            yield label, engine, ""
        except (BackendError, RuntimeError, ImportError) as err:
            yield label, None, f"failed: {err}"
    api = CrackSegmenter.from_pretrained(handle.path, tile=TILE).backend
    yield f"Python API: {api.name} {api.precision}", api, ""


def throughput_table(handle, args, gflop: float, peak: float) -> None:
    from crackseg.engines.base import cpu_has_bf16_matrix_engine
    from crackseg.engines.int8 import MIN_MASK_F1, CalibrationCrops, measure_agreement
    from crackseg.engines.torch_engine import TorchBackend

    net, config = handle.network, handle.config

    crops = CalibrationCrops(config, TILE, count=args.calibration_crops, data=args.data)
    check = list(CalibrationCrops(config, TILE, count=args.agreement_crops, data=args.data, split="val"))
    batches = [1] if args.quick else [1, 8]
    rng = np.random.default_rng(0)
    inputs = {n: rng.standard_normal((n, 3, TILE, TILE)).astype(np.float32) for n in batches}
    iterations = {1: 3 if args.quick else 20, 8: 4}
    header = "".join(f"{f'b{n} img/s':>11}{'×fp32':>7}{'GFLOP/s':>9}" for n in batches)
    print(f"\n{'backend precision':<28}{header}{'mask F1':>9}{'p99.9|Δp|':>11}")
    baseline, api = {}, None
    speeds = {n: {} for n in batches}  # batch → {"backend precision": img/s} of the engines auto can run
    inaccurate = set()  # of those, the ones whose masks agree with fp32's under MIN_MASK_F1 on `check`
    for label, engine, reason in engines(handle, crops, cpu_has_bf16_matrix_engine()):
        if engine is None:
            print(f"{label:<28}{reason}")
            continue
        cells = ""
        for n in batches:
            speed = images_per_second(engine, inputs[n], iterations[n])
            baseline.setdefault(n, speed)
            cells += f"{speed:>11.2f}{speed / baseline[n]:>7.2f}{speed * gflop:>9.1f}"
            if label.startswith("Python API"):
                api = engine
            elif not isinstance(engine, Contiguous):
                speeds[n][f"{engine.name} {engine.precision}"] = speed
        figures = measure_agreement(engine, TorchBackend(net, "fp32"), check, config.threshold)
        print(f"{label:<28}{cells}{figures['f1']:>9.4f}{figures['p999']:>11.4f}", flush=True)
        if figures["f1"] < MIN_MASK_F1:  # not the engine to hold auto's choice against
            inaccurate.add(f"{engine.name} {engine.precision}")
    print(f"(GFLOP/s = {gflop:.2f} GFLOP per image × img/s; measured fp32 matmul peak {peak:.0f} GFLOP/s)")
    auto_against_fastest(api, speeds, inaccurate)


def auto_against_fastest(api, speeds: dict[int, dict[str, float]], inaccurate: set[str]) -> None:
    """What `auto` chose (and the timings it chose by) next to the fastest accurate engine of the table (masks
    agreeing with fp32's at F1 >= MIN_MASK_F1 on this table's crops), per batch size. auto judges int8 on its own,
    larger sample of held-out crops, so its choice may be one this table's sample judged otherwise."""
    from crackseg.engines.int8 import MIN_MASK_F1
    from crackseg.options import SegmentOptions

    chosen, batch = f"{api.name} {api.precision}", SegmentOptions().batch_size
    print(f"auto chose {chosen}, timing its candidates at batch {batch} ({getattr(api, 'choice', '')})")
    for n, table in speeds.items():
        accurate = {name: speed for name, speed in table.items() if name not in inaccurate}
        fastest = max(accurate, key=accurate.get)
        verdict = "the same" if fastest == chosen else f"auto's choice {table.get(chosen, float('nan')):.2f} img/s"
        if chosen in inaccurate:
            verdict += f" (under {MIN_MASK_F1} mask agreement on this table's crops)"
        ratio = table.get(chosen, float("nan")) / accurate[fastest]
        print(
            f"  b{n}: fastest accurate in this table {fastest} {accurate[fastest]:.2f} img/s; {verdict} ({ratio:.2f}×)"
        )


def high_water_kb(pid: int) -> int:
    """Peak resident memory (VmHWM, KiB) of a running process; 0 once it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def run_predict(args, image: Path, out: Path, env: dict) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GB) and the auto line of one `crackseg predict` child process."""
    command = [sys.executable, "-m", "crackseg", "predict", str(image), "-o", str(out), "--overwrite"]  # run again
    command += ["--tile", str(TILE), "--weights", str(args.weights[0])]  # the first model
    log = out.parent / "predict.log"
    started = time.perf_counter()
    peak_kb = 0
    with open(log, "w") as sink:
        child = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
        # The child's VmHWM, polled: its rusage maxrss would include this (large) process's RSS, which Linux
        # carries over into a child's maxrss at fork/exec.
        while child.poll() is None:
            peak_kb = max(peak_kb, high_water_kb(child.pid))
            time.sleep(0.05)
    seconds = time.perf_counter() - started
    stderr = log.read_text()
    if child.returncode != 0:
        raise SystemExit(f"crackseg predict failed on {image}:\n{stderr[-2000:]}")
    choice = next((line for line in stderr.splitlines() if line.startswith("model ")), "")  # model NAME; engine
    return seconds, peak_kb / 1e6, choice


def end_to_end(args, workdir: Path) -> None:
    from crackseg.io.images import write_image
    from crackseg.synthetic import synthetic_crack

    sizes = [(3000, 4000)] + ([] if args.quick else [(5000, 20000)])
    # A fresh cache makes the first run a true cold start (export and calibration included); --quick shares
    # the cache the table above filled, so its first run skips the 300-crop calibration.
    cache = args.cache or (os.environ["CRACKSEG_CACHE"] if args.quick else workdir / "e2e-cache")
    env = dict(os.environ, CRACKSEG_CACHE=str(cache))
    print(f"\nend to end: crackseg predict --tile {TILE}, backend and precision auto (cache {cache})")
    for height, width in sizes:
        image = workdir / f"photo_{width}x{height}.jpg"
        write_image(image, synthetic_crack((height, width), seed=1, n_cracks=12)[0], quality=92)
        for run in ("first run", "cached run"):
            seconds, rss, choice = run_predict(args, image, workdir / "out", env)
            print(
                f"  {width}×{height} {run:<11} {seconds:7.1f} s   peak RSS {rss:5.2f} GB   {choice}",
                flush=True,
            )
    if args.quick:
        print("  20000×5000: skipped in --quick")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--weights", nargs="+", help="crackseg models, each measured in turn (default: random-init PSPNet-ResNet18)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", nargs="*", default=[], help="crackseg data folders for calibration/agreement")
    parser.add_argument("--calibration-crops", type=int, help="int8 calibration crops (default 300; quick 32)")
    parser.add_argument("--agreement-crops", type=int, help="validation crops for agreement (default 64)")
    parser.add_argument("--cache", help="crackseg cache folder (default: a fresh temporary one)")
    parser.add_argument("--quick", action="store_true", help="batch 1 only, few iterations, one e2e image")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end crackseg predict runs")
    parser.add_argument("--e2e-only", action="store_true", help="only the end-to-end crackseg predict runs")
    args = parser.parse_args()
    args.calibration_crops = args.calibration_crops or (32 if args.quick else 300)
    args.agreement_crops = args.agreement_crops or (16 if args.quick else 64)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the end-to-end child processes

    from crackseg.engines import ModelHandle
    from crackseg.engines.base import cpu_has_bf16_matrix_engine
    from crackseg.models.networks import ModelConfig, build_model, save_model

    with tempfile.TemporaryDirectory(prefix="crackseg-bench-") as tmp:
        workdir = Path(tmp)
        os.environ.setdefault("CRACKSEG_CACHE", str(args.cache or workdir / "cache"))
        if not args.weights:
            torch.manual_seed(0)
            config = ModelConfig(arch="pspnet", encoder="resnet18", train_size=TILE, name="random-pspnet-r18")
            args.weights = [save_model(build_model("pspnet", "resnet18"), config, workdir / "model")]
        peak = matmul_peak(torch.float32)
        bf16 = cpu_has_bf16_matrix_engine()
        print(f"CPU bf16 matrix engine: {'yes' if bf16 else 'no'}; fp32 matmul peak {peak:.0f} GFLOP/s", end="")
        print(f"; bf16 peak {matmul_peak(torch.bfloat16):.0f} GFLOP/s" if bf16 else "")
        for weights in args.weights if not args.e2e_only else []:
            handle = ModelHandle.find(weights)
            gflop = model_gflop(handle.network)
            name = handle.config.name or handle.path
            print(f"\nmodel {name} ({handle.config.arch}-{handle.config.encoder}), {TILE}², {args.threads} thr.")
            throughput_table(handle, args, gflop, peak)
        if not args.skip_e2e:
            end_to_end(args, workdir)


if __name__ == "__main__":
    main()
