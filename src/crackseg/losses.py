"""The boundary-combined (BC) loss of Kondo & Ukita (CSBSR, IEEE TIM 2024) and the comparison losses.

    L_BC = α·L_B + (1 − α)·L_R,   L_R = (1 − γ)·L_GDice + γ·L_WCE

Every loss takes ``(logits, mask, sdf, alpha)`` with N×1×H×W tensors; ``sdf`` is the mask's normalised signed
distance map (``crackseg.data.signed_distance``), computed in the data pipeline.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crackseg.errors import InputError

ALPHA_SCHEDULES = ("linear", "step", "constant")
LOSSES = ("bc", "bce", "dice", "bce+dice", "bce+dice+skel", "focal")


def alpha_at(schedule: str, epoch: int, epochs: int, constant: float = 0.5) -> float:
    """Weight of the boundary term at a 0-based epoch.

    linear: epoch / epochs (the original project); step: 0.01 + 0.01·epoch, capped at 0.99 (the paper's code);
    constant: the given value.
    """
    if schedule == "linear":
        return epoch / max(epochs, 1)
    if schedule == "step":
        return min(0.01 + 0.01 * epoch, 0.99)
    if schedule == "constant":
        return constant
    raise InputError(f"unknown alpha schedule {schedule!r}; choose one of {', '.join(ALPHA_SCHEDULES)}")


def boundary_loss(logits: torch.Tensor, sdf: torch.Tensor) -> torch.Tensor:
    """Kervadec et al.'s boundary loss: mean of p·φ, lowest when probability sits inside the crack."""
    return (torch.sigmoid(logits) * sdf).mean()


def generalized_dice_loss(logits: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Generalised Dice over the crack and background classes, weights w_c = 1 / (Σ g_c)².

    Sums run over the whole batch. A class absent from the batch would get an infinite weight; as in MONAI it
    gets the largest finite weight instead.
    """
    p = torch.sigmoid(logits).float()
    probs = torch.stack([p, 1 - p]).flatten(1)
    truth = torch.stack([mask, 1 - mask]).float().flatten(1)
    volume = truth.sum(1)
    weights = 1.0 / volume**2
    finite = torch.isfinite(weights)
    weights = torch.where(finite, weights, weights[finite].max() if finite.any() else torch.ones_like(weights))
    intersection = (weights * (probs * truth).sum(1)).sum()
    union = (weights * (probs + truth).sum(1)).sum()
    return 1 - (2 * intersection + eps) / (union + eps)


def crack_pos_weight(mask: torch.Tensor, max_weight: float = 50.0) -> torch.Tensor:
    """#background / #crack pixels of the batch, clamped to [1, max_weight]; 1 when the batch has no crack."""
    crack = mask.sum()
    if crack == 0:
        return torch.ones((), device=mask.device)
    return ((mask.numel() - crack) / crack).clamp(1.0, max_weight)


def weighted_bce_loss(logits: torch.Tensor, mask: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """Binary cross-entropy on logits with the crack class up-weighted (batch ratio, or a fixed value)."""
    weight = crack_pos_weight(mask) if pos_weight is None else torch.tensor(float(pos_weight))
    return F.binary_cross_entropy_with_logits(logits.float(), mask.float(), pos_weight=weight.to(logits.device))


class BCLoss(nn.Module):
    def __init__(self, gamma: float = 0.5, pos_weight: float | None = None):
        super().__init__()
        self.gamma, self.pos_weight = gamma, pos_weight

    def region(self, logits, mask):
        gdice = generalized_dice_loss(logits, mask)
        wce = weighted_bce_loss(logits, mask, self.pos_weight)
        return (1 - self.gamma) * gdice + self.gamma * wce

    def forward(self, logits, mask, sdf, alpha: float = 0.0):
        return alpha * boundary_loss(logits.float(), sdf) + (1 - alpha) * self.region(logits, mask)


def tubed_skeleton(mask: torch.Tensor) -> torch.Tensor:
    """The centrelines of a N×1×H×W 0/1 mask, thickened to 3 px within the mask (Kirchhoff et al.'s "tubed"
    skeleton: a 1 px centreline would be lost to a one-pixel offset)."""
    from scipy.ndimage import binary_dilation
    from skimage.morphology import skeletonize

    masks = mask.detach().cpu().numpy()[:, 0] > 0.5
    tubes = [binary_dilation(skeletonize(m), iterations=1) & m for m in masks]
    return torch.from_numpy(np.stack(tubes)[:, None].astype(np.float32)).to(mask.device)


def skeleton_recall_loss(logits: torch.Tensor, mask: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Skeleton Recall (Kirchhoff et al., ECCV 2024): 1 − the share of the cracks' centrelines predicted, per image.

    Thin cracks are a small share of the crack pixels, so Dice and BCE barely notice when one is missed; counted
    along centrelines every crack weighs by its length, not its width.
    """
    skeleton = tubed_skeleton(mask)
    found = (torch.sigmoid(logits) * skeleton).sum(dim=(1, 2, 3))
    return (1 - (found + smooth) / (skeleton.sum(dim=(1, 2, 3)) + smooth)).mean()


class RegionLoss(nn.Module):
    """The comparison losses, which ignore the distance map and α; "+skel" adds `skeleton_recall_loss`."""

    def __init__(self, name: str):
        super().__init__()
        # Imported here: it slows every command's start (crackseg.models.networks.build_model says why).
        import segmentation_models_pytorch as smp

        self.name = name
        self.dice = smp.losses.DiceLoss("binary", from_logits=True)
        self.focal = smp.losses.FocalLoss("binary")

    def forward(self, logits, mask, sdf=None, alpha: float = 0.0):
        logits, mask = logits.float(), mask.float()
        if self.name == "focal":
            return self.focal(logits, mask)
        total = logits.new_zeros(())
        if "bce" in self.name:
            total = total + F.binary_cross_entropy_with_logits(logits, mask)
        if "dice" in self.name:
            total = total + self.dice(logits, mask)
        if "skel" in self.name:
            total = total + skeleton_recall_loss(logits, mask)
        return total


def build_loss(name: str = "bc", gamma: float = 0.5, pos_weight: float | None = None) -> nn.Module:
    if name == "bc":
        return BCLoss(gamma, pos_weight)
    if name in LOSSES:
        return RegionLoss(name)
    raise InputError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
