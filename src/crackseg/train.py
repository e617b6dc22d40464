"""Training: plain functions per stage, as in torchvision's references/segmentation.

`train(args)` builds the data and model, then loops `train_one_epoch` / `validate`, writing after every epoch:
``last.pt`` (everything needed to resume), ``best/`` (a crackseg model: safetensors + config.json),
``history.csv`` and ``loss_curve.png``. Under ``torchrun`` it trains with DistributedDataParallel and only
rank 0 writes files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import platform
import random
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from crackseg import __version__
from crackseg.data import CrackDataset, add_split_arguments, find_all_pairs, split_pairs, train_transform
from crackseg.engines.torch_engine import cpu_has_bf16_matrix_engine
from crackseg.errors import CracksegError, InputError
from crackseg.images import atomic_write_bytes
from crackseg.losses import ALPHA_SCHEDULES, LOSSES, alpha_at, build_loss
from crackseg.metrics import THRESHOLDS, best_threshold, scores, source_mean_f1_curve, sweep_counts
from crackseg.models import ModelConfig, build_model, save_model
from crackseg.pretrained import matching_tensors, normalization

log = logging.getLogger(__name__)

HISTORY_FIELDS = [
    "epoch", "train_loss", "val_loss", "val_iou", "val_f1", "val_ods", "val_f1_sources", "threshold", "alpha", "lr",
    "seconds",
]  # fmt: skip


class TrainingError(CracksegError, RuntimeError):
    """Training cannot go on; the message says why and where the last good checkpoint is."""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    a = parser.add_argument
    a("--data", nargs="+", help="one or more data roots (test splits are left out)")
    a("--val-data", nargs="+", help="validation roots; default: a split carved from --data")
    a("--out", help="run directory")
    a("--config", help="YAML or JSON file of option values (command-line flags override it)")
    a(
        "--arch",
        default="pspnet",
        help="any segmentation-models-pytorch architecture (pspnet, unet, fpn, ...)",
    )
    a("--encoder", default="resnet18")
    a("--encoder-depth", type=int, default=None)
    a(
        "--arch-kwargs",
        type=json.loads,
        default={},
        help="extra smp arguments as JSON, e.g. '{\"decoder_channels\": [128, 64, 32, 16]}'",
    )
    a("--init-from", default=None, help="start from a trained crackseg model's weights (fine-tuning)")
    a(
        "--encoder-weights",
        default=None,
        help="none; imagenet (offline from an installed weights package for timm-tf_efficientnet_lite0/1/2, else "
        "downloaded); or the path of a state dict in the encoder's own naming",
    )
    a("--size", type=int, default=448, help="training crop size")
    a("--epochs", type=int, default=50)
    a("--batch-size", type=int, default=8)
    a("--optimizer", choices=["adam", "adamw", "sgd"], default="adam")
    a("--lr", type=float, default=1e-4)
    a("--weight-decay", type=float, default=0.0)
    a("--lr-schedule", choices=["none", "cosine", "plateau"], default="none")
    a("--loss", choices=LOSSES, default="bc")
    a("--gamma", type=float, default=0.5, help="weight of WCE against generalised Dice in the BC loss")
    a("--alpha-schedule", choices=ALPHA_SCHEDULES, default="linear")
    a("--alpha", type=float, default=0.5, help="α of the constant schedule")
    a("--pos-weight", type=float, default=None, help="fixed crack weight of WCE (default: batch ratio)")
    add_split_arguments(parser)
    a(
        "--select",
        choices=["loss", "f1", "ods", "sources"],
        default="loss",
        help="which validation number picks the best epoch: loss, F1 at 0.5, F1 at the best threshold (ODS), or "
        "sources: the mean over the data's sources of each source's F1 at that threshold (every surface counts "
        "the same, however many photos it has)",
    )
    a(
        "--threshold-by",
        choices=["pooled", "sources"],
        default="pooled",
        help="the threshold stored with the model: where the pooled validation F1 peaks (ODS), or where the mean of "
        "the per-source F1s peaks (a large source no longer decides it alone); val_f1_sources is taken there",
    )
    a("--patience", type=int, default=0, help="stop after this many epochs without improvement (0: never)")
    a("--clip-grad", type=float, default=0.0)
    a(
        "--ema",
        type=float,
        default=0.0,
        help="decay of an exponential moving average of the weights, updated every step, that is validated and "
        "saved instead of the raw weights (e.g. 0.998; 0: off)",
    )
    a("--max-train-minutes", type=float, default=0.0, help="stop cleanly after this much wall-clock time")
    a("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    a("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    a("--threads", type=int, default=0, help="CPU threads for torch (0: library default)")
    a("--workers", type=int, default=1, help="data-loading worker processes")
    a("--light-augment", action="store_true", help="geometric augmentation only (no colour, blur, noise)")
    a(
        "--degrade-prob",
        type=float,
        default=0.0,
        help="probability of the paper's degradation as augmentation",
    )
    a("--degrade-scale", default="2,4", help="down-scaling factors the degradation draws from")
    a(
        "--scale-range",
        default="0.7,1.3",
        help="LOW,HIGH: the random scale factor of training photos (below 1: thinner cracks, as in wide frames)",
    )
    a(
        "--distractor-prob",
        type=float,
        default=0.0,
        help="share of training crops given generated non-cracks (straight dark lines, road markings, stains)",
    )
    a(
        "--source-balance",
        type=float,
        default=0.0,
        help="draw each source's pairs with weight 1/count^P: 0 keeps the data's mix, 0.5 gives each source a share "
        "proportional to the square root of its size, 1 gives every source the same share",
    )
    a("--seed", type=int, default=0)
    a("--skip-unpaired", action="store_true")
    a("--resume", action="store_true", help="continue the run in --out from its last.pt")
    a("--overwrite", action="store_true", help="start afresh even if --out holds a run")
    a("--max-batches", type=int, default=0, help=argparse.SUPPRESS)  # tests: shorten epochs
    a("--nan-at-batch", type=int, default=-1, help=argparse.SUPPRESS)  # tests: force a NaN loss
    return parser


def apply_config_file(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Values from --config fill every option the command line did not set."""
    if not args.config:
        return
    import yaml

    path = Path(args.config)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise SystemExit(f"error: {path}: cannot read config ({err})") from None
    given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    for key, value in values.items():
        key = key.replace("-", "_")
        if not hasattr(args, key):
            raise SystemExit(f"error: {path}: unknown option {key!r}")
        if key not in given:
            setattr(args, key, value)


