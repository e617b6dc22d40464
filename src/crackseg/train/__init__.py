"""Training as plain functions, as in torchvision's references/segmentation: a `TrainConfig` holds every setting,
`train(config)` runs it, and only `arguments` (the command line's bridge) sees argparse.

    from crackseg.train import TrainConfig, train
    result = train(TrainConfig(data=["../shared/data"], out="runs/x", epochs=2))

`config` checks the settings; `setup` builds the data, model, optimiser, EMA and DDP wrapper; `loop` runs
`train_one_epoch` / `validate` and records each epoch; `checkpoint` writes what a run keeps (``last.pt``,
``best/``, ``history.csv``, ``loss_curve.png``, ``run.json``); `distill` makes a teacher's soft targets.
"""

from crackseg.train.config import ConfigError, TrainConfig, TrainingError
from crackseg.train.loop import RunResult, fit, run_epoch, train, train_one_epoch, validate
from crackseg.train.setup import Run, set_up

__all__ = [
    "ConfigError",
    "Run",
    "RunResult",
    "TrainConfig",
    "TrainingError",
    "fit",
    "run_epoch",
    "set_up",
    "train",
    "train_one_epoch",
    "validate",
]
