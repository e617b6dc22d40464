"""Shared fixtures: small generated datasets and a tiny saved model, so the suite needs no downloads."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from crackseg.extras import has_torch
from crackseg.models.config import ModelConfig
from crackseg.synthetic import write_synthetic_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

if has_torch():  # tests/test_core_install.py also runs where only the core is installed
    import torch

    # The tests run tiny inputs, which gain little from a second thread; on a busy machine (CI runners, a training
    # beside the tests) its spin-waiting made some tests tens of times slower.
    torch.set_num_threads(1)
# Exported/compiled models of the test models go to a throw-away cache, shared by the whole session.
os.environ["CRACKSEG_CACHE"] = tempfile.mkdtemp(prefix="crackseg-test-cache-")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """24 generated pairs (96×128) in the ROOT/train/{images,masks} layout; the last 2 are crack-free."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn"), 24, size=(96, 128), n_empty=2)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised PSPNet-ResNet18 saved as a crackseg model (for pipeline tests, not accuracy)."""
    import torch

    from crackseg.models.networks import build_model, save_model

    torch.manual_seed(0)
    model = build_model("pspnet", "resnet18")
    config = ModelConfig(arch="pspnet", encoder="resnet18", train_size=64, name="tiny")
    return save_model(model, config, tmp_path_factory.mktemp("model") / "tiny")
