"""What a run needs before its first epoch, each piece a plain function of the config: processes and device,
precision, seeds, datasets and loaders, model, optimiser, schedule, EMA and the DDP wrapper, gathered by `set_up`
into a `Run` (restored from last.pt when resuming)."""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from crackseg.data import (
    BatchBlockSampler,
    CrackDataset,
    EpochSeededDataset,
    find_all_pairs,
    source_weights,
    split_pairs,
    train_transform,
)
from crackseg.engines.base import cpu_has_bf16_matrix_engine
from crackseg.losses import build_loss
from crackseg.models.networks import build_model
from crackseg.models.pretrained import matching_tensors
from crackseg.train.checkpoint import (
    check_same_network,
    input_normalization,
    load_checkpoint,
    prepare_run_dir,
    write_run_info,
)
from crackseg.train.config import TrainConfig, TrainingError


def say(rank: int, message: str) -> None:
    if rank == 0:
        print(message, flush=True)


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
            raise TrainingError(f"device {requested!r}: no CUDA device is available here; use cpu")
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


def make_datasets(config: TrainConfig) -> tuple[EpochSeededDataset, CrackDataset, dict]:
    """The training set (augmented, seeded per epoch and item), the validation set (full-size) and a summary."""
    pairs = find_all_pairs(config.data, config.skip_unpaired, exclude_splits=("test",))
    if config.val_data:
        train_pairs, val_pairs = pairs, find_all_pairs(config.val_data, config.skip_unpaired)
    else:
        train_pairs, val_pairs = split_pairs(pairs, config.val_fraction, config.split_seed)
    if not val_pairs:
        raise TrainingError(
            f"the validation split came out empty: the {len(pairs)} pairs come from too few photos to hold one out "
            "(crops of a photo stay on one side); add photos or pass val_data"
        )
    transform = train_transform(
        config.size, not config.light_augment, config.distractor_prob, config.scale_range, config.distractors
    )
    mean, std = input_normalization(config)
    extra = make_degradation(config.degrade_prob, config.degrade_scale)
    train_set = EpochSeededDataset(
        CrackDataset(train_pairs, transform, mean, std, extra=extra, soft_dir=config.teacher_maps), config.seed
    )
    val_set = CrackDataset(val_pairs, mean=mean, std=std)
    summary = {
        "train": {"pairs": len(train_pairs), "sources": _count_sources(train_pairs)},
        "val": {"pairs": len(val_pairs), "sources": _count_sources(val_pairs)},
        "val_names": [str(p.image) for p in val_pairs],
    }
    return train_set, val_set, summary


def make_degradation(prob: float, scales: tuple[float, ...]):
    """The paper's degradation as augmentation, or None (TrainConfig has checked both values)."""
    if prob <= 0:
        return None
    from crackseg.degrade import RandomDegradation

    return RandomDegradation(prob, scales)


def _count_sources(pairs) -> dict[str, int]:
    return dict(sorted(Counter(p.source for p in pairs).items()))


def make_loaders(train_set, val_set, config: TrainConfig, rank: int, world: int):
    """Process `rank` of `world` loads its part of every global batch, and every world-th validation image."""
    if config.batch_size % world:
        raise TrainingError(f"batch_size {config.batch_size} must be a multiple of the {world} processes")
    weights = source_weights([p.source for p in train_set.dataset.pairs], config.source_balance)
    sampler = BatchBlockSampler(len(train_set), config.batch_size, config.seed, rank, world, weights)
    common = {"num_workers": config.workers, "persistent_workers": False}
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=config.batch_size // world, sampler=sampler, drop_last=True, **common
    )
    if len(train_loader) == 0:
        raise TrainingError(
            f"{len(train_set)} training pairs make no full batch of {config.batch_size}; lower batch_size"
        )
    val_sampler = torch.utils.data.DistributedSampler(val_set, world, rank, shuffle=False) if world > 1 else None
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=1, sampler=val_sampler, **common)
    return train_loader, val_loader


def make_model(config: TrainConfig, device: torch.device, precision: str, rank: int) -> torch.nn.Module:
    model = build_model(
        config.arch, config.encoder, config.encoder_weights, encoder_depth=config.encoder_depth, **config.arch_kwargs
    ).to(device, memory_format=memory_format(precision))
    if config.init_from and not config.resume:  # a resumed run has its own weights
        skipped = init_from(model, config.init_from)
        if skipped:
            say(rank, f"init_from {config.init_from}: {len(skipped)} tensors kept random (no match): {skipped[:4]}")
    return model


