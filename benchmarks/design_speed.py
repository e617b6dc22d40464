"""What a network design costs on this CPU: GFLOP at 448² and images/s on the engines `auto` picks from.

    python benchmarks/design_speed.py --threads 1
    python benchmarks/design_speed.py --design 'unet:timm-tf_efficientnet_lite0:{"decoder_channels": [64, 32, 16, 8]}'

Each design (ARCH:ENCODER:JSON keyword arguments, as `crackseg train --arch --encoder --arch-kwargs`) is built
with its encoder's ImageNet weights where they are installed and a random decoder (speed does not depend on the
weights; a trained encoder keeps the logits in the range the export's check expects), saved as a model folder and
run as `crackseg predict` runs it, at batch 1 on 448² tiles with `--threads`: ONNX Runtime fp32, OpenVINO fp32,
OpenVINO bf16 where the CPU has bf16 matrix engines, and OpenVINO int8 where NNCF is installed (calibrated on
`--calibration-crops` generated crops: enough for its speed, which is what `auto` takes where a trained model's int8
passes the accuracy rule). Printed per design: GFLOP, parameters, images/s per engine
and the ratio to the first design (by default the default model's network) on the same engine, all measured in one
run; and the ratio of the fastest engines, which is what `auto` gives the one against the other.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from predict_speed import TILE, images_per_second, model_gflop

DESIGNS = [
    "unet:timm-tf_efficientnet_lite0:{}",  # the default model's network
    'unet:timm-tf_efficientnet_lite0:{"decoder_channels": [64, 32, 16, 16, 8]}',
    'unet:timm-tf_efficientnet_lite0:{"decoder_channels": [64, 32, 16, 8, 4]}',
    'unet:timm-tf_efficientnet_lite0:{"encoder_depth": 4, "decoder_channels": [64, 32, 16, 8]}',
    'unet:timm-tf_efficientnet_lite0:{"encoder_depth": 3, "decoder_channels": [32, 16, 8]}',
    'unetplusplus:timm-tf_efficientnet_lite0:{"decoder_channels": [64, 32, 16, 16, 8]}',
]
ENGINES = [("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]


def parse_design(text: str) -> tuple[str, str, dict]:
    arch, encoder, kwargs = text.split(":", 2)
    try:
        return arch, encoder, json.loads(kwargs or "{}")
    except json.JSONDecodeError as err:
        raise SystemExit(f"--design {text!r}: the keyword arguments are not JSON ({err})") from None


def saved_design(text: str, folder: Path) -> Path:
    from crackseg.models.networks import INSTALLED_WEIGHTS, ModelConfig, build_model, save_model

    arch, encoder, kwargs = parse_design(text)
    depth = kwargs.pop("encoder_depth", None)
    torch.manual_seed(0)
    weights = "imagenet" if encoder in INSTALLED_WEIGHTS else None
    net = build_model(arch, encoder, weights, encoder_depth=depth, **kwargs)
    config = ModelConfig(arch=arch, encoder=encoder, encoder_depth=depth, arch_kwargs=kwargs, train_size=TILE)
    return save_model(net, config, folder)


def engine_speeds(handle, iterations: int, calibration_crops: int) -> dict[str, float]:
    from crackseg.engines import build_engine
    from crackseg.engines.base import BackendError

    batch = np.random.default_rng(0).standard_normal((1, 3, TILE, TILE)).astype(np.float32)
    speeds = {}
    for backend, precision in ENGINES:
        try:
            engine = build_engine(handle, TILE, backend, precision, calibration_crops=calibration_crops, batch_size=1)
        except BackendError:  # no bf16 matrix engine here, or the runtime or NNCF is missing
            continue
        speeds[f"{backend} {precision}"] = images_per_second(engine, batch, iterations)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--design", nargs="+", default=DESIGNS, help="ARCH:ENCODER:JSON (default: a few U-Nets)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--calibration-crops", type=int, default=16, help="generated crops that calibrate int8")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from crackseg.engines import ModelHandle

    rows = []
    with tempfile.TemporaryDirectory(prefix="crackseg-designs-") as tmp:
        os.environ.setdefault("CRACKSEG_CACHE", str(Path(tmp) / "cache"))
        for i, design in enumerate(args.design):
            handle = ModelHandle.find(saved_design(design, Path(tmp) / str(i)))
            params = sum(p.numel() for p in handle.network.parameters()) / 1e6
            speeds = engine_speeds(handle, args.iterations, args.calibration_crops)
            rows.append((design, model_gflop(handle.network), params, speeds))
    first = rows[0][3]
    print(f"448², batch 1, {args.threads} thread(s); images/s (× the first design on the same engine)")
    for design, gflop, params, speeds in rows:
        each = ", ".join(f"{name} {s:.1f} ({s / first[name]:.2f}×)" for name, s in speeds.items())
        fastest = max(speeds.values()) / max(first.values())
        print(f"{design}\n  {gflop:.2f} GFLOP, {params:.2f} M parameters; {each}; fastest / fastest {fastest:.2f}×")


if __name__ == "__main__":
    main()