# --- set-up -------------------------------------------------------------------------------------------------


def distributed_rank() -> tuple[int, int]:
    """(rank, world size); initialises the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda asked for, but no CUDA device is available; use --device cpu")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device(f"cuda:{local}" if requested == "cuda" else requested)
    return torch.device("cpu")


def pick_precision(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16_matrix_engine() else "fp32"


def memory_format(precision: str) -> torch.memory_format:
    """channels_last pays off with bf16 matrix engines; on AVX2-only CPUs it slows fp32 convolutions down."""
    return torch.channels_last if precision == "bf16" else torch.contiguous_format


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class EpochSeededDataset(torch.utils.data.Dataset):
    """Seeds the augmentation per (seed, epoch, index): the same crops whatever the worker count or resume."""

    def __init__(self, dataset: CrackDataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item_seed = zlib.crc32(f"{self.seed}/{self.epoch}/{index}".encode())
        if self.dataset.transform is not None:
            self.dataset.transform.set_random_seed(item_seed)
        if self.dataset.extra is not None:
            self.dataset.extra.seed = item_seed
        return self.dataset[index]


def parse_scale_range(text: str) -> tuple[float, float]:
    """--scale-range "LOW,HIGH" as two factors, 0 < LOW <= HIGH."""
    try:
        low, high = (float(part) for part in str(text).split(","))
    except ValueError:
        low = high = float("nan")
    if not 0 < low <= high:
        raise TrainingError(f"--scale-range {text!r}: expected two factors LOW,HIGH with 0 < LOW <= HIGH, e.g. 0.4,1.3")
    return low, high


def make_degradation(prob: float, scales: str):
    """The paper's degradation as augmentation, or None; a bad --degrade-prob/--degrade-scale is a one-line error."""
    if prob <= 0:
        return None
    from crackseg.degrade import DegradationError, RandomDegradation

    try:
        return RandomDegradation(prob, str(scales).split(","))
    except DegradationError as err:
        raise TrainingError(f"--degrade-prob {prob} --degrade-scale {scales!r}: {err}") from None


