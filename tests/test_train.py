import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from crackseg.cli import build_parser, main
from crackseg.metrics import source_mean_f1_curve
from crackseg.models import ModelConfig, build_model, load_model, save_model
from crackseg.synthetic import write_synthetic_dataset
from crackseg.train import (
    BatchBlockSampler,
    TrainingError,
    init_from,
    make_degradation,
    parse_scale_range,
    source_weights,
    train,
)


def _args(data, out, *extra):
    argv = [
        "train", "--data", str(data), "--out", str(out), "--size", "64", "--batch-size", "4", "--epochs", "2",
        "--workers", "0", "--alpha-schedule", "step", "--val-fraction", "0.2", "--max-batches", "3",
        "--precision", "fp32", "--lr", "1e-3", *extra,
    ]  # fmt: skip
    return build_parser().parse_args(argv)


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def test_two_epochs_write_every_file(synthetic_root, tmp_path):
    run = train(_args(synthetic_root, tmp_path / "run", "--select", "ods"))
    for name in (
        "last.pt",
        "history.csv",
        "loss_curve.png",
        "run.json",
        "best/model.safetensors",
        "best/config.json",
    ):
        assert (run / name).is_file(), name
    history = _history(run)
    assert [int(h["epoch"]) for h in history] == [1, 2]
    assert all(0 <= float(h["val_f1"]) <= float(h["val_ods"]) <= 1 for h in history)  # ODS: best over thresholds
    model, config = load_model(run / "best")
    assert config.arch == "pspnet" and config.train_size == 64 and 0 < config.threshold < 1
    assert config.notes["val_ods_f1"] == pytest.approx(max(float(h["val_ods"]) for h in history), abs=1e-6)
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["args"]["size"] == 64