def init_from(model: torch.nn.Module, path: str) -> list[str]:
    """Copy the weights of a trained model whose names and shapes match; return the names left as they were.

    A U-Net with a narrower decoder starts from the trained decoder's strongest channels (`narrow_unet_decoder`);
    a model of another head or family still starts from the trained encoder this way. Nothing matching at all is
    an error: it means the wrong model was named.
    """
    from crackseg.models.narrow import narrow_unet_decoder
    from crackseg.models.networks import load_model

    target = model.state_dict()
    source = narrow_unet_decoder(load_model(path)[0].state_dict(), target)
    matching, skipped = matching_tensors(source, target)
    if not matching:
        raise TrainingError(f"init_from {path}: no tensor matches this architecture; pass a model of the same family")
    model.load_state_dict(matching, strict=False)
    return skipped


def make_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    optimizer_class = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return optimizer_class(model.parameters(), lr=lr, weight_decay=weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, epochs: int):
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
    return None


def step_scheduler(scheduler, val_loss: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    elif scheduler is not None:
        scheduler.step()


def make_ema(model: torch.nn.Module, decay: float):
    """An averaged copy of the model (parameters and BatchNorm statistics), as in torchvision's references."""
    if not decay:
        return None
    multi_avg_fn = torch.optim.swa_utils.get_ema_multi_avg_fn(decay)
    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=multi_avg_fn, use_buffers=True)


def distribute(model: torch.nn.Module, device: torch.device, world: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the network whose weights are saved, what the training step calls): under DDP, its wrapper."""
    if world == 1:
        return model, model
    if device.type == "cuda":  # SyncBatchNorm runs on GPUs only; on CPU each process keeps its own statistics
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, torch.nn.parallel.DistributedDataParallel(model)


@dataclass
class Run:
    """What `set_up` builds: the objects an epoch needs, and how far the run has got."""

    out: Path
    rank: int
    world: int
    device: torch.device
    precision: str
    model: torch.nn.Module  # the network whose weights are checkpointed
    trained: torch.nn.Module  # what the training step calls: `model`, or its DDP wrapper
    ema: torch.optim.swa_utils.AveragedModel | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    loss_fn: Callable
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    summary: dict
    history: list[dict] = field(default_factory=list)
    best: dict | None = None

    @property
    def epochs_done(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights that are validated, and so the ones saved as the best model."""
        return self.model if self.ema is None else self.ema.module


def set_up(config: TrainConfig, rank: int, world: int, loss_fn: Callable | None = None) -> Run:
    """Everything a run needs, restored from its last.pt when resuming. Keep the order of the random draws (data,
    then model initialisation): a seed must go on giving the same run."""
    out = Path(config.out)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    precision = pick_precision(config.precision, device)
    if rank == 0:
        prepare_run_dir(out, config.resume, config.overwrite)
    seed_everything(config.seed)
    train_set, val_set, summary = make_datasets(config)
    train_loader, val_loader = make_loaders(train_set, val_set, config, rank, world)
    model = make_model(config, device, precision, rank)
    optimizer = make_optimizer(model, config.optimizer, config.lr, config.weight_decay)
    scheduler = make_scheduler(optimizer, config.lr_schedule, config.epochs)
    state = load_checkpoint(out / "last.pt") if config.resume and (out / "last.pt").exists() else None
    if state is not None:
        restore_weights(config, state, out, model, optimizer, scheduler)
    run = Run(
        out=out,
        rank=rank,
        world=world,
        device=device,
        precision=precision,
        model=model,
        trained=model,
        ema=make_ema(model, config.ema),  # after a resume without an average so far: from the resumed weights
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=loss_fn or build_loss(config.loss, config.gamma, config.pos_weight),
        train_loader=train_loader,
        val_loader=val_loader,
        summary=summary,
    )
    if state is not None:
        restore_progress(run, state)
    run.model, run.trained = distribute(model, device, world)
    if rank == 0:
        write_run_info(out, config, summary, device, precision, world)
    return run


def restore_weights(config: TrainConfig, state: dict, out: Path, model, optimizer, scheduler) -> None:
    check_same_network(config, state, out)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])


def restore_progress(run: Run, state: dict) -> None:
    if run.ema is not None and state.get("ema"):
        run.ema.load_state_dict(state["ema"])
    run.history, run.best = state["history"], state["best"]
    torch.set_rng_state(state["torch_rng"])
    say(run.rank, f"resuming {run.out} after epoch {state['epoch']}")