def make_datasets(args) -> tuple[EpochSeededDataset, CrackDataset, dict]:
    pairs = find_all_pairs(args.data, args.skip_unpaired, exclude_splits=("test",))
    if args.val_data:
        train_pairs, val_pairs = pairs, find_all_pairs(args.val_data, args.skip_unpaired)
    else:
        train_pairs, val_pairs = split_pairs(pairs, args.val_fraction, args.split_seed)
    if not val_pairs:
        raise TrainingError(
            "the validation split came out empty; add data, raise --val-fraction or pass --val-data DIR"
        )
    extra = make_degradation(args.degrade_prob, args.degrade_scale)
    transform = train_transform(
        args.size, not args.light_augment, args.distractor_prob, parse_scale_range(args.scale_range)
    )
    mean, std = input_normalization(args)
    train_set = EpochSeededDataset(CrackDataset(train_pairs, transform, mean, std, extra=extra), args.seed)
    val_set = CrackDataset(val_pairs, mean=mean, std=std)
    summary = {
        "train": {"pairs": len(train_pairs), "sources": _count_sources(train_pairs)},
        "val": {"pairs": len(val_pairs), "sources": _count_sources(val_pairs)},
        "val_names": [str(p.image) for p in val_pairs],
    }
    return train_set, val_set, summary


def input_normalization(args) -> tuple[tuple, tuple]:
    """The mean/std the network's inputs are normalised with: those of the model it starts from, or of its
    encoder's pretrained weights (ImageNet's for a random start, as before)."""
    if args.init_from:
        from crackseg.model_config import read_config, resolve_weights

        config = read_config(resolve_weights(args.init_from))
        return config.mean, config.std
    return normalization(args.encoder, args.encoder_weights)


def _count_sources(pairs) -> dict[str, int]:
    return dict(sorted(Counter(p.source for p in pairs).items()))


def source_weights(sources: list[str], power: float) -> torch.Tensor | None:
    """Per-pair sampling weights 1/count(source)^power, so small sources (concrete, formwork) are seen more often."""
    if power == 0:
        return None
    if not 0 < power <= 1:
        raise TrainingError(f"--source-balance {power}: expected a power between 0 and 1, e.g. 0.5")
    counts = Counter(sources)
    return torch.tensor([counts[s] ** -power for s in sources], dtype=torch.float64)


