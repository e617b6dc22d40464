"""The two stages of an epoch, `train_one_epoch` and `validate`, as plain functions (torchvision's
references/segmentation), and `train`, which sets a run up and loops them: each epoch is recorded (history, best)
and saved before the next. Under ``torchrun`` it trains with DistributedDataParallel and only rank 0 writes files.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from crackseg.errors import InputTypeError
from crackseg.losses import alpha_at
from crackseg.metrics import THRESHOLDS, best_threshold, scores, source_mean_f1_curve, sweep_counts
from crackseg.train.checkpoint import save_epoch
from crackseg.train.config import TrainConfig, TrainingError
from crackseg.train.consistency import consistency_loss
from crackseg.train.setup import Run, distributed_rank, memory_format, say, set_up, step_scheduler

# --- the two stages -----------------------------------------------------------------------------------------


class NonFiniteLoss(TrainingError):
    """The loss became NaN or infinite; `fit` adds where the last good checkpoint is."""


def train_one_epoch(
    model: torch.nn.Module,
    loader,
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    *,
    alpha: float,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    ema=None,
    clip_grad: float = 0.0,
    epoch: int = 0,
    max_batches: int = 0,
    deadline: float = math.inf,
    quiet: bool = True,
    distill_weight: float = 0.0,
    consistency_weight: float = 0.0,
) -> float:
    """One pass over `loader` (at most `max_batches` batches when above 0, or until the time.time() `deadline`);
    returns the mean training loss over every process. `alpha` weighs the boundary term of the BC loss;
    `consistency_weight` the disagreement with a shifted and scaled second view (`consistency_loss`)."""
    model.train()
    device = torch.device(device)
    total, count = 0.0, 0
    interval = 0.1 if sys.stderr.isatty() else 30  # without a terminal (logs, nohup) the bar reports every 30 s
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=quiet, mininterval=interval)
    for step, batch in enumerate(bar):
        image = batch["image"].to(device).contiguous(memory_format=memory_format(precision))
        mask, sdf = batch["mask"].to(device), batch["sdf"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(image)
            if consistency_weight > 0:
                unsteady = consistency_loss(model, image, logits, memory_format=memory_format(precision))
        loss = loss_fn(logits.float(), mask, sdf, alpha)
        if consistency_weight > 0:
            loss = loss + consistency_weight * unsteady
        if "soft" in batch:
            soft = batch["soft"].to(device)
            loss = loss + distill_weight * F.binary_cross_entropy_with_logits(logits.float(), soft)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss became {loss.item()} at epoch {epoch + 1}, batch {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        total += loss.item() * image.shape[0]
        count += image.shape[0]
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        if (max_batches and step + 1 >= max_batches) or time.time() > deadline:
            break
    return _all_reduce_mean(total, count, device)


@torch.no_grad()
def validate(
    model: torch.nn.Module, loader, loss_fn: Callable, *, alpha: float, device="cpu", precision: str = "fp32"
) -> tuple[float, dict[str, np.ndarray]]:
    """Validation loss, and per source the sweep counts over thresholds (dataset level) of full-size predictions.

    Its own forward pass rather than CrackSegmenter's: it needs the loss besides the probabilities, each DDP process
    takes its share of the images, and the network must stay on the training's device and memory format (the
    engine would switch an fp32 model to channels_last, which slows fp32 training on AVX2 CPUs). For an image no
    larger than the tile (the training size), this is the engine's own single-pass path: one forward pass of the
    whole image, padded to the stride by the network, in the same bf16 autocast. Larger images are taken whole
    here, where `crackseg evaluate` tiles them and blends the tiles, so on those its figures can differ slightly.
    """
    model.eval()
    device = torch.device(device)
    total, count = 0.0, 0
    sources = sorted({pair.source for pair in loader.dataset.pairs})
    counts = {source: np.zeros((len(THRESHOLDS), 4)) for source in sources}  # a rank may not see every source
    for batch in loader:
        image = batch["image"].to(device).contiguous(memory_format=memory_format(precision))
        mask, sdf = batch["mask"].to(device), batch["sdf"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(image)
        total += loss_fn(logits.float(), mask, sdf, alpha).item()
        count += 1
        prob = torch.sigmoid(logits.float()).cpu().numpy()
        counts[batch["source"][0]] += sweep_counts(prob, mask.cpu().numpy() > 0.5)
    loss = _all_reduce_mean(total, count, device)
    return loss, dict(zip(sources, _all_reduce_array(np.stack([counts[s] for s in sources]), device)))


def _all_reduce_mean(total: float, count: int, device) -> float:
    if dist.is_initialized():
        t = torch.tensor([total, count], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        total, count = t.tolist()
    return total / max(count, 1)


def _all_reduce_array(values: np.ndarray, device) -> np.ndarray:
    if dist.is_initialized():
        t = torch.from_numpy(values).to(device)
        dist.all_reduce(t)
        values = t.cpu().numpy()
    return values


def validation_scores(source_counts: dict[str, np.ndarray], threshold_by: str) -> dict:
    """Dataset-level scores: IoU and F1 at 0.5, ODS F1, and the per-source mean F1 at the stored threshold."""
    counts = sum(source_counts.values())
    at_half = scores(*counts[49])  # threshold 0.50
    threshold, ods_f1 = best_threshold(counts)
    sources_curve = source_mean_f1_curve(source_counts)
    if threshold_by == "sources":
        threshold = float(THRESHOLDS[int(np.argmax(sources_curve))])
    f1_sources = float(sources_curve[int(np.argmin(np.abs(THRESHOLDS - threshold)))])
    return {
        "val_iou": round(at_half["iou"], 6),
        "val_f1": round(at_half["f1"], 6),
        "val_ods": round(ods_f1, 6),
        "val_f1_sources": round(f1_sources, 6),
        "threshold": threshold,
    }


# --- the epochs ---------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What `train` returns: where the run and its best model are, its history and its best epoch's record."""

    run_dir: Path
    best_model_dir: Path
    history: list[dict]
    best: dict | None


