"""What the network sees of a photo, and how its logits return to the photo's own size (1280x1918 for Carvana).

The input modes, decided here and nowhere else:
  crop    training on random crops of the photo (data.crop_size); validation and prediction see the full photo, padded
  resize  the photo resized to data.input_size (cv2 area, as training's A.Resize); logits are upsampled back (bilinear)
  pad     the full photo padded at the bottom and right to a multiple of 32 (1280x1918 -> 1280x1920); logits cropped
  boxes   the car's box (data.bboxes, carvana.data.boxes) cut out of the photo, then resized to data.input_size;
          logits pasted back
Sizes are (height, width). A checkpoint records its geometry (SegModule's hyperparameters), so predict.py needs nothing
else.
"""

import math
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from carvana import CarvanaError
from carvana.data.boxes import Box, cut_box

# smp's encoders halve the resolution 5 times: sides must be divisible by 32
DIVISOR = 32
# a logit far below any threshold: what the network says outside a car box
OUTSIDE_BOX = -30.0


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The smallest (height, width) divisible by 32 that holds the photo: 1280x1918 -> 1280x1920."""
    return math.ceil(height / DIVISOR) * DIVISOR, math.ceil(width / DIVISOR) * DIVISOR


@dataclass(frozen=True)
class Geometry:
    """The input mode of a model: random crops (training only), a resize, the full photo padded, or car boxes."""

    # no crop, no resize, no boxes: the whole photo, padded (what the config says comes through geometry_of)
    crop_size: tuple[int, int] | None = None
    input_size: tuple[int, int] | None = None
    boxes: bool = False

    def __post_init__(self) -> None:
        if self.crop_size is not None and self.input_size is not None:
            raise CarvanaError("data.crop_size and data.input_size exclude each other: set one of them to null")
        for key in ("crop_size", "input_size"):
            size = getattr(self, key)
            if size is not None:
                if len(size) != 2 or any(s <= 0 or s % DIVISOR for s in size):
                    raise CarvanaError(f"data.{key}={list(size)} must be [height, width], both divisible by {DIVISOR}")
                object.__setattr__(self, key, tuple(int(s) for s in size))  # a list from the config -> hashable
        if self.boxes and self.input_size is None:
            raise CarvanaError("data.bboxes needs data.input_size=[h, w]: car boxes differ in size and are resized")

    @property
    def mode(self) -> str:
        """'boxes', 'crop', 'resize' or 'pad'."""
        return "boxes" if self.boxes else "crop" if self.crop_size else "resize" if self.input_size else "pad"

    @property
    def key(self) -> str:
        """Names the network input this geometry makes at evaluation; models with equal keys share one input."""
        if self.input_size is None:
            return "full"
        return ("box" if self.boxes else "") + "x".join(map(str, self.input_size))

    def train_sizing(self) -> list[A.BasicTransform]:
        """The training transform's first step, on the photo (or its box), mask and stacked channels together."""
        if self.crop_size is not None:
            return [A.RandomCrop(*self.crop_size, pad_if_needed=True, border_mode=cv2.BORDER_CONSTANT)]
        if self.input_size is not None:  # masks and stacked channels: nearest (albumentations' mask default)
            return [A.Resize(*self.input_size, interpolation=cv2.INTER_AREA)]
        # pad at the bottom and the right, as to_input does, so the way back is a plain [:h, :w]
        return [A.PadIfNeeded(min_height=None, min_width=None, pad_height_divisor=DIVISOR, pad_width_divisor=DIVISOR,
                              position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0)]

    def input_shape(self, size: tuple[int, int]) -> tuple[int, int]:
        """The network's (h, w) at evaluation for a photo of `size` (h, w)."""
        return tuple(self.input_size) if self.input_size is not None else padded_size(*size)

    def to_input(self, image: np.ndarray, extra: list[np.ndarray] = (), box: Box | None = None
                 ) -> tuple[np.ndarray, list[np.ndarray]]:
        """An HxWx3 uint8 photo and its HxW stacked channels -> the network's input at evaluation, as training made
        it: the box cut out (boxes), then resized (the photo by cv2 area, stacked channels nearest) or padded."""
        if self.boxes:
            if box is None:
                raise CarvanaError("this model was trained on car boxes: give the photos' boxes (data.bboxes)")
            image, extra = cut_box(image, box), [cut_box(e, box) for e in extra]
        if self.input_size is not None:
            dsize = (self.input_size[1], self.input_size[0])
            image = cv2.resize(np.ascontiguousarray(image), dsize, interpolation=cv2.INTER_AREA)
            return image, [cv2.resize(np.ascontiguousarray(e), dsize, interpolation=cv2.INTER_NEAREST) for e in extra]
        height, width = padded_size(*image.shape[:2])
        pad = ((0, height - image.shape[0]), (0, width - image.shape[1]))
        return np.pad(image, (*pad, (0, 0))), [np.pad(e, pad) for e in extra]

    def to_full(self, logits: torch.Tensor, size: tuple[int, int], boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Bx1xhxw logits of the network's input -> Bx1xHxW logits at the photos' full `size` (H, W): cropped back
        (pad), upsampled bilinearly (resize), or each box's upsampled into its place, far below 0 elsewhere."""
        size = tuple(int(s) for s in size)
        if self.input_size is None:
            return logits[..., : size[0], : size[1]]
        if not self.boxes:
            return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if boxes is None:
            raise CarvanaError("this model was trained on car boxes: give the photos' boxes (data.bboxes)")
        out = logits.new_full((*logits.shape[:2], *size), OUTSIDE_BOX)
        for i, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
            out[i, :, y0:y1, x0:x1] = F.interpolate(logits[i : i + 1], size=(y1 - y0, x1 - x0), mode="bilinear",
                                                    align_corners=False)[0]
        return out