class BatchBlockSampler(torch.utils.data.Sampler):
    """A seeded shuffle per epoch in which process r of w takes the r-th part of every global batch.

    With one process it is a plain seeded shuffle; under DDP the w processes together see exactly the batches
    one process would see, so a distributed run follows the single-process run. With `weights`, an epoch is as
    many draws with replacement, in proportion to the weights, instead of a permutation.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, weights=None):
        self.size, self.batch_size, self.seed, self.rank, self.world = size, batch_size, seed, rank, world
        self.weights, self.epoch = weights, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        usable = self.size - self.size % self.batch_size
        part = self.batch_size // self.world
        starts = range(0, usable, self.batch_size)
        return [i for s in starts for i in order[s + self.rank * part : s + (self.rank + 1) * part].tolist()]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return (self.size // self.batch_size) * (self.batch_size // self.world)


def make_loaders(train_set, val_set, args, rank: int, world: int):
    if args.batch_size % world:
        raise TrainingError(f"--batch-size {args.batch_size} must be a multiple of the {world} processes")
    weights = source_weights([p.source for p in train_set.dataset.pairs], args.source_balance)
    sampler = BatchBlockSampler(len(train_set), args.batch_size, args.seed, rank, world, weights)
    common = {"num_workers": args.workers, "persistent_workers": False}
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.batch_size // world, sampler=sampler, drop_last=True, **common
    )
    if len(train_loader) == 0:
        raise TrainingError(
            f"{len(train_set)} training pairs make no full batch of {args.batch_size}; lower --batch-size"
        )
    val_sampler = torch.utils.data.DistributedSampler(val_set, world, rank, shuffle=False) if world > 1 else None
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=1, sampler=val_sampler, **common)
    return train_loader, val_loader


def set_epoch(loader, epoch: int) -> None:
    loader.dataset.epoch = epoch
    loader.sampler.set_epoch(epoch)


# --- the two stages -----------------------------------------------------------------------------------------


def train_one_epoch(model, ema, loss_fn, optimizer, loader, alpha, precision, device, args, epoch, deadline, quiet):
    model.train()
    total, count = 0.0, 0
    # Without a terminal (logs, nohup), the bar still reports, every 30 s.
    interval = 0.1 if sys.stderr.isatty() else 30
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=quiet, mininterval=interval)
    for step, batch in enumerate(bar):
        image = batch["image"].to(device).contiguous(memory_format=memory_format(precision))
        mask, sdf = batch["mask"].to(device), batch["sdf"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(image)
        loss = loss_fn(logits.float(), mask, sdf, alpha)
        if step == args.nan_at_batch:
            loss = loss * float("nan")
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {loss.item()} at epoch {epoch + 1}, batch {step + 1}; stopped. The last good "
                f"checkpoint is kept in {args.out}; try a lower --lr or --clip-grad"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        total += loss.item() * image.shape[0]
        count += image.shape[0]
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        if (args.max_batches and step + 1 >= args.max_batches) or time.time() > deadline:
            break
    return _all_reduce_mean(total, count, device)


@torch.no_grad()
def validate(model, loss_fn, loader, alpha, precision, device) -> tuple[float, dict[str, np.ndarray]]:
    """Validation loss, and per source the sweep counts over thresholds (dataset level) of full-size predictions."""
    model.eval()
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


# --- files --------------------------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: no checkpoint to resume from; start without --resume") from None


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


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise TrainingError(f"{out}: run directory exists; pass --resume to continue it or --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise TrainingError(f"{out}: cannot write to the run directory ({err.strerror})") from None


def model_config(args, threshold: float = 0.5, notes: dict | None = None) -> ModelConfig:
    mean, std = input_normalization(args)
    return ModelConfig(
        arch=args.arch,
        encoder=args.encoder,
        encoder_depth=args.encoder_depth,
        arch_kwargs=args.arch_kwargs,
        mean=mean,
        std=std,
        train_size=args.size,
        threshold=threshold,
        name=Path(args.out).name,
        notes=notes or {},
    )


# --- the loop -----------------------------------------------------------------------------------------------


def is_better(record: dict, best: dict | None, select: str) -> bool:
    if best is None:
        return True
    if select in ("f1", "ods", "sources"):
        key = {"f1": "val_f1", "ods": "val_ods", "sources": "val_f1_sources"}[select]
        return record[key] > best.get(key, -1.0)  # best from an older history may lack the newer keys
    return record["val_loss"] < best["val_loss"]


def train(args: argparse.Namespace) -> Path:
    rank, world = distributed_rank()
    quiet = rank != 0
    out = Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    precision = pick_precision(args.precision, device)
    if rank == 0:
        prepare_run_dir(out, args.resume, args.overwrite)
    seed_everything(args.seed)
    train_set, val_set, summary = make_datasets(args)
    train_loader, val_loader = make_loaders(train_set, val_set, args, rank, world)
    model = build_model(
        args.arch, args.encoder, args.encoder_weights, encoder_depth=args.encoder_depth, **args.arch_kwargs
    ).to(device, memory_format=memory_format(precision))
    if args.init_from and not args.resume:
        skipped = init_from(model, args.init_from)
        if skipped:
            say(rank, f"--init-from {args.init_from}: {len(skipped)} tensors kept random (no match): {skipped[:4]}")
    loss_fn = build_loss(args.loss, args.gamma, args.pos_weight)
    optimizer = make_optimizer(model, args)
    scheduler = make_scheduler(optimizer, args)
    history: list[dict] = []
    start_epoch, best = 0, None
    state = load_checkpoint(out / "last.pt") if args.resume and (out / "last.pt").exists() else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
    ema = make_ema(model, args.ema)  # after a resume without an average so far, it starts from the resumed weights
    if state is not None:
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"]
        torch.set_rng_state(state["torch_rng"])
        say(rank, f"resuming {out} after epoch {start_epoch}")
    ddp_model = model
    if world > 1:
        if device.type == "cuda":  # SyncBatchNorm runs on GPUs only; on CPU each process keeps its own statistics
            model = ddp_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp_model = torch.nn.parallel.DistributedDataParallel(model)
    if rank == 0:
        write_run_info(out, args, summary, device, precision, world)
    say(
        rank,
        f"training {args.arch}-{args.encoder} on {summary['train']['pairs']} pairs, validating on "
        f"{summary['val']['pairs']}; {device} {precision}, {world} process(es)",
    )
    deadline = time.time() + args.max_train_minutes * 60 if args.max_train_minutes else math.inf
    stale = history[-1]["epoch"] - best["epoch"] if best else 0  # epochs since the best, when resuming
    try:
        for epoch in range(start_epoch, args.epochs):
            started = time.time()
            set_epoch(train_loader, epoch)
            alpha = alpha_at(args.alpha_schedule, epoch, args.epochs, args.alpha)
            train_loss = train_one_epoch(
                ddp_model,
                ema,
                loss_fn,
                optimizer,
                train_loader,
                alpha,
                precision,
                device,
                args,
                epoch,
                deadline,
                quiet,
            )
            evaluated = model if ema is None else ema.module  # the weights that are validated are the ones saved
            val_loss, source_counts = validate(evaluated, loss_fn, val_loader, alpha, precision, device)
            counts = sum(source_counts.values())
            at_half = scores(*counts[49])  # threshold 0.50
            threshold, ods_f1 = best_threshold(counts)
            sources_curve = source_mean_f1_curve(source_counts)
            if args.threshold_by == "sources":
                threshold = float(THRESHOLDS[int(np.argmax(sources_curve))])
            f1_sources = float(sources_curve[int(np.argmin(np.abs(THRESHOLDS - threshold)))])
            record = {
                "epoch": epoch + 1,
                "train_loss": round(train_loss, 6),
                "val_loss": round(val_loss, 6),
                "val_iou": round(at_half["iou"], 6),
                "val_f1": round(at_half["f1"], 6),
                "val_ods": round(ods_f1, 6),
                "val_f1_sources": round(f1_sources, 6),
                "threshold": threshold,
                "alpha": round(alpha, 4),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(time.time() - started, 1),
            }
            step_scheduler(scheduler, val_loss)
            history.append(record)
            improved = is_better(record, best, args.select)
            if improved:
                best = dict(record)
                stale = 0
            else:
                stale += 1
            if rank == 0:
                if improved:
                    notes = {
                        "epoch": epoch + 1,
                        "val_f1_at_0.5": record["val_f1"],
                        "val_ods_f1": ods_f1,
                        "split_seed": args.split_seed,
                    }
                    save_model(evaluated, model_config(args, threshold, notes), out / "best")
                save_checkpoint(
                    out / "last.pt",
                    checkpoint_state(model, ema, optimizer, scheduler, epoch + 1, history, best, args),
                )
                write_history(out, history)
                plot_curves(out, history)
            say(rank, format_record(record) + ("  *best" if improved else ""))
            if args.patience and stale >= args.patience:
                say(rank, f"no improvement for {args.patience} epochs: stopping early")
                break
            if time.time() + record["seconds"] > deadline:
                say(rank, f"--max-train-minutes {args.max_train_minutes} reached after epoch {epoch + 1}")
                break
    except KeyboardInterrupt:
        say(rank, f"interrupted; {out / 'last.pt'} holds the last finished epoch: continue with --resume")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return out


def init_from(model: torch.nn.Module, path: str) -> list[str]:
    """Copy the weights of a trained model whose names and shapes match; return the names left as they were.

    A model of another decoder width (or head) still starts from the trained encoder this way. Nothing matching
    at all is an error: it means the wrong model was named.
    """
    from crackseg.models import load_model

    matching, skipped = matching_tensors(load_model(path)[0].state_dict(), model.state_dict())
    if not matching:
        raise TrainingError(f"--init-from {path}: no tensor matches this architecture; pass a model of the same family")
    model.load_state_dict(matching, strict=False)
    return skipped


def make_optimizer(model, args):
    params, decay = model.parameters(), args.weight_decay
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=decay)
    optimizer_class = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(params, lr=args.lr, weight_decay=decay)


def make_ema(model, decay: float):
    """An averaged copy of the model (parameters and BatchNorm statistics), as in torchvision's references."""
    if not decay:
        return None
    if not 0 < decay < 1:
        raise InputError(f"--ema {decay}: the decay must lie between 0 and 1, e.g. 0.998")
    multi_avg_fn = torch.optim.swa_utils.get_ema_multi_avg_fn(decay)
    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=multi_avg_fn, use_buffers=True)


