"""ONNX export, its cache, int8 calibration, and the ONNX Runtime / OpenVINO backends against fp32 PyTorch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from crackseg import engines
from crackseg.cli import main
from crackseg.engines import BackendError, ModelHandle, auto_candidates, export_model, int8
from crackseg.engines import cache as export
from crackseg.engines.cache import ExportError, cache_dir, cached_onnx, export_onnx
from crackseg.engines.int8 import CalibrationCrops, agreement, is_accurate
from crackseg.engines.onnxruntime_engine import OnnxBackend
from crackseg.engines.torch_engine import TorchBackend
from crackseg.errors import CracksegError
from crackseg.inference import CrackSegmenter
from crackseg.io.images import normalize_image, write_image
from crackseg.models import onnx_file
from crackseg.models.networks import ModelError
from crackseg.synthetic import synthetic_crack

TILE = 64


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache folder for this module: exports made by one test are reused by the others."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRACKSEG_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return ModelHandle.find(tiny_model_dir)


@pytest.fixture(scope="module")
def exported(cache, tiny):
    return cached_onnx(tiny, TILE)


@pytest.fixture(scope="module")
def image():
    return synthetic_crack((100, 150), seed=5)[0]  # larger than a tile on both sides: tiled and blended


@pytest.fixture(scope="module")
def reference(tiny_model_dir, image):
    return CrackSegmenter.from_pretrained(tiny_model_dir, backend="torch", precision="fp32", tile=TILE).predict_prob(
        image
    )


def test_export_matches_torch_for_any_batch(exported, tiny):
    net = tiny.network
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, TILE, TILE]
    x = torch.randn(3, 3, TILE, TILE, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = net(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == (3, 1, TILE, TILE)
    assert np.abs(got - expected).max() < 1e-4


def test_config_is_embedded_as_metadata(exported, tiny):
    assert onnx_file.read_metadata(exported)["tile"] == str(TILE)
    assert onnx_file.read_config(exported) == tiny.config


def test_export_refuses_a_model_that_differs_from_torch(exported, tiny, monkeypatch):
    monkeypatch.setattr(export, "relative_logit_difference", lambda *args, **kwargs: 0.5)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_onnx(tiny.network, tiny.config, TILE)


def test_export_of_a_model_with_large_logits_passes_within_float_rounding(tiny):
    """A well-trained model's logits reach 10-20, and float32 rounding grows with them: the check is relative to
    the largest logit, so such a model exports, while a wrong graph (a share of the logits off) is still refused."""

    class Sharp(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return 1000.0 * self.net(x)

    sharp = Sharp(tiny.network).eval()
    runnable = onnx_file.runnable(export_onnx(sharp, tiny.config, TILE), TILE)
    assert export.relative_logit_difference(sharp, runnable, TILE) < export.MAX_EXPORT_DIFF
    assert export.relative_logit_difference(Sharp(Sharp(tiny.network)).eval(), runnable, TILE) > 0.5


def test_second_run_reuses_the_cached_export(exported, tiny, monkeypatch):
    before = exported.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("exported again despite the cache")

    monkeypatch.setattr(export, "export_onnx", fail)
    assert cached_onnx(tiny, TILE) == exported
    assert exported.stat().st_mtime_ns == before
    # the key covers tile, backend and precision: another tile is another entry
    assert export.cache_path(tiny, TILE * 2, "onnx", "fp32", ".onnx") != exported
    assert export.cache_path(tiny, TILE, "onnx", "int8", ".onnx") != exported


def test_a_config_naming_another_network_is_refused_not_run_from_the_cache(exported, tiny, tmp_path):
    # the same weights beside a config.json that names another architecture: a new cache entry, whose export
    # builds the network the config names and refuses the mismatch, under auto as under --backend torch
    folder = tmp_path / "edited"
    folder.mkdir()
    shutil.copy(tiny.path, folder / "model.safetensors")
    config = json.loads((tiny.path.parent / "config.json").read_text()) | {"arch": "unet"}
    (folder / "config.json").write_text(json.dumps(config))
    edited = ModelHandle.find(folder)
    assert export.cache_path(edited, TILE, "onnx", "fp32", ".onnx") != exported
    for backend in ("auto", "onnx", "torch"):
        with pytest.raises(CracksegError, match="do not match the config"):
            CrackSegmenter.from_pretrained(folder, backend=backend, tile=TILE)


def test_an_onnx_model_runs_and_exports_without_loading_the_network(tiny_model_dir, tmp_path, monkeypatch):
    first, _ = export_model(tiny_model_dir, out=tmp_path / "model.onnx", tile=TILE)

    def fail(handle):
        raise AssertionError("the torch network was loaded for a model that is ONNX already")

    # The handle is the engines' one way to the network: patched on the class, it is caught however the code
    # that asks for it imports its names.
    monkeypatch.setattr(ModelHandle, "network", property(fail))
    again, _ = export_model(first, out=tmp_path / "again.onnx")
    assert again.read_bytes() == first.read_bytes()
    image, _ = synthetic_crack((80, 100), seed=2)
    onnx_prob = CrackSegmenter.from_pretrained(first, backend="onnx", tile=TILE).predict_prob(image)
    monkeypatch.undo()
    fp32 = CrackSegmenter.from_pretrained(tiny_model_dir, backend="torch", precision="fp32", tile=TILE)
    assert np.abs(onnx_prob - fp32.predict_prob(image)).max() < 1e-4


def test_an_exported_model_loads_back_into_pytorch_with_the_same_weights(tiny, tmp_path):
    out, _ = export_model(tiny.path, out=tmp_path / "model.onnx", tile=TILE)
    back = ModelHandle.find(out).network.state_dict()
    for name, tensor in tiny.network.state_dict().items():
        assert name.endswith("num_batches_tracked") or torch.equal(back[name], tensor), name


def same_threads() -> dict[str, str]:
    """The environment that gives a fresh process this one's thread count, and so finds the choice `auto` measured
    here (the count is part of its key)."""
    return {"OMP_NUM_THREADS": str(torch.get_num_threads())}


def run_fresh(code: str, cache, image, name: str) -> subprocess.CompletedProcess:
    """Run `code` in a new process (as every command is) on CACHE/NAME.png -> CACHE/NAME-out; it must succeed."""
    write_image(cache / f"{name}.png", image)
    done = subprocess.run(
        [sys.executable, "-c", code, str(cache / f"{name}.png"), str(cache / f"{name}-out")],
        capture_output=True, text=True, timeout=120, env=os.environ | {"CRACKSEG_CACHE": str(cache), **same_threads()},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_cached_export_predicts_without_importing_torch(exported, cache, tiny_model_dir, image, reference):
    # A fresh process, as every command is: with the export cached, `crackseg predict` needs neither the network
    # nor torch nor segmentation-models-pytorch, both slow to import.
    code = (
        "import sys; from crackseg.cli import main; "
        f"rc = main(['predict', sys.argv[1], '-o', sys.argv[2], '--weights', {str(tiny_model_dir)!r}, "
        f"'--backend', 'onnx', '--precision', 'fp32', '--tile', '{TILE}', '--prob']); "
        "import crackseg.evaluate, crackseg.measure.figure, crackseg.serve.app; "  # nor do evaluate, measure and serve
        "print(rc, *(name in sys.modules for name in ('torch', 'segmentation_models_pytorch')))"
    )
    done = run_fresh(code, cache, image, "photo")
    assert done.stdout.split()[-3:] == ["0", "False", "False"]
    prob = np.asarray(Image.open(cache / "photo-out" / "photo_prob.png"), np.float32) / 255  # rounded to 1/255
    assert agreement(reference, prob)["f1"] >= 0.98


def test_broken_weights_are_reported_as_such_not_as_missing_backends(cache, tmp_path):
    # Nothing cached for these bytes: the export loads the file and says what is wrong with it.
    bogus = tmp_path / "model.pth"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="model.pth: not a readable weights file"):
        CrackSegmenter.from_pretrained(bogus, tile=TILE)


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_fp32_backends_agree_with_torch(exported, tiny_model_dir, image, reference, backend):
    segmenter = CrackSegmenter.from_pretrained(tiny_model_dir, backend=backend, precision="fp32", tile=TILE)
    assert (segmenter.backend.name, segmenter.backend.precision, segmenter.tile) == (backend, "fp32", TILE)
    prob = segmenter.predict_prob(image)
    assert prob.shape == image.shape[:2] and prob.dtype == np.float32
    assert agreement(reference, prob)["f1"] == 1.0
    assert np.abs(prob - reference).max() < 1e-4


def test_openvino_runs_batches_on_models_compiled_for_their_size(exported):
    """OpenVINO compiles the model per batch size, every dimension fixed. A size asked for the first time runs padded
    on a larger size compiled already, and is compiled when asked again. Whichever way it runs, each tile gets the
    map it gets alone."""
    from crackseg.engines.openvino_engine import OpenVinoBackend

    engine = OpenVinoBackend(exported)
    batch = np.random.default_rng(0).standard_normal((3, 3, TILE, TILE), dtype=np.float32)
    alone = np.concatenate([engine(batch[i : i + 1]) for i in range(3)])
    together, padded = engine(batch), engine(batch[1:])
    assert np.abs(together - alone).max() < 1e-4 and np.abs(padded - alone[1:]).max() < 1e-4
    assert padded.shape == (2, TILE, TILE) and sorted(engine._compiled) == [1, 3]
    again = engine(batch[1:])
    assert np.abs(again - alone[1:]).max() < 1e-4 and sorted(engine._compiled) == [1, 2, 3]
    assert engine.static_path(3).is_file()  # saved beside the source, found by path next time
    stat = exported.stat()
    os.utime(exported, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # the source made again
    remade = OpenVinoBackend(exported)
    assert remade.static_path(3) != engine.static_path(3)
    remade(batch)
    assert remade.static_path(3).is_file() and not engine.static_path(3).parent.exists()  # the older copy removed
    assert engine.static_path(1).is_file()  # a size the remade source has not run yet keeps its copy until it does


def test_small_image_is_padded_to_the_fixed_tile(exported, tiny_model_dir):
    small = synthetic_crack((40, 50), seed=2)[0]
    torch_prob = CrackSegmenter.from_pretrained(
        tiny_model_dir, backend="torch", precision="fp32", tile=TILE
    ).predict_prob(small)
    onnx_prob = CrackSegmenter.from_pretrained(
        tiny_model_dir, backend="onnx", precision="fp32", tile=TILE
    ).predict_prob(small)
    assert onnx_prob.shape == (40, 50)
    # torch pads only to the network's stride, onnx to the tile: same content, nearly the same output
    assert agreement(torch_prob, onnx_prob)["f1"] >= 0.98


def test_calibration_crops_from_a_data_folder(synthetic_root, tiny):
    config = tiny.config
    crops = CalibrationCrops(config, 48, count=5, data=[str(synthetic_root)], batch_size=2)
    batches = list(crops)
    assert [b.shape for b in batches] == [(2, 3, 48, 48), (2, 3, 48, 48), (1, 3, 48, 48)]
    assert len(crops) == 3
    again = list(crops)  # re-iterable and deterministic, as quantizers may read it twice
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    assert "syn" in crops.describe() or str(synthetic_root) in crops.describe()


def int8_record(tiny, backend: str) -> Path:
    """Where the figures of the cached int8 model of `tiny` for `backend` are kept."""
    return Path(f"{int8.int8_cache_path(tiny, TILE, backend)}.agreement.json")


def auto_choice(tiny_model_dir) -> tuple[str, str]:
    backend = CrackSegmenter.from_pretrained(tiny_model_dir, tile=TILE).backend
    return backend.name, backend.precision


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_int8_calibration_runs_and_auto_uses_it_only_if_accurate(
    exported, tiny, tiny_model_dir, image, monkeypatch, backend
):
    if backend == "openvino" and not int8.nncf_available():
        pytest.skip("NNCF is not installed")
    crops = CalibrationCrops(tiny.config, TILE, count=4)
    engine, figures = int8.verified_int8(tiny, TILE, backend, crops, engines.INT8_OPENERS[backend])
    assert engine.precision == "int8" and engine.fixed_size == TILE
    assert {"f1", "f1_fp32", "mask_f1", "p999"} <= set(figures)
    # judged on enough held-out crops for a steady verdict, however few crops calibrated it
    assert figures["held_out"].startswith(f"{int8.HELD_OUT_CROPS} random {TILE}² crops") and int8.HELD_OUT_CROPS >= 128
    explicit = CrackSegmenter.from_pretrained(
        tiny_model_dir, backend=backend, precision="int8", tile=TILE, calibration_crops=4
    )
    assert (explicit.backend.name, explicit.backend.precision) == (backend, "int8")
    assert explicit.predict_prob(image).shape == image.shape[:2]
    # auto's choice follows the recorded verdict, whichever it is: forced both ways, int8 timed the faster
    monkeypatch.setattr(engines, "auto_candidates", lambda device="cpu": [(backend, "int8"), ("torch", "fp32")])
    monkeypatch.setattr(engines.auto, "measure_speed", lambda engine, *args: 2.0 if engine.precision == "int8" else 1.0)
    record, measured = int8_record(tiny, backend), int8_record(tiny, backend).read_text()
    held_out = {"held_out_crops": int8.HELD_OUT_CROPS}
    try:
        record.write_text(json.dumps({"f1": 0.758, "f1_fp32": 0.76, "mask_f1": 0.99, "p999": 0.05} | held_out))
        assert auto_choice(tiny_model_dir) == (backend, "int8")
        record.write_text(json.dumps({"f1": 0.76, "f1_fp32": 0.76, "mask_f1": 0.97, "p999": 0.001} | held_out))
        assert auto_choice(tiny_model_dir) == ("torch", "fp32")
    finally:
        record.write_text(measured)  # the other tests see the verdict this model really earned


def test_openvino_int8_runs_without_nncf_once_calibrated(exported, tiny, monkeypatch):
    """Calibrating needs NNCF, running does not: the core install runs the int8 model that an install with NNCF
    calibrated into the same cache, and says which extra calibrating needs where there is none."""
    from crackseg.engines import openvino_engine

    if not int8.nncf_available():
        pytest.skip("NNCF is not installed")
    crops = CalibrationCrops(tiny.config, TILE, count=4)
    int8.verified_int8(tiny, TILE, "openvino", crops, engines.INT8_OPENERS["openvino"])
    monkeypatch.setattr(int8, "nncf_available", lambda: False)
    assert ("openvino", "int8") in auto_candidates()
    engine = openvino_engine.build(tiny, "int8", TILE, "cpu", crops, calibrate=False)
    assert (engine.name, engine.precision, engine.fixed_size) == ("openvino", "int8", TILE)
    with pytest.raises(BackendError, match=r"calibrating needs NNCF: pip install 'crackseg\[int8\]'"):
        openvino_engine.build(tiny, "int8", TILE + 32, "cpu", crops)


def test_auto_picks_an_accurate_backend_quietly_and_describes_it(exported, tiny_model_dir, image, reference, capsys):
    first = CrackSegmenter.from_pretrained(tiny_model_dir, tile=TILE, calibration_crops=4)
    assert (first.backend.name, first.backend.precision) in auto_candidates()
    assert agreement(reference, first.predict_prob(image))["f1"] >= 0.98
    assert capsys.readouterr().err == ""  # the library prints nothing; the choice is readable instead
    assert first.describe().startswith(f"{first.backend.name} {first.backend.precision} (auto: the fastest")


@pytest.mark.parametrize("bf16_engine", [True, False], ids=["bf16-cpu", "avx2-cpu"])
def test_auto_falls_back_to_torch_when_other_backends_fail(tiny_model_dir, monkeypatch, capsys, bf16_engine):
    # torch bf16 where the CPU has bf16 matrix engines, torch fp32 elsewhere: whatever CPU the tests run on
    monkeypatch.setattr(engines, "cpu_has_bf16_matrix_engine", lambda: bf16_engine)
    monkeypatch.setattr(engines.auto, "measure_speed", lambda engine, *args: 2.0 if engine.precision == "bf16" else 1.0)
    expected = "bf16" if bf16_engine else "fp32"
    real = engines.build_backend

    def broken(backend, *args, **kwargs):
        if backend != "torch":
            raise RuntimeError(f"{backend} is broken")
        return real(backend, *args, **kwargs)

    monkeypatch.setattr(engines, "build_backend", broken)
    for earlier in cache_dir().glob("auto-*.json"):  # an earlier test's choice would be read, not made
        earlier.unlink()
    segmenter = CrackSegmenter.from_pretrained(tiny_model_dir, tile=TILE)
    assert (segmenter.backend.name, segmenter.backend.precision) == ("torch", expected)
    # every other candidate was tried, and the description says why each was passed over
    description = segmenter.describe()
    assert description.startswith(f"torch {expected} (auto: ")
    unavailable = description.split("unavailable: ")[1]
    fp32 = [] if bf16_engine else ["onnx fp32", "openvino fp32"]
    for name in ["openvino bf16"] * bf16_engine + fp32:
        assert name in unavailable and f"({name.split()[0]} is broken)" in unavailable


def test_unavailable_combinations_say_what_to_do(tiny_model_dir):
    with pytest.raises(BackendError, match="onnx or openvino"):
        CrackSegmenter.from_pretrained(tiny_model_dir, backend="torch", precision="int8")
    with pytest.raises(BackendError, match="bf16"):
        CrackSegmenter.from_pretrained(tiny_model_dir, backend="onnx", precision="bf16", tile=TILE)


def test_export_command_writes_a_checked_onnx_file(exported, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(tiny_model_dir), "-o", str(out), "--tile", str(TILE)]) == 0
    assert onnx_file.read_config(out) == ModelHandle.find(tiny_model_dir).config
    assert str(out) in capsys.readouterr().out


def test_an_exported_shipped_model_keeps_its_folders_config(tmp_path):
    """The default model's folder pins the tile its threshold was chosen at (its file's own config does not); the
    file `crackseg export` writes carries the folder's config, so it runs the same way alone."""
    out = tmp_path / "default.onnx"
    assert main(["export", "--model", "unet-lite0", "-o", str(out)]) == 0
    shipped = ModelHandle.find(None, "unet-lite0").config
    assert shipped.tile == 256 and onnx_file.read_config(out) == shipped
    assert onnx_file.read_config(ModelHandle.find(None, "unet-lite0").path).tile is None


