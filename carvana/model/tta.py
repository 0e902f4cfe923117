"""Test-time augmentation, for validation (model.val_tta) and prediction (predict.py tta) alike: the passes of a model
over a batch, each brought back to the photos' own size."""

from collections.abc import Iterator

import torch

from carvana import CarvanaError

TTAS = ("none", "hflip")  # hflip: the mean with the horizontally flipped photo (the 4th-place solution's)


def check_tta(tta: str, key: str) -> str:
    """`tta` if it is one of TTAS, else a CarvanaError naming the key."""
    if tta not in TTAS:
        raise CarvanaError(f"unknown {key}={tta}: choose one of {', '.join(TTAS)}")
    return tta


def tta_logits(model: torch.nn.Module, image: torch.Tensor, size: tuple[int, int], boxes: torch.Tensor | None,
               tta: str) -> Iterator[torch.Tensor]:
    """Each pass of `tta` (the plain pass first) -> Bx1xHxW float32 logits at the photos' `size` (H, W). `model` is a
    SegModule or an OnnxModel: network inputs (its `geometry`'s) in, logits out."""
    for flip in (False, True) if tta == "hflip" else (False,):
        logits = model(image.flip(-1) if flip else image)
        logits = logits.flip(-1) if flip else logits
        yield model.geometry.to_full(logits, size, boxes).float()  # float32 sums under autocast
