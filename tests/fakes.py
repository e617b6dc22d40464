"""Stand-in engines for tests: real CrackSegmenters whose "network" is a rule a test can reason about."""

import time

import numpy as np

from crackseg.inference import CrackSegmenter
from crackseg.models.config import ModelConfig


class DarknessBackend:
    """A stand-in network whose crack logits are the darkness of each pixel: on a light photo with dark drawn
    lines it finds exactly the lines, so measurements can be checked against the drawing."""

    name, precision, fixed_size = "darkness", "fp32", None

    def __init__(self, config: ModelConfig):
        self.mean = np.asarray(config.mean, np.float32)[None, :, None, None]
        self.std = np.asarray(config.std, np.float32)[None, :, None, None]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        brightness = (batch * self.std + self.mean).mean(axis=1)  # back to [0, 1] per pixel
        return (0.5 - brightness) * 40.0


class BarBackend(DarknessBackend):
    """The darkness stand-in that also sees a bar at one place of every tile, as it is turned (`strength`: added to
    the logits there), and counts the tiles it runs: a network that is not the same under turns, the way a real one
    is not quite. Averaged over the eight turns and flips, the bar lies in eight places at an eighth of its
    probability each."""

    BAR = (slice(40, 43), slice(10, 118))  # rows, columns of a tile

    def __init__(self, config: ModelConfig, strength: float):
        super().__init__(config)
        self.strength, self.tiles = strength, 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        logits = super().__call__(batch)
        logits[(slice(None), *self.BAR)] += self.strength
        self.tiles += len(batch)
        return logits


def bar_segmenter(strength: float, tile: int = 128) -> CrackSegmenter:
    """A segmenter on `BarBackend` averaging the eight turns and flips of each `tile`-pixel tile."""
    config = ModelConfig(train_size=tile, name="bar", threshold=0.5)
    return CrackSegmenter(None, config, backend=BarBackend(config, strength), tta_turns=True)


def darkness_segmenter(max_pixels: int = 50_000_000) -> CrackSegmenter:
    config = ModelConfig(train_size=256, name="darkness", threshold=0.5)
    return CrackSegmenter(None, config, backend=DarknessBackend(config), max_pixels=max_pixels)


class SlowBackend(DarknessBackend):
    """The darkness stand-in taking `seconds` per batch of tiles: a photo that is still being segmented when a
    test interrupts the server."""

    def __init__(self, config: ModelConfig, seconds: float):
        super().__init__(config)
        self.seconds = seconds

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return super().__call__(batch)


def slow_segmenter(seconds_per_tile: float, tile: int = 64) -> CrackSegmenter:
    """A darkness segmenter on `tile`-pixel tiles, one tile per batch, each taking `seconds_per_tile`."""
    config = ModelConfig(train_size=tile, name="slow", threshold=0.5)
    return CrackSegmenter(None, config, backend=SlowBackend(config, seconds_per_tile), batch_size=1)
