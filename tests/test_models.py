import json

import pytest
import torch

from crackseg.models.networks import ModelConfig, ModelError, build_model, load_model, save_model


@pytest.mark.parametrize(
    "arch,kwargs",
    [
        ("pspnet", {}),
        ("unet", {"encoder_depth": 4, "decoder_channels": [64, 32, 16, 8]}),
        ("fpn", {}),
    ],
)
@pytest.mark.parametrize("size", [(64, 64), (50, 77)])
def test_architectures_return_input_size(arch, kwargs, size):
    model = build_model(arch, "resnet18", **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 1, *size)


def test_pspnet_is_the_seed_configuration():
    model = build_model()
    psp = model.net
    assert type(psp).__name__ == "PSPNet"
    pool_sizes = sorted(block.pool[0].output_size for block in psp.decoder.psp.blocks)
    assert pool_sizes == [(1, 1), (2, 2), (3, 3), (6, 6)]
    # the depth-3 encoder never runs layer3/layer4, so they are not part of the model (nor of saved files)
    assert not any(k.startswith("net.encoder.layer3") or k.startswith("net.encoder.layer4") for k in model.state_dict())


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("pspnet").eval()
    config = ModelConfig(threshold=0.37, train_size=256, name="t")
    save_model(model, config, tmp_path / "m")
    loaded, loaded_config = load_model(tmp_path / "m")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded_config.threshold == 0.37 and loaded_config.train_size == 256
    assert json.loads((tmp_path / "m" / "config.json").read_text())["arch"] == "pspnet"
    # the config travels inside the safetensors file too, so the file alone is a complete model
    (tmp_path / "m" / "config.json").unlink()
    assert load_model(tmp_path / "m" / "model.safetensors")[1].threshold == 0.37


def test_half_precision_storage_loads_as_float(tmp_path):
    model = build_model("pspnet").eval()
    save_model(model, ModelConfig(), tmp_path / "h", half=True)
    loaded, _ = load_model(tmp_path / "h")
    assert next(loaded.parameters()).dtype == torch.float32


def test_mismatched_weights_give_a_clear_error(tmp_path):
    save_model(build_model("pspnet"), ModelConfig(arch="unet"), tmp_path / "x")
    with pytest.raises(ModelError, match="weights do not match the config \\(arch=unet"):
        load_model(tmp_path / "x")


def test_not_a_model_file(tmp_path):
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not a crackseg model file"):
        load_model(bogus)
    with pytest.raises(ModelError, match="weights file not found"):
        load_model(tmp_path / "missing.safetensors")


def test_legacy_pth_loads_with_weights_only(tmp_path):
    model = build_model("pspnet").eval()
    torch.save(model.net.state_dict(), tmp_path / "old.pth")  # the original project's bare smp state dict
    loaded, config = load_model(tmp_path / "old.pth")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert config.arch == "pspnet"


def test_local_encoder_weights(tmp_path):
    import torchvision

    resnet = torchvision.models.resnet18()
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")
    model = build_model("pspnet", encoder_weights=str(tmp_path / "r18.pth"))
    assert torch.equal(model.net.encoder.conv1.weight, resnet.conv1.weight)
    with pytest.raises(ModelError, match="not found"):
        build_model("pspnet", encoder_weights=str(tmp_path / "none.pth"))


def test_imagenet_offline_gives_a_clear_message(monkeypatch):
    import segmentation_models_pytorch as smp

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(smp, "create_model", offline)
    with pytest.raises(ModelError, match="--encoder-weights PATH"):
        build_model("pspnet", encoder_weights="imagenet")


def test_unknown_architecture():
    with pytest.raises(ModelError, match="cannot build arch='nope'"):
        build_model("nope")