def make_scheduler(optimizer, args):
    if args.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    if args.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
    return None


def step_scheduler(scheduler, val_loss: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    elif scheduler is not None:
        scheduler.step()


def checkpoint_state(model, ema, optimizer, scheduler, epoch, history, best, args) -> dict:
    return {
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "history": history,
        "best": best,
        "torch_rng": torch.get_rng_state(),
        "args": {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))},
    }


def write_run_info(out: Path, args, summary: dict, device, precision: str, world: int) -> None:
    info = {
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "crackseg_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "precision": precision,
        "processes": world,
        "data": summary,
    }
    atomic_write_bytes(out / "run.json", json.dumps(info, indent=2, default=str).encode())


def format_record(r: dict) -> str:
    return (
        f"epoch {r['epoch']:3d}  train {r['train_loss']:.4f}  val {r['val_loss']:.4f}  IoU {r['val_iou']:.3f}  "
        f"F1 {r['val_f1']:.3f}  ODS {r['val_ods']:.3f}  "
        f"per-source F1 {r['val_f1_sources']:.3f} @ {r.get('threshold', 0):.2f}  "
        f"α {r['alpha']:.2f}  lr {r['lr']:.2e}  {r['seconds']:.0f}s"
    )


def say(rank: int, message: str) -> None:
    if rank == 0:
        print(message, flush=True)
