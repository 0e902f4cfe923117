"""Albumentations pipelines for the three input modes (random crops, resize, full size padded) and the way back."""

import math

import albumentations as A
import cv2
import torch
import torch.nn.functional as F

from carvana import CarvanaError

# smp's encoders halve the resolution 5 times: sides must be divisible by 32
DIVISOR = 32


def input_mode(crop_size: list[int] | None, input_size: list[int] | None) -> str:
    """Name the input mode: 'crop' (train on random crops, validate full size), 'resize' or 'pad' (full size)."""
    if crop_size is not None and input_size is not None:
        raise CarvanaError("data.crop_size and data.input_size exclude each other: set one of them to null")
    for key, size in (("data.crop_size", crop_size), ("data.input_size", input_size)):
        if size is not None and (len(size) != 2 or any(s % DIVISOR for s in size)):
            raise CarvanaError(f"{key}={list(size)} must be [height, width], both divisible by {DIVISOR}")
    return "crop" if crop_size is not None else "resize" if input_size is not None else "pad"


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The smallest (height, width) divisible by 32 that holds the image: 1280x1918 -> 1280x1920."""
    return math.ceil(height / DIVISOR) * DIVISOR, math.ceil(width / DIVISOR) * DIVISOR


def _pad() -> A.PadIfNeeded:
    # pad at the bottom and the right, so cropping back is a plain [:h, :w]
    return A.PadIfNeeded(
        min_height=None, min_width=None, pad_height_divisor=DIVISOR, pad_width_divisor=DIVISOR,
        position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
    )


def augmentations(hflip: float, affine: float, shift_limit: float, scale_limit: float, color: float) -> list:
    """The seed's augmentations: horizontal flip, shift/scale, and colour (hue, saturation, brightness)."""
    return [
        A.HorizontalFlip(p=hflip),
        A.Affine(
            scale=(1 - scale_limit, 1 + scale_limit), translate_percent=(-shift_limit, shift_limit),
            border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=affine,
        ),
        A.OneOf([A.HueSaturationValue(p=1), A.RandomBrightnessContrast(p=1), A.RGBShift(p=1)], p=color),
    ]


def train_transform(crop_size: list[int] | None, input_size: list[int] | None, augment: dict) -> A.Compose:
    """Image and mask together: size to the model's input first (cheaper), then augment."""
    mode = input_mode(crop_size, input_size)
    if mode == "crop":
        base = [A.RandomCrop(*crop_size, pad_if_needed=True, border_mode=cv2.BORDER_CONSTANT)]
    elif mode == "resize":
        base = [A.Resize(*input_size, interpolation=cv2.INTER_AREA)]
    else:
        base = [_pad()]
    return A.Compose(base + augmentations(**augment))


def restore(logits: torch.Tensor, size: tuple[int, int], resized: bool) -> torch.Tensor:
    """Bring Bx1xhxw logits back to the photo's HxW: bilinear upsampling after a resize, else crop the padding."""
    if resized:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits[..., : size[0], : size[1]]


def paste_boxes(small: torch.Tensor, bboxes: torch.Tensor, size: tuple[int, int], fill: float) -> torch.Tensor:
    """Bx1xhxw predictions of car crops -> Bx1xHxW: each resized (bilinear) into its box, `fill` outside it."""
    out = torch.full((small.shape[0], small.shape[1], *size), fill, dtype=small.dtype, device=small.device)
    for i, (y0, y1, x0, x1) in enumerate(bboxes.tolist()):
        out[i, :, y0:y1, x0:x1] = F.interpolate(small[i : i + 1], size=(y1 - y0, x1 - x0), mode="bilinear",
                                                align_corners=False)[0]
    return out
