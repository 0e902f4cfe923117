"""The seed's losses (BCE + Dice, bootstrapped BCE, online bootstrapping, border-weighted) and the border Dice metric.

Every loss maps logits Bx1xHxW and a float {0,1} mask Bx1xHxW to a scalar; `build_loss(name, **kwargs)` turns a
`conf/loss/*.yaml` (plain values: `name` plus the loss's keyword arguments) into one.
"""

import functools
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss, SoftBCEWithLogitsLoss
from torch import nn

from carvana import CarvanaError


def check_kernel(kernel: int) -> None:
    """Refuse an even or non-positive pooling kernel: only an odd one keeps the band centred on the edge."""
    if kernel < 1 or kernel % 2 == 0:
        raise CarvanaError(f"border kernel must be a positive odd number (the seed's is 11), got {kernel}")


def border_band(mask: torch.Tensor, kernel: int = 11) -> torch.Tensor:
    """Pixels whose kernel x kernel neighbourhood holds both classes of a {0,1} mask Bx1xHxW -> Bx1xHxW float {0,1}.

    The seed thresholds a 'same' average pool strictly between 0 and 1; for a binary mask that is dilation != erosion,
    which max pooling gives exactly (no rounding at 1.0). Max pooling pads with -inf, so, like TensorFlow's 'same'
    average pool (which leaves padding out of the mean), the image's own edge is not a border.
    """
    check_kernel(kernel)
    mask = mask.float()
    dilated = F.max_pool2d(mask, kernel, stride=1, padding=kernel // 2)
    eroded = -F.max_pool2d(-mask, kernel, stride=1, padding=kernel // 2)
    return (dilated > eroded).float()


def border_weights(mask: torch.Tensor, kernel: int = 11, border_weight: float = 2.0) -> torch.Tensor:
    """Pixel weights 1 + border_weight * band for a {0,1} mask Bx1xHxW, scaled so each image's sum is H*W -> Bx1xHxW."""
    weights = 1 + border_weight * border_band(mask, kernel)
    # the seed's renormalisation keeps the loss on the scale of the unweighted one; per image, so that the other
    # photos of a batch do not change one photo's weights
    return weights * (mask[0].numel() / weights.sum(dim=(1, 2, 3), keepdim=True))


def border_dice(probs: torch.Tensor, target: torch.Tensor, kernel: int = 11, eps: float = 1e-7) -> torch.Tensor:
    """Dice inside the target's border band of Bx1xHxW probabilities (or {0,1} masks) -> B in [0, 1]; no band: 1."""
    band = border_band(target, kernel)
    probs, target = probs.float() * band, target.float() * band
    dims = tuple(range(1, probs.ndim))
    inter = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return torch.where(total > 0, 2 * inter / (total + eps), torch.ones_like(total))


class BCEDiceLoss(nn.Module):
    """bce_weight * BCE + dice_weight * (1 - soft Dice over the batch), smp's two losses: the seed's 0.2 / 0.8."""

    def __init__(self, bce_weight: float = 0.2, dice_weight: float = 0.8):
        super().__init__()
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self.bce, self.dice = SoftBCEWithLogitsLoss(), DiceLoss(mode="binary", from_logits=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Logits and {0,1} target Bx1xHxW -> scalar."""
        return self.bce_weight * self.bce(logits, target) + self.dice_weight * self.dice(logits, target)


def dice_loss() -> nn.Module:
    """1 - soft Dice over the batch (smp's binary DiceLoss on logits; 0 when the whole batch has no mask)."""
    return DiceLoss(mode="binary", from_logits=True)


def bce_loss() -> nn.Module:
    """Mean binary cross-entropy on logits (smp's SoftBCEWithLogitsLoss)."""
    return SoftBCEWithLogitsLoss()


class BootstrappedBCELoss(nn.Module):
    """BCE against beta * y + (1 - beta) * p, with p the detached sigmoid (soft) or p > 0.5 (hard): Reed et al. 2014."""

    def __init__(self, beta: float = 0.95, mode: str = "soft"):
        super().__init__()
        if mode not in ("soft", "hard"):
            raise CarvanaError(f"bootstrapped BCE mode must be 'soft' or 'hard', got '{mode}'")
        if not 0 <= beta <= 1:
            raise CarvanaError(f"bootstrapped BCE beta is the weight of the label, in [0, 1]; got {beta}")
        self.beta, self.mode = beta, mode

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Logits and {0,1} target Bx1xHxW -> scalar."""
        logits = logits.float()
        # the prediction is a label, not a path for gradients: otherwise the loss pulls p towards itself
        probs = logits.detach().sigmoid()
        belief = probs if self.mode == "soft" else (probs > 0.5).float()
        return F.binary_cross_entropy_with_logits(logits, self.beta * target + (1 - self.beta) * belief)


class OnlineBootstrappedBCELoss(nn.Module):
    """Mean BCE of the ratio * H*W hardest pixels (largest BCE) of each image: online bootstrapping / OHEM."""

    def __init__(self, ratio: float = 0.25):
        super().__init__()
        if not 0 < ratio <= 1:
            raise CarvanaError(f"online bootstrapping ratio is the share of pixels kept, in (0, 1]; got {ratio}")
        self.ratio = ratio

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Logits and {0,1} target Bx1xHxW -> scalar."""
        loss = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").flatten(1)
        k = max(1, int(self.ratio * loss.shape[1]))
        return loss.topk(k, dim=1, sorted=False).values.mean()


class BorderLoss(nn.Module):
    """Border-weighted BCE + Dice (the seed's weighted_bce_dice_loss): the band around the mask's edge counts more."""

    def __init__(self, kernel: int = 11, border_weight: float = 2.0, bce_weight: float = 1.0, dice_weight: float = 1.0,
                 smooth: float = 1.0):
        super().__init__()
        check_kernel(kernel)
        self.kernel, self.border_weight = kernel, border_weight
        self.bce_weight, self.dice_weight, self.smooth = bce_weight, dice_weight, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Logits and {0,1} target Bx1xHxW -> scalar."""
        logits, target = logits.float(), target.float()
        weights = border_weights(target, self.kernel, self.border_weight)
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=weights, reduction="sum") / weights.sum()
        probs = logits.sigmoid()
        # Dice over the whole batch, as smp's DiceLoss; smooth (the seed's 1) keeps an empty batch defined
        inter = (weights * probs * target).sum()
        total = (weights * probs).sum() + (weights * target).sum()
        dice = (2 * inter + self.smooth) / (total + self.smooth)
        return self.bce_weight * bce + self.dice_weight * (1 - dice)


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "bce_dice": BCEDiceLoss,
    "dice": dice_loss,
    "bce": bce_loss,
    "bootstrap_soft": functools.partial(BootstrappedBCELoss, mode="soft"),
    "bootstrap_hard": functools.partial(BootstrappedBCELoss, mode="hard"),
    "online_bootstrap": OnlineBootstrappedBCELoss,
    "border": BorderLoss,
}


def build_loss(name: str, **kwargs: float) -> nn.Module:
    """The loss called `name` (a key of LOSSES) built with its keyword arguments: build_loss('border', kernel=11)."""
    if name not in LOSSES:
        raise CarvanaError(f"unknown loss '{name}' (loss.name): choose one of {', '.join(LOSSES)}")
    factory = LOSSES[name]
    # a bootstrap's mode is fixed by its name
    valid = [p for p in inspect.signature(factory).parameters if p != "mode"]
    unknown = [key for key in kwargs if key not in valid]
    if unknown:
        raise CarvanaError(f"loss '{name}' takes no argument {', '.join(unknown)}: "
                           f"its arguments are {', '.join(valid) or 'none'}")
    return factory(**kwargs)
