"""Load test of `crackseg serve`: REQUESTS photos from CLIENTS concurrent clients against a server that this
script starts on 127.0.0.1, half 448×448 and half 2000×1500 JPEGs (generated cracks). Every answer is checked
(status, size, fields, and the mask PNG it links to); p50/p95 latency per size and throughput are printed.
Exits 1 if any request failed.

    python benchmarks/serve_load.py                       # 200 requests, 8 clients, the shipped default model
    python benchmarks/serve_load.py --weights runs/x/best --requests 24 --workers 1

Without a shipped model or --weights, a randomly initialised U-Net/ResNet-18 (the default model's
architecture, 448 px tiles) is served: its timings are those of the real model, its cracks are not.
"""

from __future__ import annotations

import argparse
import io
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from crackseg.io.images import encode_image
from crackseg.models.networks import ModelConfig, ModelError, build_model, resolve_weights, save_model
from crackseg.synthetic import synthetic_crack

SIZES = {"448x448": (448, 448), "2000x1500": (1500, 2000)}  # name: (height, width)


def model_weights(args, scratch: Path) -> tuple[str, str]:
    """(--weights value, description) of the model to serve."""
    if args.weights:
        return args.weights, args.weights
    try:
        return str(resolve_weights(None, args.model)), args.model or "shipped default model"
    except (ModelError, FileNotFoundError):
        config = ModelConfig(arch="unet", encoder="resnet18", train_size=448, name="random-unet-r18")
        torch.manual_seed(0)  # the same weights every run, so exported/int8 models are reused from the cache
        path = save_model(build_model("unet", "resnet18"), config, scratch / "random-unet-r18")
        return str(path), "random-init unet/resnet18 (no shipped model yet: timings only)"


def photos(seed: int = 0) -> dict[str, bytes]:
    out = {}
    for i, (name, size) in enumerate(SIZES.items()):
        image, _ = synthetic_crack(size, seed=seed + i, n_cracks=3)
        out[name] = encode_image(image, ".jpg", quality=90)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(weights: str, port: int, args, log_path: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "crackseg", "serve", "--weights", weights, "--port", str(port)]
    command += ["--workers", str(args.workers), "--backend", args.backend, "--precision", args.precision]
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900  # the first `auto` start may export and calibrate an int8 model
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise RuntimeError(f"server did not answer within 900 s:\n{log_path.read_text()}")


def check(client: httpx.Client, response: httpx.Response, size: tuple[int, int]) -> str | None:
    """None when the answer is right, else what is wrong with it."""
    if response.status_code != 200:
        return f"status {response.status_code}: {response.text[:200]}"
    body = response.json()
    height, width = size
    if (body["height"], body["width"]) != (height, width):
        return f"size {body['width']}×{body['height']}, expected {width}×{height}"
    if not 0.0 <= body["crack_fraction"] <= 1.0 or not isinstance(body["measurements"]["cracks"], list):
        return "bad crack_fraction or measurements"
    mask = client.get(body["urls"]["mask"])
    if mask.status_code != 200:
        return f"mask: status {mask.status_code}"
    pixels = np.asarray(Image.open(io.BytesIO(mask.content)))
    if pixels.shape != (height, width) or abs((pixels > 0).mean() - body["crack_fraction"]) > 1e-9:
        return "mask PNG does not match the answer"
    return None


def run_clients(base: str, jobs: list[str], data: dict[str, bytes], clients: int, timeout: float) -> tuple[list, float]:
    """Send the jobs from `clients` threads; returns ([(size name, seconds, error or None)], wall seconds)."""
    todo: queue.Queue[str] = queue.Queue()
    for job in jobs:
        todo.put(job)
    results, lock = [], threading.Lock()

    def client_loop():
        with httpx.Client(base_url=base, timeout=timeout) as client:
            while True:
                try:
                    name = todo.get_nowait()
                except queue.Empty:
                    return
                start = time.perf_counter()
                try:
                    files = {"file": (f"{name}.jpg", data[name], "image/jpeg")}
                    response = client.post("/api/predict", files=files)
                    seconds = time.perf_counter() - start  # latency of the answer, not of the check
                    error = check(client, response, SIZES[name])
                except httpx.HTTPError as err:
                    seconds, error = time.perf_counter() - start, f"{type(err).__name__}: {err}"
                with lock:
                    results.append((name, seconds, error))
                    done = len(results)
                print(f"  {done}/{len(jobs)} {name} {seconds:.1f} s {error or 'ok'}", file=sys.stderr, flush=True)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report(results: list, wall: float) -> None:
    print(f"{'photos':<12}{'n':>5}{'ok':>5}{'p50 s':>9}{'p95 s':>9}{'mean s':>9}")
    for name in [*SIZES, "all"]:
        rows = [r for r in results if name in ("all", r[0])]
        seconds = [s for _, s, e in rows if e is None]
        mean = statistics.fmean(seconds) if seconds else float("nan")
        p50, p95 = percentile(seconds, 50), percentile(seconds, 95)
        print(f"{name:<12}{len(rows):>5}{len(seconds):>5}{p50:>9.2f}{p95:>9.2f}{mean:>9.2f}")
    print(f"throughput: {len(results) / wall:.2f} requests/s ({len(results)} in {wall:.1f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="model to serve (default: the shipped default model)")
    parser.add_argument("--model", help="a shipped model by name")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="the server's --workers")
    parser.add_argument("--backend", default="auto", help="the server's --backend")
    parser.add_argument("--precision", default="auto", help="the server's --precision")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a client waits for one answer")
    args = parser.parse_args()
    # A `timeout` or kill of this script must not leave the server running: SIGTERM unwinds through `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory(prefix="crackseg-load-") as scratch:
        weights, described = model_weights(args, Path(scratch))
        data = photos()
        jobs = [list(SIZES)[i % len(SIZES)] for i in range(args.requests)]
        port = free_port()
        log_path = Path(scratch) / "server.log"
        print(f"model: {described}")
        print(
            f"server: 127.0.0.1:{port}, --workers {args.workers} --backend {args.backend} "
            f"--precision {args.precision}; {os.cpu_count()} CPUs; "
            f"{args.requests} requests from {args.clients} clients; "
            f"photos {', '.join(f'{k} ({len(v) // 1024} kB JPEG)' for k, v in data.items())}"
        )
        server = start_server(weights, port, args, log_path)
        for line in log_path.read_text().splitlines():
            if line.startswith(("model ", "backend auto")):
                print(f"server: {line}")
        try:
            results, wall = run_clients(f"http://127.0.0.1:{port}", jobs, data, args.clients, args.timeout)
        finally:
            server.terminate()  # uvicorn drains in-flight requests first: give it a moment, then stop it
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        report(results, wall)
        failures = [(name, error) for name, _, error in results if error]
        for name, error in failures[:10]:
            print(f"failed ({name}): {error}")
        print(f"{len(results) - len(failures)} succeeded, {len(failures)} failed")
        return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