def test_int8_keeps_the_stem_and_head_convolutions_in_float(exported, tiny, tmp_path):
    import onnx

    path = int8.quantize_onnx_int8(exported, tmp_path / "int8.onnx", CalibrationCrops(tiny.config, TILE, count=4))
    graph = onnx.load(str(path)).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    convolutions = [node for node in graph.node if node.op_type == "Conv"]
    weight_is_int8 = [node.input[1] in dequantized for node in convolutions]
    assert len(convolutions) >= 3
    assert weight_is_int8[0] is False and weight_is_int8[-1] is False
    assert all(weight_is_int8[1:-1])


def test_openvino_int8_quantizes_the_network_with_its_batch_norms_folded(exported, tiny, tmp_path):
    """An exported network keeps its batch norms as separate operations; quantized so, every convolution's output
    would be rounded to int8 once more on its way into its batch norm (which cost the default model 0.02 of mask
    agreement). Folded into the convolutions first, only the convolutions' inputs and weights are quantized."""
    import openvino as ov

    folder = int8.quantize_openvino_int8(exported, tmp_path / "int8", CalibrationCrops(tiny.config, TILE, count=4))
    model = ov.Core().read_model(str(folder / "model.xml"))
    kinds = Counter(op.get_type_name() for op in model.get_ordered_ops())
    fed = Counter(
        target.get_node().get_type_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "FakeQuantize"
        for target in op.output(0).get_target_inputs()
    )
    assert kinds["FakeQuantize"] > 0 and kinds["BatchNormInference"] == 0
    assert fed["Convolution"] > 0 and "BatchNormInference" not in fed


