import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crackseg.data import signed_distance
from crackseg.errors import InputError
from crackseg.losses import (
    alpha_at,
    boundary_loss,
    build_loss,
    generalized_dice_loss,
    skeleton_recall_loss,
    weighted_bce_loss,
)
from crackseg.models.networks import build_model
from crackseg.synthetic import synthetic_crack


def _logit(p):
    p = torch.as_tensor(p, dtype=torch.float32)
    return torch.log(p / (1 - p))


def test_generalized_dice_by_hand():
    # 4×4: 4 crack pixels; prediction p = 0.8 on 3 of them, 0.2 elsewhere
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 0, :] = 1
    p = torch.full((1, 1, 4, 4), 0.2)
    p[0, 0, 0, :3] = 0.8
    # crack: w = 1/4², Σpg = 0.8·3 + 0.2 = 2.6, Σ(p+g) = (2.4 + 0.2 + 12·0.2) + 4 = 9.0
    # background: w = 1/12², Σpg = 12·0.8 = 9.6, Σ(p+g) = (12·0.8 + 3·0.2 + 0.8) + 12 = 23.0
    w1, w2 = 1 / 16, 1 / 144
    expected = 1 - 2 * (w1 * 2.6 + w2 * 9.6) / (w1 * 9.0 + w2 * 23.0)
    assert generalized_dice_loss(_logit(p), mask).item() == pytest.approx(expected, rel=1e-5)


def test_generalized_dice_is_finite_without_cracks():
    loss = generalized_dice_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    assert torch.isfinite(loss)


def test_weighted_bce_by_hand():
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 0, :] = 1
    p = torch.full((1, 1, 4, 4), 0.2)
    p[0, 0, 0, :3] = 0.8
    # pos weight = 12 background / 4 crack = 3
    crack_terms = 3 * (3 * -np.log(0.8) + -np.log(0.2))
    background_terms = 12 * -np.log(0.8)
    expected = (crack_terms + background_terms) / 16
    assert weighted_bce_loss(_logit(p), mask).item() == pytest.approx(expected, rel=1e-5)
    fixed = weighted_bce_loss(_logit(p), mask, pos_weight=1.0).item()
    assert fixed == pytest.approx(F.binary_cross_entropy(p, mask).item(), rel=1e-5)


def test_boundary_loss_prefers_aligned_prediction_and_has_gradient():
    mask = np.zeros((32, 32), bool)
    mask[:, 14:18] = True
    sdf = torch.from_numpy(signed_distance(mask))[None, None]
    aligned = torch.where(torch.from_numpy(mask), 5.0, -5.0)[None, None].requires_grad_()
    shifted = torch.roll(aligned.detach(), shifts=4, dims=3)
    loss_aligned = boundary_loss(aligned, sdf)
    assert loss_aligned < boundary_loss(shifted, sdf)
    loss_aligned.backward()
    assert aligned.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "schedule,expected",
    [("linear", [0.0, 0.02, 0.5, 0.98]), ("step", [0.01, 0.02, 0.26, 0.50]), ("constant", [0.5] * 4)],
)
def test_alpha_schedules(schedule, expected):
    assert [alpha_at(schedule, e, 50) for e in (0, 1, 25, 49)] == pytest.approx(expected)


def test_alpha_schedule_caps_and_rejects_unknown():
    assert alpha_at("step", 200, 300) == 0.99
    with pytest.raises(InputError, match="unknown alpha schedule"):
        alpha_at("cosine", 0, 10)


@pytest.mark.parametrize("name", ["bce", "dice", "bce+dice", "bce+dice+skel", "focal"])
def test_comparison_losses_are_finite(name):
    loss = build_loss(name)(torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.7).float())
    assert torch.isfinite(loss) and loss > 0


def test_skeleton_recall_counts_a_missed_thin_crack_by_its_length():
    """Missing a 1 px crack beside a 9 px one as long costs Dice a tenth, the skeleton recall over twice that."""
    mask = torch.zeros(1, 1, 64, 64)
    mask[0, 0, 8:56, 10:19] = 1  # a wide crack
    mask[0, 0, 8:56, 40] = 1  # a hairline as long
    wide_only = _logit(torch.where(mask.bool(), 0.99, 0.01))
    wide_only[0, 0, :, 40] = _logit(0.01)
    dice = build_loss("dice")
    missed = skeleton_recall_loss(wide_only, mask)
    assert dice(wide_only, mask) < 0.15 and missed > 2 * dice(wide_only, mask)
    assert skeleton_recall_loss(_logit(torch.where(mask.bool(), 0.99, 0.01)), mask) < 0.05
    assert skeleton_recall_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)) == 0  # no crack, nothing to miss


def test_overfit_one_synthetic_image():
    """A few hundred steps on one image drive the BC loss down and the crack IoU above 0.9."""
    torch.manual_seed(0)
    image, mask = synthetic_crack((64, 64), seed=3, crack_width=5)
    x = torch.from_numpy((image.astype(np.float32) / 255 - 0.5).transpose(2, 0, 1))[None]
    y = torch.from_numpy(mask.astype(np.float32))[None, None]
    sdf = torch.from_numpy(signed_distance(mask))[None, None]
    model = build_model("unet", encoder_depth=3, decoder_channels=[32, 16, 8])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = build_loss("bc")
    losses = []
    for step in range(200):
        loss = loss_fn(model(x), y, sdf, alpha_at("step", step // 10, 20))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        pred = torch.sigmoid(model(x))[0, 0].numpy() > 0.5
    iou = (pred & mask).sum() / (pred | mask).sum()
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert iou > 0.9
