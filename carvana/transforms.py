"""Albumentations pipelines for the three input modes (random crops, resize, full size padded) and the way back."""

import math
import sys
from functools import lru_cache

import albumentations as A
import cv2
import numpy as np
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


def resize_like_training(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """BxCxHxW uint8 photos (3 colours, then stacked masks) -> BxCxhxw exactly as training's A.Resize makes them:
    cv2 INTER_AREA for the colours, nearest for the stacked masks.

    On the CPU this is cv2 itself. On a GPU a downscale is computed there, with cv2's own weights and order of float
    operations (bit-identical to cv2, tested), so the loader's processes need not resize; an upscale (where cv2
    interpolates instead of averaging) goes through cv2 on the CPU.
    """
    height, width = image.shape[-2:]
    if image.device.type != "cpu" and size[0] <= height and size[1] <= width:
        return resize_on_device(image, size)
    photos = image.permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty((*photos.shape[:1], *size, photos.shape[-1]), np.uint8)
    for photo, dst in zip(photos, out):
        colours, extra = resize_arrays(photo[..., :3], [photo[..., c] for c in range(3, photo.shape[-1])], size)
        dst[...] = np.dstack([colours, *extra])
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(image.device)


def resize_arrays(image: np.ndarray, extra: list[np.ndarray], size: tuple[int, int]
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """An HxWx3 uint8 photo and its HxW stacked channels at `size` (h, w) as training's A.Resize makes them: the
    photo by cv2 area, the stacked channels as its `masks` (nearest)."""
    dsize = (size[1], size[0])
    image = cv2.resize(np.ascontiguousarray(image), dsize, interpolation=cv2.INTER_AREA)
    return image, [cv2.resize(np.ascontiguousarray(e), dsize, interpolation=cv2.INTER_NEAREST) for e in extra]


def resize_on_device(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """resize_like_training's downscale where the photos are (a GPU): area for the colours, nearest for the rest."""
    colours = area_downscale(image[:, :3], size)
    if image.shape[1] == 3:
        return colours
    rows, cols = (torch.as_tensor(_nearest_index(s, d), device=image.device) for s, d in zip(image.shape[-2:], size))
    return torch.cat([colours, image[:, 3:].index_select(-2, rows).index_select(-1, cols)], 1)


def area_downscale(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """BxCxHxW uint8 (C of 1, 3 or 4) -> BxCxhxw uint8 (h <= H, w <= W) as cv2.resize(INTER_AREA) computes it.

    cv2 has two ways. When both ratios are whole numbers it sums each block as integers and multiplies the sum by
    float32 1/area, rounding half to even; a halving both ways rounds (sum + 2) / 4 instead. Otherwise it sums each
    source row across (float32 weights of each source pixel's coverage, in source order), then those row sums down
    (the same), and rounds half to even. Each product and sum below is one float32 operation in cv2's order: the
    same bits on any device.
    """
    height, width = image.shape[-2:]
    ratios = [1.0 / (target / source) for source, target in ((height, size[0]), (width, size[1]))]  # cv2's doubles
    whole = [round(r) for r in ratios]
    if all(abs(r - w) < sys.float_info.epsilon for r, w in zip(ratios, whole)):
        (down, across), (rows, cols) = whole, size
        blocks = image[..., : rows * down, : cols * across].reshape(*image.shape[:-2], rows, down, cols, across)
        total = blocks.int().sum((-3, -1))
        if whole == [2, 2]:
            return total.add_(2).div_(4, rounding_mode="floor").to(torch.uint8)
        scale = torch.tensor(1.0 / (down * across), dtype=torch.float32, device=image.device)
        return total.float().mul_(scale).round_().clamp_(0, 255).to(torch.uint8)
    x, device = image.float(), image.device
    cols, col_weights = (t.to(device) for t in _area_weights(width, size[1]))
    rows, row_weights = (t.to(device) for t in _area_weights(height, size[0]))
    across = None
    for k in range(cols.shape[1]):  # zero-weight padding adds +0.0: exact
        term = x.index_select(-1, cols[:, k]).mul_(col_weights[:, k])
        across = term if across is None else across.add_(term)
    down = None
    for k in range(rows.shape[1]):
        term = across.index_select(-2, rows[:, k]).mul_(row_weights[:, k, None])
        down = term if down is None else down.add_(term)
    return down.round_().clamp_(0, 255).to(torch.uint8)


@lru_cache(maxsize=16)
def _area_weights(source: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cv2's computeResizeAreaTab: for each target index, its source indices (increasing) and float32 weights,
    padded with zero weights to a common count -> (target x K indices, target x K weights)."""
    scale = 1.0 / (target / source)  # cv2: 1 / inv_scale, in double
    table = []
    for t in range(target):
        start = t * scale
        end, cell = start + scale, min(scale, source - start)
        first, last = math.ceil(start), min(math.floor(end), source - 1)
        first = min(first, last)
        entries = [(first - 1, (first - start) / cell)] if first - start > 1e-3 else []
        entries += [(s, 1.0 / cell) for s in range(first, last)]
        if end - last > 1e-3:
            entries.append((last, min(end - last, 1.0, cell) / cell))
        table.append(entries)
    width = max(len(entries) for entries in table)
    index = torch.zeros(target, width, dtype=torch.long)
    weight = torch.zeros(target, width, dtype=torch.float32)
    for t, entries in enumerate(table):
        index[t, : len(entries)] = torch.tensor([s for s, _ in entries])
        weight[t, : len(entries)] = torch.from_numpy(np.array([w for _, w in entries], np.float32))
    return index, weight


def _nearest_index(source: int, target: int) -> list[int]:
    """cv2's INTER_NEAREST source index of each target index: floor(t * source / target), in cv2's doubles."""
    scale = 1.0 / (target / source)
    return [min(math.floor(t * scale), source - 1) for t in range(target)]


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
