"""The 4th-place solution's losses (BCE + Dice, bootstrapped BCE, online bootstrapping, border-weighted), and the
Dice of each photo (Kaggle's metric) and of its border band.

Every loss maps logits Bx1xHxW and a float {0,1} mask Bx1xHxW to a scalar; `build_loss(name, **kwargs)` turns a
`conf/loss/*.yaml` (plain values: `name` plus the loss's keyword arguments, which the YAML states) into one.
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
        raise CarvanaError(f"border kernel must be a positive odd number (the 4th-place solution's is 11), got "
                           f"{kernel}")


def border_band(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Pixels whose kernel x kernel neighbourhood holds both classes of a {0,1} mask Bx1xHxW -> Bx1xHxW float {0,1}.

    The 4th-place solution thresholds a 'same' average pool strictly between 0 and 1; for a binary mask that is
    dilation != erosion, which max pooling gives exactly (no rounding at 1.0). Max pooling pads with -inf, so, like
    TensorFlow's 'same' average pool (which leaves padding out of the mean), the image's own edge is not a border.
    """
    check_kernel(kernel)
    mask = mask.float()
    dilated = F.max_pool2d(mask, kernel, stride=1, padding=kernel // 2)
    eroded = -F.max_pool2d(-mask, kernel, stride=1, padding=kernel // 2)
    return (dilated > eroded).float()


def border_weights(mask: torch.Tensor, kernel: int, border_weight: float) -> torch.Tensor:
    """Pixel weights 1 + border_weight * band for a {0,1} mask Bx1xHxW, scaled so each image's sum is H*W -> Bx1xHxW."""
    weights = 1 + border_weight * border_band(mask, kernel)
    # the 4th-place solution's renormalisation keeps the loss on the scale of the unweighted one; per image, so that
    # the other photos of a batch do not change one photo's weights
    return weights * (mask[0].numel() / weights.sum(dim=(1, 2, 3), keepdim=True))


def dice_per_image(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Dice of each image of Bx1xHxW probs (or {0,1} preds) against targets -> B float32; two empty masks give 1.

    The sums are float32 whatever the input: a float16 sum over a 1280x1918 mask overflows (smp #463).
    """
    probs, target = probs.float(), target.float()
    dims = tuple(range(1, probs.ndim))
    inter = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return torch.where(total > 0, 2 * inter / (total + eps), torch.ones_like(total))


def border_dice(probs: torch.Tensor, target: torch.Tensor, kernel: int = 11) -> torch.Tensor:
    """Dice inside the target's border band (kernel: the 4th-place solution's 11) of Bx1xHxW probabilities (or {0,1}
    masks) -> B in [0, 1]; no band: 1."""
    band = border_band(target, kernel)
    return dice_per_image(probs.float() * band, target.float() * band)


class BCEDiceLoss(nn.Module):
    """bce_weight * BCE + dice_weight * (1 - soft Dice over the batch), smp's two losses (the 4th-place solution's 0.2
    / 0.8)."""

    def __init__(self, bce_weight: float, dice_weight: float):
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

    def __init__(self, beta: float, mode: str):
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

    def __init__(self, ratio: float):
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
    """Border-weighted BCE + Dice (the 4th-place solution's weighted_bce_dice_loss): the band around the mask's edge
    counts more."""

    def __init__(self, kernel: int, border_weight: float, bce_weight: float, dice_weight: float, smooth: float):
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
        # Dice over the whole batch, as smp's DiceLoss; smooth (the 4th-place solution's 1) keeps an empty batch defined
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
    """The loss called `name` (a key of LOSSES) built with its keyword arguments: build_loss('border', kernel=11,
    ...); an unknown or missing argument is refused with the loss's own list."""
    if name not in LOSSES:
        raise CarvanaError(f"unknown loss '{name}' (loss.name): choose one of {', '.join(LOSSES)}")
    factory = LOSSES[name]
    # a bootstrap's mode is fixed by its name
    params = {k: p for k, p in inspect.signature(factory).parameters.items() if k != "mode"}
    unknown = [key for key in kwargs if key not in params]
    missing = [key for key, p in params.items() if p.default is p.empty and key not in kwargs]
    if unknown or missing:
        problem = f"takes no argument {', '.join(unknown)}" if unknown else f"needs {', '.join(missing)}"
        raise CarvanaError(f"loss '{name}' {problem}: its arguments are {', '.join(params) or 'none'} "
                           f"(conf/loss/{name}.yaml)")
    return factory(**kwargs)