def train(config: TrainConfig, *, loss_fn: Callable | None = None) -> RunResult:
    """Train as `config` says, from Python or `crackseg train` alike (also under torchrun).

    `loss_fn(logits, mask, sdf, alpha) -> scalar tensor`, when given, replaces the loss `config.loss` names.
    """
    if not isinstance(config, TrainConfig):
        raise InputTypeError(f"train() takes a TrainConfig, not {type(config).__name__}; see TrainConfig.from_dict")
    rank, world = distributed_rank()
    try:
        run = set_up(config, rank, world, loss_fn)
        say(
            rank,
            f"training {config.arch}-{config.encoder} on {run.summary['train']['pairs']} pairs, validating on "
            f"{run.summary['val']['pairs']}; {run.device} {run.precision}, {world} process(es)",
        )
        fit(run, config)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return RunResult(run.out, run.out / "best", run.history, run.best)


def fit(run: Run, config: TrainConfig) -> None:
    """The epochs from where the run is to `config.epochs`, or until patience or the time limit stops them."""
    deadline = time.time() + config.max_train_minutes * 60 if config.max_train_minutes else math.inf
    stale = run.history[-1]["epoch"] - run.best["epoch"] if run.best else 0  # epochs since the best, when resuming
    try:
        for epoch in range(run.epochs_done, config.epochs):
            record = run_epoch(run, config, epoch, deadline)
            improved = record_epoch(run, record, config.select)
            stale = 0 if improved else stale + 1
            if run.rank == 0:
                save_epoch(run, config, improved)
            say(run.rank, format_record(record) + ("  *best" if improved else ""))
            if config.patience and stale >= config.patience:
                say(run.rank, f"no improvement for {config.patience} epochs: stopping early")
                break
            if time.time() + record["seconds"] > deadline:
                say(run.rank, f"the time limit of {config.max_train_minutes:g} min is reached after epoch {epoch + 1}")
                break
    except NonFiniteLoss as err:
        raise TrainingError(
            f"{err}; stopped. The last good checkpoint is kept in {run.out}; try a lower lr or clip_grad"
        ) from None
    except KeyboardInterrupt:
        say(run.rank, f"interrupted; {run.out / 'last.pt'} holds the last finished epoch: continue with resume")
        raise


def run_epoch(run: Run, config: TrainConfig, epoch: int, deadline: float) -> dict:
    """Train one epoch, validate the weights that would be saved, step the schedule; the epoch's record."""
    started = time.time()
    run.train_loader.dataset.epoch = epoch
    run.train_loader.sampler.set_epoch(epoch)
    alpha = alpha_at(config.alpha_schedule, epoch, config.epochs, config.alpha)
    common = {"alpha": alpha, "device": run.device, "precision": run.precision}
    train_loss = train_one_epoch(
        run.trained, run.train_loader, run.loss_fn, run.optimizer, **common, ema=run.ema, clip_grad=config.clip_grad,
        epoch=epoch, max_batches=config.max_batches, deadline=deadline, quiet=run.rank != 0,
        distill_weight=config.distill_weight, consistency_weight=config.consistency_weight,
    )  # fmt: skip
    val_loss, source_counts = validate(run.evaluated, run.val_loader, run.loss_fn, **common)
    lr = run.optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
    step_scheduler(run.scheduler, val_loss)
    return {
        "epoch": epoch + 1,
        "train_loss": round(train_loss, 6),
        "val_loss": round(val_loss, 6),
        **validation_scores(source_counts, config.threshold_by),
        "alpha": round(alpha, 4),
        "lr": lr,
        "seconds": round(time.time() - started, 1),
    }


# --- record -------------------------------------------------------------------------------------------------


def is_better(record: dict, best: dict | None, select: str) -> bool:
    if best is None:
        return True
    if select in ("f1", "ods", "sources"):
        key = {"f1": "val_f1", "ods": "val_ods", "sources": "val_f1_sources"}[select]
        return record[key] > best.get(key, -1.0)  # best from an older history may lack the newer keys
    return record["val_loss"] < best["val_loss"]


def record_epoch(run: Run, record: dict, select: str) -> bool:
    """Add the epoch to the history; True when it is the new best."""
    run.history.append(record)
    improved = is_better(record, run.best, select)
    if improved:
        run.best = dict(record)
    return improved


def format_record(r: dict) -> str:
    return (
        f"epoch {r['epoch']:3d}  train {r['train_loss']:.4f}  val {r['val_loss']:.4f}  IoU {r['val_iou']:.3f}  "
        f"F1 {r['val_f1']:.3f}  ODS {r['val_ods']:.3f}  "
        f"per-source F1 {r['val_f1_sources']:.3f} @ {r.get('threshold', 0):.2f}  "
        f"α {r['alpha']:.2f}  lr {r['lr']:.2e}  {r['seconds']:.0f}s"
    )