@pytest.mark.parametrize("extra", [[], ["--ema", "0.9"]], ids=["raw", "ema"])
def test_resume_reproduces_an_uninterrupted_run(synthetic_root, tmp_path, extra):
    full = train(_args(synthetic_root, tmp_path / "full", *extra))
    part = train(_args(synthetic_root, tmp_path / "part", "--epochs", "1", *extra))
    resumed = train(_args(synthetic_root, part, "--resume", *extra))
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in _history(full)]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in _history(resumed)] == strip
    a, b = load_file(str(full / "best/model.safetensors")), load_file(str(resumed / "best/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ema_weights_are_the_ones_validated_and_saved(synthetic_root, tmp_path):
    run = train(_args(synthetic_root, tmp_path / "run", "--epochs", "1", "--ema", "0.5"))  # epoch 1 is the best
    state = torch.load(run / "last.pt", weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    saved = load_file(str(run / "best/model.safetensors"))
    assert all(torch.equal(saved[k], averaged[k].to(saved[k].dtype)) for k in saved)
    assert any(not torch.equal(state["model"][k], averaged[k]) for k in saved)  # not a copy of the raw weights


def test_nan_loss_stops_cleanly_and_keeps_last_checkpoint(synthetic_root, tmp_path):
    run = train(_args(synthetic_root, tmp_path / "nan", "--epochs", "1"))
    before = (run / "last.pt").read_bytes()
    with pytest.raises(TrainingError, match="loss became nan at epoch 2, batch 2"):
        train(_args(synthetic_root, run, "--resume", "--nan-at-batch", "1"))
    assert (run / "last.pt").read_bytes() == before


def test_existing_run_dir_is_not_overwritten(synthetic_root, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    assert main(["train", "--data", str(synthetic_root), "--out", str(tmp_path / "busy")]) == 2
    assert (tmp_path / "busy" / "keep.txt").read_text() == "x"


def test_empty_validation_split(synthetic_root, tmp_path):
    with pytest.raises(TrainingError, match="validation split came out empty"):
        train(_args(synthetic_root, tmp_path / "r", "--val-fraction", "0"))


def test_config_file_fills_unset_options(synthetic_root, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: [{synthetic_root}]\nsize: 64\nepochs: 1\nbatch_size: 4\nworkers: 0\nmax_batches: 1\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--precision", "fp32"]) == 0
    assert len(_history(tmp_path / "r")) == 1


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is exercised on Linux")
def test_ddp_two_processes_match_one(synthetic_root, tmp_path):
    """torchrun with 2 Gloo processes writes checkpoints close to what one process writes."""
    common = [
        "--data", str(synthetic_root), "--size", "64", "--batch-size", "8", "--epochs", "1", "--workers", "0",
        "--precision", "fp32", "--val-fraction", "0.2", "--lr", "0.05", "--threads", "1", "--loss", "bce",
        "--optimizer", "sgd",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
    ]
    subprocess.run([*torchrun, "-m", "crackseg", "train", "--out", str(tmp_path / "ddp"), *common], check=True, env=env)
    assert main(["train", "--out", str(tmp_path / "one"), *common]) == 0
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["model"]
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    torch.manual_seed(0)
    init = build_model("pspnet").state_dict()  # both runs start from this (seed 0)
    assert set(ddp) == set(one) == set(init)
    weights = [k for k in one if one[k].is_floating_point() and "running" not in k]
    diff = sum(((ddp[k] - one[k]) ** 2).sum().item() for k in weights) ** 0.5
    moved = sum(((one[k] - init[k]) ** 2).sum().item() for k in weights) ** 0.5
    # The processes see the same global batches; only batch-norm statistics differ (per process on CPU, where
    # SyncBatchNorm does not run), so the runs end closer to each other than to where they started; different
    # batches or missing gradient averaging give diff ≈ moved. (SGD, because Adam's first steps are
    # lr·sign(gradient), which turns tiny batch-norm differences into full-size steps.)
    assert moved > 0.05 and diff < 0.5 * moved, (diff, moved)


def test_validation_split_follows_split_seed_not_the_training_seed(synthetic_root, tmp_path):
    from crackseg.train import make_datasets

    def val_names(*extra):
        return make_datasets(_args(synthetic_root, tmp_path / "run", *extra))[2]["val_names"]

    # Fine-tuning with a new --seed must validate on the same photos, or it trains on the old validation split.
    assert val_names("--seed", "0") == val_names("--seed", "7")
    assert val_names("--split-seed", "0") != val_names("--split-seed", "1")


def test_init_from_a_model_of_another_decoder_width_copies_the_encoder(tmp_path):
    narrow = build_model("unet", "resnet18", encoder_depth=3, decoder_channels=[16, 8, 4])
    config = ModelConfig(arch="unet", encoder="resnet18", encoder_depth=3, arch_kwargs={"decoder_channels": [16, 8, 4]})
    tiny_unet_dir = save_model(narrow, config, tmp_path / "narrow")
    wider = build_model("unet", "resnet18", encoder_depth=3, decoder_channels=[32, 16, 8])
    skipped = init_from(wider, str(tiny_unet_dir))
    source = load_model(tiny_unet_dir)[0].state_dict()
    target = wider.state_dict()
    assert skipped and all(k.startswith("net.decoder") or k.startswith("net.segmentation_head") for k in skipped)
    encoder = [k for k in target if k.startswith("net.encoder") and target[k].is_floating_point()]
    assert encoder and all(torch.equal(target[k], source[k].to(target[k].dtype)) for k in encoder)


def test_scale_range_is_two_ordered_positive_factors():
    assert parse_scale_range("0.4,1.3") == (0.4, 1.3)
    for bad in ("1.3,0.4", "0,1", "0.5", "small,big"):
        with pytest.raises(TrainingError, match="--scale-range"):
            parse_scale_range(bad)


def test_source_balance_evens_out_the_sources():
    sources = ["big"] * 90 + ["small"] * 10
    drawn = BatchBlockSampler(100, 10, seed=0, weights=source_weights(sources, 1.0))
    small_share = sum(sources[i] == "small" for i in drawn) / len(drawn)
    assert 0.4 < small_share < 0.6  # a tenth of the pairs, half of the draws
    sqrt_share = sum(sources[i] == "small" for i in BatchBlockSampler(100, 10, 0, weights=source_weights(sources, 0.5)))
    assert 0.15 < sqrt_share / 100 < 0.35  # sqrt(10) / (sqrt(90) + sqrt(10)) = 0.25
    assert source_weights(sources, 0.0) is None  # off: the plain permutation
    assert sorted(BatchBlockSampler(100, 10, 0)) == list(range(100))
    with pytest.raises(TrainingError, match="--source-balance"):
        source_weights(sources, 2.0)


def test_source_balanced_training_runs(synthetic_root, tmp_path):
    run = train(_args(synthetic_root, tmp_path / "run", "--source-balance", "0.5", "--epochs", "1"))
    assert len(_history(run)) == 1


def test_bad_degrade_scale_is_a_one_line_error_naming_the_option(synthetic_root, tmp_path, capsys):
    argv = ["train", "--data", str(synthetic_root), "--out", str(tmp_path / "run"), "--degrade-prob", "0.3"]
    assert main([*argv, "--degrade-scale", "2,big"]) == 2
    assert "--degrade-scale '2,big'" in capsys.readouterr().err
    assert make_degradation(0.3, "x2,4").scales == [2.0, 4.0]  # the evaluate spelling works here too
    assert make_degradation(0.0, "2,4") is None


def test_source_mean_f1_counts_every_source_once():
    # one threshold; source a: tp 8 fp 2 fn 0 (F1 0.889), source b: tp 1 fp 0 fn 9 (F1 0.182)
    counts = {"a": np.array([[8, 2, 0, 90]]), "b": np.array([[1, 0, 9, 90]])}
    assert source_mean_f1_curve(counts)[0] == pytest.approx((16 / 18 + 2 / 11) / 2)


def test_select_sources_keeps_the_epoch_with_the_best_per_source_mean(synthetic_root, tmp_path):
    other = write_synthetic_dataset(tmp_path / "other", 12, size=(96, 128), seed=100, prefix="other")
    args = _args(synthetic_root, tmp_path / "run", "--select", "sources", "--epochs", "3")
    args.data = [str(synthetic_root), str(other)]
    run = train(args)
    history = _history(run)
    assert json.loads((run / "run.json").read_text())["data"]["val"]["sources"].keys() == {"other", "syn"}
    f1s = [float(h["val_f1_sources"]) for h in history]
    assert all(0 <= f <= 1 for f in f1s)
    assert load_model(run / "best")[1].notes["epoch"] == 1 + f1s.index(max(f1s))


def test_pretrained_encoder_trains_with_its_own_normalisation(synthetic_root, tmp_path):
    args = _args(
        synthetic_root, tmp_path / "run", "--arch", "unet", "--encoder", "timm-tf_efficientnet_lite0",
        "--encoder-weights", "imagenet", "--epochs", "1", "--threshold-by", "sources",
    )  # fmt: skip
    run = train(args)
    model, config = load_model(run / "best")
    assert config.mean == config.std == (0.5, 0.5, 0.5)  # the Lite checkpoints' [-1, 1] inputs, not ImageNet's
    # the stored threshold is where the mean of the per-source F1s peaked
    assert float(_history(run)[0]["threshold"]) == pytest.approx(config.threshold)
