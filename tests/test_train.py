import argparse
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

from crackseg.cli import main
from crackseg.data import BatchBlockSampler, DataError, source_weights
from crackseg.losses import build_loss
from crackseg.metrics import source_mean_f1_curve
from crackseg.models.networks import ModelConfig, build_model, load_model, save_model
from crackseg.synthetic import write_synthetic_dataset
from crackseg.train import ConfigError, RunResult, TrainConfig, TrainingError, train
from crackseg.train.setup import init_from, make_datasets, make_loaders


def _config(data, out, **changes) -> TrainConfig:
    """Two short epochs (3 batches of 4 crops of 64²) on the generated data."""
    values = {
        "data": [data], "out": out, "size": 64, "batch_size": 4, "epochs": 2, "workers": 0, "alpha_schedule": "step",
        "val_fraction": 0.2, "max_batches": 3, "precision": "fp32", "lr": 1e-3,
    }  # fmt: skip
    return TrainConfig(**{**values, **changes})


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_two_epochs_from_python_write_every_file(synthetic_root, tmp_path, monkeypatch):
    def no_argparse(*args, **kwargs):
        raise AssertionError("train() parsed a command line")

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", no_argparse)
    result = train(_config(synthetic_root, tmp_path / "run", select="ods"))
    assert isinstance(result, RunResult) and result.run_dir == tmp_path / "run"
    run = result.run_dir
    for name in ("last.pt", "history.csv", "loss_curve.png", "run.json", "best/model.safetensors", "best/config.json"):
        assert (run / name).is_file(), name
    history = _history(run)
    assert [int(h["epoch"]) for h in history] == [1, 2] == [h["epoch"] for h in result.history]
    assert all(0 <= float(h["val_f1"]) <= float(h["val_ods"]) <= 1 for h in history)  # ODS: best over thresholds
    model, config = load_model(result.best_model_dir)
    assert config.arch == "pspnet" and config.train_size == 64 and 0 < config.threshold < 1
    assert config.notes["val_ods_f1"] == pytest.approx(max(float(h["val_ods"]) for h in history), abs=1e-6)
    assert config.notes["epoch"] == result.best["epoch"]
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["config"]["size"] == 64 and state["config"]["max_batches"] == 3
    assert json.loads((run / "run.json").read_text())["config"] == state["config"]