@pytest.mark.parametrize("vnni", [True, False])
def test_int8_weights_keep_clear_of_the_16_bit_overflow_on_cpus_without_vnni(
    exported, tiny, tmp_path, monkeypatch, vnni
):
    import onnx
    from onnx import numpy_helper

    monkeypatch.setattr(int8, "cpu_has_vnni", lambda: vnni)
    path = int8.quantize_onnx_int8(exported, tmp_path / "int8.onnx", CalibrationCrops(tiny.config, TILE, count=4))
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.data_type == 3]  # int8
    largest = max(int(np.abs(w.astype(np.int16)).max()) for w in weights)
    assert largest <= 64 if not vnni else largest == 127  # 7-bit weights: pairs of u8×s7 products fit in int16
    assert ("overflow" in int8.int8_cache_path(tiny, TILE, "onnx").name) is not vnni


@pytest.mark.parametrize(
    ("cap", "vnni", "bf16"), [("AVX2", False, False), ("avx512_core_vnni", True, False), ("", True, True)]
)
def test_an_instruction_set_cap_for_onednn_holds_the_engine_choices_to_it(monkeypatch, cap, vnni, bf16):
    from crackseg.engines import base
    from crackseg.engines.auto import cpu_identity

    monkeypatch.setattr(Path, "read_text", lambda self: "flags\t: avx2 avx512_vnni avx512_bf16 amx_int8 amx_bf16\n")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    base.cpu_flags.cache_clear()
    try:
        assert base.cpu_has_vnni() is vnni and base.cpu_has_bf16_matrix_engine() is bf16
        assert cpu_identity().get("isa_cap") == (cap or None)  # auto's timings are kept apart per cap
    finally:
        monkeypatch.undo()
        base.cpu_flags.cache_clear()


