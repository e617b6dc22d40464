"""What a run keeps on disk, each file written atomically: ``last.pt`` (a plain dict of model, EMA, optimiser,
schedule, epoch, history, best, RNG state and config: everything needed to resume), ``best/`` (a crackseg model),
``history.csv``, ``loss_curve.png`` and ``run.json`` (config, versions, data, written at the start)."""

from __future__ import annotations

import csv
import io
import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from crackseg import __version__
from crackseg.io.atomic import atomic_write_bytes
from crackseg.models.networks import ModelConfig, save_model
from crackseg.models.pretrained import normalization
from crackseg.train.config import TrainConfig, TrainingError

if TYPE_CHECKING:  # setup builds the Run from these functions
    from crackseg.train.setup import Run

HISTORY_FIELDS = [
    "epoch", "train_loss", "val_loss", "val_iou", "val_f1", "val_ods", "val_f1_sources", "threshold", "alpha", "lr",
    "seconds",
]  # fmt: skip


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise TrainingError(f"{out}: run directory exists; continue it (--resume) or start afresh (--overwrite)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise TrainingError(f"{out}: cannot write to the run directory ({err.strerror})") from None


def save_epoch(run: Run, config: TrainConfig, improved: bool) -> None:
    """The best model (when this epoch is it), last.pt, history.csv and the curves."""
    record = run.history[-1]
    if improved:
        notes = {
            "epoch": record["epoch"],
            "val_f1_at_0.5": record["val_f1"],
            "val_ods_f1": record["val_ods"],
            "split_seed": config.split_seed,
        }
        save_model(run.evaluated, model_config(config, record["threshold"], notes), run.out / "best")
    save_checkpoint(run.out / "last.pt", checkpoint_state(run, config))
    write_history(run.out, run.history)
    plot_curves(run.out, run.history)


def checkpoint_state(run: Run, config: TrainConfig) -> dict:
    return {
        "model": run.model.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "epoch": run.history[-1]["epoch"],
        "history": run.history,
        "best": run.best,
        "torch_rng": torch.get_rng_state(),
        "config": config.to_dict(),
    }


def save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: no checkpoint to resume from; start without resume") from None


def check_same_network(config: TrainConfig, state: dict, out: Path) -> None:
    """A resumed run must build the network it saved; otherwise loading the weights fails with torch's long error."""
    saved = state.get("config") or state.get("args", {})  # "args": checkpoints from before TrainConfig
    for name in ("arch", "encoder", "encoder_depth", "arch_kwargs"):
        if name in saved and saved[name] != getattr(config, name):
            raise TrainingError(
                f"resume: {out / 'last.pt'} was trained with {name} {saved[name]!r}, not {getattr(config, name)!r}; "
                "resume with the run's own settings (leave them out: they are restored)"
            )


def write_history(out: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, HISTORY_FIELDS, restval="")  # histories from before val_ods lack it
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(out / "history.csv", buffer.getvalue().encode())


def plot_curves(out: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_score.plot(epochs, [h["val_iou"] for h in history], "o-", label="crack IoU @ 0.5")
    ax_score.plot(epochs, [h["val_f1"] for h in history], "o-", label="crack F1 @ 0.5")
    if all("val_ods" in h for h in history):
        ax_score.plot(epochs, [h["val_ods"] for h in history], "o-", label="crack F1 @ best threshold (ODS)")
    if all(h.get("val_f1_sources") not in (None, "") for h in history):
        ax_score.plot(epochs, [h["val_f1_sources"] for h in history], "o-", label="mean of per-source F1 @ stored t")
    ax_score.set(xlabel="epoch", ylabel="score", title="Validation (dataset level)", ylim=(0, 1))
    ax_score.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out / "loss_curve.png", buffer.getvalue())


def input_normalization(config: TrainConfig) -> tuple[tuple, tuple]:
    """The mean/std the network's inputs are normalised with: those of the model it starts from, or of its
    encoder's pretrained weights (ImageNet's for a random start)."""
    if config.init_from:
        from crackseg.models.config import read_config, resolve_weights

        saved = read_config(resolve_weights(config.init_from))
        return saved.mean, saved.std
    return normalization(config.encoder, config.encoder_weights)


def model_config(config: TrainConfig, threshold: float = 0.5, notes: dict | None = None) -> ModelConfig:
    mean, std = input_normalization(config)
    return ModelConfig(
        arch=config.arch,
        encoder=config.encoder,
        encoder_depth=config.encoder_depth,
        arch_kwargs=config.arch_kwargs,
        mean=mean,
        std=std,
        train_size=config.size,
        threshold=threshold,
        name=Path(config.out).name,
        notes=notes or {},
    )


def write_run_info(out: Path, config: TrainConfig, summary: dict, device, precision: str, world: int) -> None:
    info = {
        "config": config.to_dict(),
        "crackseg_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "precision": precision,
        "processes": world,
        "data": summary,
    }
    atomic_write_bytes(out / "run.json", json.dumps(info, indent=2, default=str).encode())