@pytest.mark.parametrize("ema, resume_from", [(0.0, "cli"), (0.9, "python")])
def test_resume_reproduces_an_uninterrupted_run(synthetic_root, tmp_path, ema, resume_from):
    full = train(_config(synthetic_root, tmp_path / "full", ema=ema)).run_dir
    part = train(_config(synthetic_root, tmp_path / "part", ema=ema, epochs=1)).run_dir
    # Either way only the run folder and the new epoch count are given: the rest is the run's saved config.
    if resume_from == "cli":
        assert main(["train", "--resume", "--out", str(part), "--epochs", "2"]) == 0
    else:
        train(TrainConfig.from_run(part, epochs=2))
    assert _without_seconds(_history(part)) == _without_seconds(_history(full))
    a, b = load_file(str(full / "best/model.safetensors")), load_file(str(part / "best/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_network_is_refused(synthetic_root, tmp_path):
    config = _config(synthetic_root, tmp_path / "run", epochs=1, max_batches=1)
    train(config)
    with pytest.raises(TrainingError, match="trained with arch 'pspnet', not 'unet'"):
        train(config.replace(resume=True, epochs=2, arch="unet"))


def test_ema_weights_are_the_ones_validated_and_saved(synthetic_root, tmp_path):
    run = train(_config(synthetic_root, tmp_path / "run", epochs=1, ema=0.5)).run_dir  # epoch 1 is the best
    state = torch.load(run / "last.pt", weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    saved = load_file(str(run / "best/model.safetensors"))
    assert all(torch.equal(saved[k], averaged[k].to(saved[k].dtype)) for k in saved)
    assert any(not torch.equal(state["model"][k], averaged[k]) for k in saved)  # not a copy of the raw weights


class NanOnTrainingCall:
    """A loss that turns NaN on its n-th call in training (validation runs without gradients)."""

    def __init__(self, loss_fn, n: int):
        self.loss_fn, self.n, self.calls = loss_fn, n, 0

    def __call__(self, logits, mask, sdf, alpha):
        loss = self.loss_fn(logits, mask, sdf, alpha)
        self.calls += torch.is_grad_enabled()
        return loss * float("nan") if torch.is_grad_enabled() and self.calls == self.n else loss


def test_nan_loss_stops_cleanly_and_keeps_last_checkpoint(synthetic_root, tmp_path):
    config = _config(synthetic_root, tmp_path / "nan", epochs=1)
    run = train(config).run_dir
    before = (run / "last.pt").read_bytes()
    with pytest.raises(TrainingError, match="loss became nan at epoch 2, batch 2; stopped. The last good checkpoint"):
        train(config.replace(epochs=2, resume=True), loss_fn=NanOnTrainingCall(build_loss("bc"), 2))
    assert (run / "last.pt").read_bytes() == before


def test_existing_run_dir_is_not_overwritten(synthetic_root, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    assert main(["train", "--data", str(synthetic_root), "--out", str(tmp_path / "busy")]) == 2
    assert (tmp_path / "busy" / "keep.txt").read_text() == "x"


def test_empty_validation_split(synthetic_root, tmp_path):
    with pytest.raises(TrainingError, match="validation split came out empty"):
        train(_config(synthetic_root, tmp_path / "r", val_fraction=0))


def test_config_file_fills_unset_options_and_flags_override_it(synthetic_root, tmp_path):
    cfg = tmp_path / "c.yaml"  # YAML reads 1e-3 (no dot) as text: converted like the flag's text
    cfg.write_text(f"data: [{synthetic_root}]\nsize: 64\nepochs: 3\nbatch-size: 4\nworkers: 0\nlr: 1e-3\n")
    argv = ["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--precision", "fp32", "--epochs", "1"]
    assert main(argv) == 0
    assert len(_history(tmp_path / "r")) == 1
    saved = json.loads((tmp_path / "r" / "run.json").read_text())["config"]
    assert saved["lr"] == 0.001 and saved["batch_size"] == 4 and saved["epochs"] == 1
    assert TrainConfig.from_file(cfg, out="x").lr == 0.001


@pytest.mark.parametrize(
    "line, message",
    [
        ("lr: fast", "c.yaml: lr 'fast': expected a number"),
        ("loss: bcee", "c.yaml: loss 'bcee': expected one of bc, bce"),
        ("batch_size: 2.5", "c.yaml: batch_size 2.5: expected a whole number"),
        ("learning_rate: 1e-3", "c.yaml: learning_rate: unknown option"),
        ("max_batches: 1", "c.yaml: max_batches: unknown option"),  # a Python-only setting, not an option
    ],
)
def test_config_file_with_a_bad_value_or_key_names_it(tmp_path, capsys, line, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: [somewhere]\n{line}\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(ConfigError, match=message.split(":")[1].split()[0]):
        TrainConfig.from_file(cfg, out="r")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lr": 0}, "lr 0.0: expected a learning rate above 0"),
        ({"epochs": 0}, "epochs 0: expected at least 1"),
        ({"batch_size": "eight"}, "batch_size 'eight': expected a whole number"),
        ({"epochs": True}, "epochs True: expected a whole number"),
        ({"lr": "inf"}, "lr 'inf': expected a number"),
        ({"batchsize": 4}, "batchsize: unknown option (did you mean 'batch_size'"),
        ({"degrade_prob": 1.5}, "degrade_prob 1.5: expected a probability"),
        ({"ema": 1.0}, "ema 1.0: expected a decay"),
        ({"source_balance": 2.0}, "source_balance 2.0"),
        ({"threshold_by": "mean"}, "threshold_by 'mean': expected one of pooled, sources"),
        ({"arch_kwargs": "[1, 2]"}, "arch_kwargs '[1, 2]': expected a mapping"),
        ({"scale_range": "1.3,0.4"}, "scale_range '1.3,0.4': expected two factors"),
        ({"scale_range": "0,1"}, "scale_range"),
        ({"scale_range": "0.5"}, "scale_range"),
        ({"degrade_scale": "2,big"}, "degrade_scale '2,big': expected factors of at least 1"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        _config(tmp_path, tmp_path / "r", **changes)


def test_settings_are_converted_to_their_types(tmp_path):
    config = _config(tmp_path, tmp_path / "r", lr="1e-3", epochs="3", light_augment="true", pos_weight="none")
    assert (config.lr, config.epochs, config.light_augment, config.pos_weight) == (0.001, 3, True, None)
    assert config.data == [str(tmp_path)] and config.out == str(tmp_path / "r")  # paths as text, for run.json
    assert _config(tmp_path, "r", scale_range="0.4,1.3").scale_range == (0.4, 1.3)
    assert _config(tmp_path, "r", scale_range=[0.4, 1.3]).scale_range == (0.4, 1.3)
    assert _config(tmp_path, "r", degrade_scale="x2,4").degrade_scale == (2.0, 4.0)  # evaluate's spelling too
    assert _config(tmp_path, "r", arch_kwargs='{"decoder_channels": [8]}').arch_kwargs == {"decoder_channels": [8]}
    assert config.replace(epochs="5").epochs == 5  # replace() converts and checks too
    with pytest.raises(ConfigError, match="data: required"):
        TrainConfig(out="r")
    assert TrainConfig.from_dict(config.to_dict()) == config


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
    def val_names(**changes):
        return make_datasets(_config(synthetic_root, tmp_path / "run", **changes))[2]["val_names"]

    # Fine-tuning with a new seed must validate on the same photos, or it trains on the old validation split.
    assert val_names(seed=0) == val_names(seed=7)
    assert val_names(split_seed=0) != val_names(split_seed=1)


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


def test_init_from_a_wider_unet_keeps_its_live_decoder_channels(tmp_path):
    torch.manual_seed(0)
    wide = build_model("unet", "resnet18", encoder_depth=3, decoder_channels=[32, 16, 8]).eval()
    for name, module in wide.named_modules():
        if name.startswith("net.decoder") and isinstance(module, torch.nn.BatchNorm2d):
            dead = torch.randperm(module.num_features)[: module.num_features // 2]
            module.weight.data[dead], module.bias.data[dead] = 0.0, 0.0  # always 0 after the ReLU
    config = ModelConfig(
        arch="unet", encoder="resnet18", encoder_depth=3, arch_kwargs={"decoder_channels": [32, 16, 8]}
    )
    wide_dir = save_model(wide, config, tmp_path / "wide")
    narrow = build_model("unet", "resnet18", encoder_depth=3, decoder_channels=[16, 8, 4]).eval()

    assert init_from(narrow, str(wide_dir)) == []
    photo = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        # The channels dropped carried nothing, so the narrow network computes exactly what the wide one does.
        torch.testing.assert_close(narrow(photo), wide(photo))


def test_a_narrower_head_keeps_channels_that_say_crack_as_well_as_background():
    from crackseg.models.narrow import narrow_unet_decoder

    wide = build_model("unet", "resnet18", encoder_depth=3, decoder_channels=[32, 16, 8]).state_dict()
    head = wide["net.segmentation_head.0.weight"]
    head[:, :6], head[:, 6:] = -1.0, 0.1  # six strong background channels, two weak crack channels
    narrow = build_model("unet", "resnet18", encoder_depth=3, decoder_channels=[16, 8, 4]).state_dict()

    kept = narrow_unet_decoder(wide, narrow)["net.segmentation_head.0.weight"].sum(dim=(0, 2, 3))
    assert (kept > 0).sum() == 1 and (kept < 0).sum() == 3  # in their share of eight, not the four strongest
    assert narrow_unet_decoder(wide, wide) is wide  # as wide: nothing to choose


def test_a_narrower_head_takes_no_more_of_a_kind_than_there_are():
    from crackseg.models.narrow import head_channels

    scale = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0])  # four dead channels, all read as background
    head = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0, -1.0, 1.0, 1.0]).reshape(1, 8, 1, 1)
    # The live channels all say crack, but there are only four of them for six places: two background ones join.
    kept = head_channels(scale, head, 6).tolist()
    assert len(set(kept)) == 6 and {0, 1, 6, 7} <= set(kept)


def test_source_balance_evens_out_the_sources():
    sources = ["big"] * 90 + ["small"] * 10
    drawn = BatchBlockSampler(100, 10, seed=0, weights=source_weights(sources, 1.0))
    small_share = sum(sources[i] == "small" for i in drawn) / len(drawn)
    assert 0.4 < small_share < 0.6  # a tenth of the pairs, half of the draws
    sqrt_share = sum(sources[i] == "small" for i in BatchBlockSampler(100, 10, 0, weights=source_weights(sources, 0.5)))
    assert 0.15 < sqrt_share / 100 < 0.35  # sqrt(10) / (sqrt(90) + sqrt(10)) = 0.25
    assert source_weights(sources, 0.0) is None  # off: the plain permutation
    assert sorted(BatchBlockSampler(100, 10, 0)) == list(range(100))
    with pytest.raises(DataError, match="source balance 2.0"):
        source_weights(sources, 2.0)


def test_training_draws_follow_the_source_balance(synthetic_root, tmp_path):
    other = write_synthetic_dataset(tmp_path / "other", 6, size=(96, 128), seed=100, prefix="other")

    def share_of_other(balance: float) -> float:
        """The share of the small source among the training loader's draws over 20 epochs (seed 0)."""
        config = _config(synthetic_root, tmp_path / "run", source_balance=balance).replace(data=[synthetic_root, other])
        train_set, val_set, summary = make_datasets(config)
        assert summary["train"]["sources"] == {"other": 5, "syn": 19}
        sampler = make_loaders(train_set, val_set, config, rank=0, world=1)[0].sampler
        drawn = []
        for epoch in range(20):
            sampler.set_epoch(epoch)
            drawn += [train_set.dataset.pairs[i].source for i in sampler]
        assert len(drawn) == 20 * 24  # an epoch is as many draws as there are pairs (6 full batches of 4)
        return drawn.count("other") / len(drawn)

    # 5 of the 24 training pairs: about a fifth of the draws unbalanced, half at power 1, sqrt(5) / (sqrt(5) +
    # sqrt(19)) = 0.34 at power 0.5 (binomial spread over 480 draws: ±0.02)
    assert share_of_other(0.0) == pytest.approx(5 / 24, abs=0.03)
    assert share_of_other(1.0) == pytest.approx(0.5, abs=0.07)
    assert share_of_other(0.5) == pytest.approx(0.34, abs=0.07)


def test_bad_degrade_scale_is_a_one_line_error_naming_the_option(synthetic_root, tmp_path, capsys):
    argv = ["train", "--data", str(synthetic_root), "--out", str(tmp_path / "run"), "--degrade-prob", "0.3"]
    assert main([*argv, "--degrade-scale", "2,big"]) == 2
    assert "--degrade-scale '2,big': expected factors of at least 1" in capsys.readouterr().err


def test_source_mean_f1_counts_every_source_once():
    # one threshold; source a: tp 8 fp 2 fn 0 (F1 0.889), source b: tp 1 fp 0 fn 9 (F1 0.182)
    counts = {"a": np.array([[8, 2, 0, 90]]), "b": np.array([[1, 0, 9, 90]])}
    assert source_mean_f1_curve(counts)[0] == pytest.approx((16 / 18 + 2 / 11) / 2)


def test_select_sources_keeps_the_epoch_with_the_best_per_source_mean(synthetic_root, tmp_path):
    other = write_synthetic_dataset(tmp_path / "other", 12, size=(96, 128), seed=100, prefix="other")
    config = _config(synthetic_root, tmp_path / "run", select="sources", epochs=3)
    run = train(config.replace(data=[synthetic_root, other])).run_dir
    history = _history(run)
    assert json.loads((run / "run.json").read_text())["data"]["val"]["sources"].keys() == {"other", "syn"}
    f1s = [float(h["val_f1_sources"]) for h in history]
    assert all(0 <= f <= 1 for f in f1s)
    assert load_model(run / "best")[1].notes["epoch"] == 1 + f1s.index(max(f1s))


def test_pretrained_encoder_trains_with_its_own_normalisation(synthetic_root, tmp_path):
    config = _config(
        synthetic_root, tmp_path / "run", arch="unet", encoder="timm-tf_efficientnet_lite0",
        encoder_weights="imagenet", epochs=1, threshold_by="sources",
    )  # fmt: skip
    run = train(config).run_dir
    model, saved = load_model(run / "best")
    assert saved.mean == saved.std == (0.5, 0.5, 0.5)  # the Lite checkpoints' [-1, 1] inputs, not ImageNet's
    # the stored threshold is where the mean of the per-source F1s peaked
    assert float(_history(run)[0]["threshold"]) == pytest.approx(saved.threshold)
