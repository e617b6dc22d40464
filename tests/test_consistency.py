import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crackseg.train import consistency
from crackseg.train.consistency import consistency_loss, random_view, view_grid


class GridBound(nn.Module):
    """A pointwise map plus a map averaged over 8×8 cells of a fixed grid: only the second depends on where the
    grid falls, and training can weigh it down."""

    def __init__(self):
        super().__init__()
        self.pointwise = nn.Conv2d(3, 1, 1)
        self.cells = nn.Conv2d(3, 1, 1)

    def forward(self, x):
        cells = F.interpolate(F.avg_pool2d(self.cells(x), 8), scale_factor=8, mode="nearest")
        return self.pointwise(x) + cells


def _images(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.randn(4, 3, 96, 96, generator=generator), 5, stride=1, padding=2) * 3


def test_a_view_at_scale_one_is_the_crop_moved_by_its_offset():
    image = torch.rand(2, 3, 96, 96)
    grid = view_grid(96, 1.0, 7.0, 30.0).expand(2, -1, -1, -1)
    view = F.grid_sample(image, grid, mode="bilinear", align_corners=False)
    torch.testing.assert_close(view, image[:, :, 7 : 7 + 64, 30 : 30 + 64])


def test_views_stay_inside_the_crop_and_move_by_whole_pixels_at_scale_one():
    generator = torch.Generator().manual_seed(0)
    views = [random_view(96, generator) for _ in range(200)]
    assert {scale == 1.0 for scale, _, _ in views} == {True, False}
    for scale, top, left in views:
        assert 0 <= top and 0 <= left and max(top, left) + scale * 63 <= 95
        if scale == 1.0:
            assert top == int(top) and left == int(left)


def test_a_pointwise_map_agrees_with_itself_and_a_grid_bound_one_does_not(monkeypatch):
    monkeypatch.setattr(consistency, "random_view", lambda size, generator=None: (1.0, 3.0, 5.0))
    image = _images()
    pointwise = nn.Conv2d(3, 1, 1)
    assert consistency_loss(pointwise, image, pointwise(image)).item() < 1e-10
    grid_bound = GridBound()
    assert consistency_loss(grid_bound, image, grid_bound(image)).item() > 1e-3


def test_training_on_the_consistency_term_weighs_the_grid_down():
    torch.manual_seed(0)
    model = GridBound()
    fixed = torch.Generator().manual_seed(1)
    image = _images()

    def measured():
        with torch.no_grad():
            return consistency_loss(model, image, model(image), torch.Generator().manual_seed(1)).item()

    before = measured()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for step in range(60):
        batch = _images(step + 1)
        loss = consistency_loss(model, batch, model(batch), fixed)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert measured() < 0.3 * before
    assert model.cells.weight.abs().sum() < model.pointwise.weight.abs().sum()


def test_the_consistency_weight_must_not_be_negative(tmp_path):
    from crackseg.train import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="consistency_weight"):
        TrainConfig(data=[tmp_path], out=tmp_path / "run", consistency_weight=-1)


def test_a_run_with_the_consistency_term_adds_it_to_the_training_loss(synthetic_root, tmp_path):
    from crackseg.train import TrainConfig, train

    values = {
        "data": [synthetic_root], "size": 64, "batch_size": 4, "epochs": 1, "workers": 0, "val_fraction": 0.2,
        "max_batches": 1, "precision": "fp32", "lr": 1e-3, "loss": "bce+dice",
    }  # fmt: skip
    plain = train(TrainConfig(**values, out=tmp_path / "plain")).history[0]
    steady = train(TrainConfig(**values, out=tmp_path / "steady", consistency_weight=100.0)).history[0]
    # One batch from the same start: the same labels' loss, plus the weighted disagreement.
    assert steady["train_loss"] > plain["train_loss"] + 0.01
    assert steady["val_loss"] != plain["val_loss"]  # the step differed
