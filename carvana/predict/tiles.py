"""Tiled prediction (predict.py tile=[h, w], tile_overlap): a photo larger than memory, or than the model was trained
on, goes through the network in overlapping tiles, a batch of tiles at a time, and the tiles' logits are blended with
weights that fall off toward their borders (a Gaussian, as MONAI's sliding_window_inference), so no seam shows. The
blend is accumulated on the device in two full-size float32 planes per TTA pass; nothing else of full size is held.

Tiles cut the network input of a full-resolution model (data.crop_size, or the whole photo padded to a multiple of
32): a model that resizes photos (data.input_size) or sees car boxes has no native resolution to tile."""

from collections.abc import Iterator

import torch

from carvana import CarvanaError
from carvana.data.geometry import DIVISOR, Geometry
from carvana.model.tta import tta_logits

SIGMA = 0.125  # the Gaussian's sigma, a fraction of the tile's side (MONAI's sigma_scale)
LEAST_WEIGHT = 1e-4  # the weight at a tile's corners: a photo's corner, covered by one tile, still gets its logits


def check_tiling(tile: list[int] | None, overlap: float, geometries: list[Geometry]) -> tuple[int, int] | None:
    """predict.py's tile and tile_overlap checked -> the tile's (h, w), or None when tiling is off."""
    if tile is None:
        return None
    if len(tile) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 or s % DIVISOR for s in tile):
        raise CarvanaError(f"tile={list(tile)} must be [height, width], both multiples of {DIVISOR} (e.g. [1024, 1024])"
                           ", or null")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise CarvanaError(f"tile_overlap={overlap} is a share of the tile: choose a value in [0, 1) (e.g. 0.25)")
    resized = [g for g in geometries if g.input_size is not None]
    if resized:
        raise CarvanaError(f"tile={list(tile)}: this model sees photos resized to {list(resized[0].input_size)}"
                           f"{' car boxes' if resized[0].boxes else ''} (data.input_size), so it has no native "
                           "resolution to tile; tile models trained on crops (data.crop_size) or full photos, or set "
                           "tile=null")
    return int(tile[0]), int(tile[1])


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Where the tiles of one axis start: every (1 - overlap) tile, the last one flush with the end."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    return [*range(0, length - tile, stride), length - tile]


def tile_weight(height: int, width: int, device: torch.device) -> torch.Tensor:
    """HxW float32 blending weights: a Gaussian of the distance to the tile's centre, 1 there, LEAST_WEIGHT at least."""
    axes = []
    for n in (height, width):
        x = torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2
        axes.append(torch.exp(-0.5 * (x / (SIGMA * n)) ** 2))
    return (axes[0][:, None] * axes[1][None, :]).clamp_(min=LEAST_WEIGHT)


def tiled_logits(model: torch.nn.Module, image: torch.Tensor, size: tuple[int, int], tile: tuple[int, int],
                 overlap: float, batch_size: int, tta: str) -> Iterator[torch.Tensor]:
    """Each TTA pass of `model` over BxCxhxw network inputs (full resolution, padded), in tiles of `tile` (clipped to
    the input), `batch_size` tiles a forward -> Bx1xHxW float32 blended logits at the photos' `size` (H, W)."""
    count, _, height, width = image.shape
    th, tw = min(tile[0], height), min(tile[1], width)
    weight = tile_weight(th, tw, image.device)
    places = [(b, y, x) for b in range(count) for y in tile_starts(height, th, overlap)
              for x in tile_starts(width, tw, overlap)]
    passes = 2 if tta == "hflip" else 1
    sums = [torch.zeros((count, 1, height, width), dtype=torch.float32, device=image.device) for _ in range(passes)]
    norm = torch.zeros((count, 1, height, width), dtype=torch.float32, device=image.device)
    for start in range(0, len(places), batch_size):
        chunk = places[start : start + batch_size]
        tiles = torch.stack([image[b, :, y : y + th, x : x + tw] for b, y, x in chunk])
        for total, logits in zip(sums, tta_logits(model, tiles, (th, tw), None, tta)):
            for (b, y, x), one in zip(chunk, logits):
                total[b, :, y : y + th, x : x + tw].add_(one * weight)
        for b, y, x in chunk:
            norm[b, :, y : y + th, x : x + tw].add_(weight)
    for total in sums:
        yield total.div_(norm)[..., : size[0], : size[1]]