def test_auto_never_calibrates_int8_by_itself(exported, tiny_model_dir, tmp_path, monkeypatch):
    (tmp_path / exported.name).write_bytes(exported.read_bytes())  # a cache with the fp32 export only
    monkeypatch.setenv("CRACKSEG_CACHE", str(tmp_path))

    calibrations = []

    def calibrate(*args, **kwargs):
        calibrations.append(args)
        raise RuntimeError("auto started an int8 calibration")  # an error auto would catch and pass over

    monkeypatch.setattr(int8, "cached_int8", calibrate)
    monkeypatch.setattr(int8, "quantize_onnx_int8", calibrate)
    monkeypatch.setattr(int8, "quantize_openvino_int8", calibrate)
    segmenter = CrackSegmenter.from_pretrained(tiny_model_dir, tile=TILE)
    assert calibrations == [] and segmenter.backend.precision != "int8"
    assert not [path for path in tmp_path.rglob("*") if "int8" in path.name]  # no int8 model, no figures


def test_export_command_int8_reports_agreement(exported, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "int8.onnx"
    argv = ["export", "--weights", str(tiny_model_dir), "-o", str(out), "--tile", str(TILE)]
    assert main(argv + ["--precision", "int8", "--calibration-crops", "4"]) == 0
    assert "int8_calibration" in onnx_file.read_metadata(out)
    assert "onnx: crack F1" in capsys.readouterr().out


def test_python_api_defaults_pick_the_same_engine_as_the_cli_without_torch(
    exported, cache, tiny_model_dir, image, monkeypatch
):
    # One constructor behind every caller: the README's Python example runs what `crackseg predict` runs. Here
    # `auto` measures a runtime other than torch fastest, and the fresh process reads that choice without timing.
    for record in cache.glob("auto-*.json"):
        record.unlink()
    monkeypatch.setattr(engines.auto, "measure_speed", lambda engine, *args: 1.0 if engine.name == "torch" else 2.0)
    CrackSegmenter.from_pretrained(tiny_model_dir, tile=TILE)
    code = (
        "import sys; from crackseg import CrackSegmenter; from crackseg.cli import main; "
        f"seg = CrackSegmenter.from_pretrained({str(tiny_model_dir)!r}, tile={TILE}); "
        f"rc = main(['predict', sys.argv[1], '-o', sys.argv[2], '--weights', {str(tiny_model_dir)!r}, "
        f"'--tile', '{TILE}']); "
        "print('API', seg.describe()); print('torch', 'torch' in sys.modules)"
    )
    done = run_fresh(code, cache, image, "api")
    api = next(line for line in done.stdout.splitlines() if line.startswith("API "))[4:]
    cli = next(line for line in done.stderr.splitlines() if line.startswith("model "))
    assert cli.endswith("; " + api)  # "model tiny; openvino bf16 (auto: ...), tile 64, overlap 0.25"
    assert "torch False" in done.stdout


class Oracle:
    """A stand-in engine that knows the crack mask of each labelled crop (and finds nothing elsewhere)."""

    def __init__(self, crops: CalibrationCrops):
        config = crops.config
        self.truth = {normalize_image(c, config.mean, config.std).tobytes(): m for c, m in crops.labelled_crops()}

    def __call__(self, batch):
        return np.stack([np.where(self.truth[x.tobytes()], 10.0, -10.0) for x in batch]).astype(np.float32)


def test_int8_is_judged_by_task_accuracy_on_held_out_crops(exported, tiny):
    held_out = CalibrationCrops(tiny.config, TILE, count=16, split="val")
    assert any(mask.any() for _, mask in held_out.labelled_crops())
    # crack F1 against the crops' ground truth: an engine that knows it scores 1, one that finds nothing 0; one that
    # runs the fp32 network itself scores what fp32 scores and agrees with it everywhere
    fp32 = TorchBackend(tiny.network, "fp32")
    assert int8.task_accuracy(Oracle(held_out), fp32, held_out, 0.5)["f1"] == 1.0
    nothing = int8.task_accuracy(lambda batch: np.full(batch.shape[:1] + batch.shape[2:], -10.0), fp32, held_out, 0.5)
    assert nothing["f1"] == 0.0
    same = int8.task_accuracy(fp32, fp32, held_out, 0.5)
    assert same["f1"] == same["f1_fp32"] and same["mask_f1"] == 1.0 and same["p999"] == 0.0
    # the rule: crack F1 within 0.005 of fp32's and masks agreeing at F1 >= 0.98, whatever the probabilities do
    assert is_accurate({"f1": 0.760, "f1_fp32": 0.764, "mask_f1": 0.99, "p999": 0.05})
    assert not is_accurate({"f1": 0.755, "f1_fp32": 0.764, "mask_f1": 0.99, "p999": 0.001})
    assert not is_accurate({"f1": 0.764, "f1_fp32": 0.764, "mask_f1": 0.97, "p999": 0.001})


def test_int8_figures_are_measured_on_the_validation_crops_and_judged_again_when_too_few(
    exported, tiny, tiny_model_dir, monkeypatch
):
    backend = "openvino" if int8.nncf_available() else "onnx"
    crops = CalibrationCrops(tiny.config, TILE, count=4)
    engine, figures = int8.verified_int8(tiny, TILE, backend, crops, engines.INT8_OPENERS[backend])
    held_out = CalibrationCrops(tiny.config, TILE, count=int8.HELD_OUT_CROPS, split="val")
    fp32 = OnnxBackend(cached_onnx(tiny, TILE))
    assert figures == int8.task_accuracy(engine, fp32, held_out, tiny.config.threshold) | {
        "held_out": held_out.describe(),
        "held_out_crops": int8.HELD_OUT_CROPS,
    }
    # a recorded int8 model that fails the F1 rule is never auto's choice, even where int8 comes first
    record = int8_record(tiny, backend)
    record.write_text(json.dumps({"f1": 0.70, "f1_fp32": 0.76, "mask_f1": 0.99, "p999": 0.01, "held_out_crops": 128}))
    monkeypatch.setattr(engines, "auto_candidates", lambda device="cpu": [(backend, "int8"), ("torch", "fp32")])
    monkeypatch.setattr(engines.auto, "measure_speed", lambda engine, *args: 2.0 if engine.precision == "int8" else 1.0)
    chosen = CrackSegmenter.from_pretrained(tiny_model_dir, tile=TILE)
    assert (chosen.backend.name, chosen.backend.precision) == ("torch", "fp32")
    assert "int8 crack F1 0.700 against fp32's 0.760" in chosen.describe()
    # a verdict reached on fewer held-out crops than the rule asks for is not trusted: it is judged again
    record.write_text(json.dumps({"f1": 0.70, "f1_fp32": 0.76, "mask_f1": 0.99, "p999": 0.01, "held_out_crops": 16}))
    CrackSegmenter.from_pretrained(tiny_model_dir, backend=backend, precision="int8", tile=TILE)
    assert json.loads(record.read_text()) == figures


# --- auto measures: fake engines and timings decide which is fastest; no wall-clock figure is asserted ------


class FakeEngine:
    fixed_size = None

    def __init__(self, name: str, precision: str):
        self.name, self.precision = name, precision

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros(batch.shape[:1] + batch.shape[2:], np.float32)


@pytest.fixture
def measured(tiny_model_dir, tmp_path, monkeypatch):
    """`auto` over fake onnx/openvino/torch fp32 engines (openvino int8 does not build), timed by `speeds`; records
    the engines built and timed, in a fresh cache."""
    monkeypatch.setenv("CRACKSEG_CACHE", str(tmp_path))
    candidates = [("openvino", "int8"), ("onnx", "fp32"), ("openvino", "fp32"), ("torch", "fp32")]
    monkeypatch.setattr(engines, "auto_candidates", lambda device="cpu": candidates)
    state = SimpleNamespace(speeds={"onnx": 5.8, "openvino": 7.9, "torch": 3.1}, built=[], timed=[], sizes=set())

    def build(backend, precision, *args, **kwargs):
        if precision == "int8":
            raise BackendError("not calibrated yet")
        state.built.append(backend)
        return FakeEngine(backend, precision)

    def measure(engine, tile, batch_size, to_beat=None):
        state.timed.append(engine.name)
        state.sizes.add((tile, batch_size))
        return state.speeds[engine.name]

    monkeypatch.setattr(engines, "build_backend", build)
    monkeypatch.setattr(engines.auto, "measure_speed", measure)
    state.segmenter = lambda model=tiny_model_dir: CrackSegmenter.from_pretrained(model, tile=TILE)
    return state


@pytest.mark.parametrize("fastest", ["openvino", "onnx"])
def test_auto_takes_the_engine_measured_fastest(measured, fastest):
    measured.speeds[fastest] = 9.0
    segmenter = measured.segmenter()
    assert (segmenter.backend.name, segmenter.backend.precision) == (fastest, "fp32")
    assert measured.timed == ["onnx", "openvino", "torch"]
    assert measured.sizes == {(TILE, 4)}  # the tile and batch size the segmenter runs
    other = "onnx" if fastest == "openvino" else "openvino"
    others = f"{other} fp32 {measured.speeds[other]}, torch fp32 3.1"
    assert segmenter.describe().startswith(f"{fastest} fp32 (auto: the fastest measured here, 9 img/s; {others}; ")
    # an engine that cannot be built is skipped, and says why
    assert "unavailable: openvino int8 (not calibrated yet)" in segmenter.describe()


def test_auto_reuses_its_measured_choice_without_timing(measured, tiny_model_dir):
    first = measured.segmenter()
    measured.built.clear()
    measured.timed.clear()
    again = measured.segmenter()
    assert measured.timed == []
    assert measured.built == ["openvino"]  # only the chosen engine is built: no torch start-up for the others
    assert again.describe() == first.describe()
    (record,) = cache_dir().glob("auto-*.json")
    key = json.loads(record.read_text())["key"]
    assert {"model", "tile", "batch_size", "device", "cpu", "threads", "runtimes"} <= set(key)
    assert key["tile"] == TILE and key["batch_size"] == 4 and key["cpu"]["model"]
    # another batch size is measured again, at that size
    CrackSegmenter.from_pretrained(tiny_model_dir, tile=TILE, batch_size=2)
    assert measured.timed == ["onnx", "openvino", "torch"] and (TILE, 2) in measured.sizes


@pytest.mark.parametrize("change", ["cpu", "model"])
def test_auto_measures_again_on_another_cpu_or_model(measured, tiny_model_dir, tmp_path, monkeypatch, change):
    assert measured.segmenter().backend.name == "openvino"
    measured.speeds["onnx"], measured.timed = 9.0, []
    model = tiny_model_dir
    if change == "cpu":
        identity = engines.auto.cpu_identity()
        monkeypatch.setattr(engines.auto, "cpu_identity", lambda: identity | {"model": "another CPU"})
    else:  # the same network with other weights
        model = tmp_path / "other"
        shutil.copytree(tiny_model_dir, model)
        from safetensors.torch import load_file, save_file

        weights = load_file(model / "model.safetensors")
        first = next(iter(weights))
        weights[first] = weights[first] + 1
        save_file(weights, model / "model.safetensors")
    segmenter = measured.segmenter(model)
    assert measured.timed == ["onnx", "openvino", "torch"]
    assert segmenter.backend.name == "onnx"


def test_auto_falls_back_to_the_fixed_order_only_when_timing_fails(measured, monkeypatch):
    def broken_clock(*args):
        raise RuntimeError("no clock")

    monkeypatch.setattr(engines.auto, "measure_speed", broken_clock)
    segmenter = measured.segmenter()
    assert (segmenter.backend.name, segmenter.backend.precision) == ("onnx", "fp32")  # first that builds
    assert "(auto: timing failed (onnx fp32: no clock; " in segmenter.describe()
    assert "so the first that builds in the fixed order; unavailable: openvino int8" in segmenter.describe()
    assert not list(cache_dir().glob("auto-*.json"))  # nothing recorded: the next run measures


def test_timing_runs_a_warm_up_then_a_few_batches_of_one_fixed_input():
    seen = []

    def engine(batch):
        seen.append(batch.copy())
        return np.zeros((len(batch), TILE, TILE), np.float32)

    assert engines.auto.measure_speed(engine, TILE, 3) > 0
    assert 1 + 2 <= len(seen) <= 1 + 5 and seen[0].shape == (3, 3, TILE, TILE) and seen[0].dtype == np.float32
    assert all(np.array_equal(seen[0], batch) for batch in seen)
    seen.clear()
    engines.auto.measure_speed(engine, TILE, 3, to_beat=float("inf"))  # far slower than the best: one timed batch
    assert len(seen) == 2


def test_a_slow_first_call_does_not_rule_an_engine_out():
    calls = []

    def engine(batch):  # compiles on its first call, then is the fastest
        calls.append(None)
        time.sleep(0.2 if len(calls) == 1 else 0.001)
        return np.zeros((len(batch), TILE, TILE), np.float32)

    assert engines.auto.measure_speed(engine, TILE, 3, to_beat=100.0) > 100.0
    assert len(calls) > 2
