"""Tiled prediction (predict.py tile=[h, w], tile_overlap): a photo larger than memory, or than the model was trained
on, goes through the network in overlapping tiles, a batch of tiles at a time, and the tiles' logits are blended with
weights that fall off toward their borders (a Gaussian, as MONAI's sliding_window_inference), so no seam shows. A side
of a tile on the border of the input has no neighbour to hand over to: its weight stays 1 from the tile's centre to
that border (a floor shared by two tiles there would weigh them alike and make a step where one ends). The blend is
accumulated on the device in two full-size float32 planes per TTA pass; nothing else of full size is held.

Tiles cut the network input of a full-resolution model (data.crop_size, or the whole photo padded to a multiple of
32): a model that resizes photos (data.input_size) or sees car boxes has no native resolution to tile."""

import math
from collections.abc import Callable, Iterator

import torch

from carvana import CarvanaError
from carvana.data.geometry import DIVISOR, Geometry
from carvana.model.tta import tta_logits

SIGMA = 0.125  # the Gaussian's sigma, a fraction of the tile's side (MONAI's sigma_scale)
MAX_COVER = 16  # tiles over one pixel at most: overlap 0.75 (4 x 4); 0.99 made 43,865 tiles of a 1280x1920 photo
REFERENCE = (1280, 1920)  # the photo the refusal counts tiles of: Carvana's, padded


def tiles_of(size: tuple[int, int], tile: tuple[int, int], overlap: float) -> int:
    """How many tiles of `tile` (clipped to it) cover an input of `size` (h, w) at `overlap`."""
    return math.prod(len(tile_starts(n, min(t, n), overlap)) for n, t in zip(size, tile))


def check_overlap(tile: tuple[int, int], overlap: float) -> None:
    """Refuse an overlap whose tiles cover a pixel more than MAX_COVER times: the work grows as 1 / (1 - overlap)^2."""
    cover = math.prod(math.ceil(t / max(1, int(t * (1 - overlap)))) for t in tile)
    if cover > MAX_COVER:
        photo = "x".join(map(str, REFERENCE))
        raise CarvanaError(f"tile_overlap={overlap} sends each pixel through the network about {cover:,} times: "
                           f"{tiles_of(REFERENCE, tile, overlap):,} tiles of {tile[0]}x{tile[1]} for a {photo} photo "
                           f"(height x width; {tiles_of(REFERENCE, tile, 0):,} without overlap): choose "
                           "tile_overlap <= 0.75 (0.25 is the default)")


def check_tiling(tile: list[int] | None, overlap: float, geometries: list[Geometry]) -> tuple[int, int] | None:
    """predict.py's tile and tile_overlap checked -> the tile's (h, w), or None when tiling is off."""
    if tile is None:
        return None
    if len(tile) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 or s % DIVISOR for s in tile):
        raise CarvanaError(f"tile={list(tile)} must be [height, width], both multiples of {DIVISOR} (e.g. [1024, 1024])"
                           ", or null")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise CarvanaError(f"tile_overlap={overlap} is a share of the tile: choose a value in [0, 1) (e.g. 0.25)")
    check_overlap((int(tile[0]), int(tile[1])), overlap)
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


def axis_weight(n: int, before: bool, after: bool, device: torch.device) -> torch.Tensor:
    """n float32 weights along one side of a tile: a Gaussian of the distance to its centre (1 there), held at 1
    toward an end that is the input's border (`before`: the start, `after`: the end)."""
    x = torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2
    weight = torch.exp(-0.5 * (x / (SIGMA * n)) ** 2)
    if before:
        weight[x < 0] = 1
    if after:
        weight[x > 0] = 1
    return weight


def tile_weight(height: int, width: int, device: torch.device, borders: tuple[bool, bool, bool, bool] = (False,) * 4
                ) -> torch.Tensor:
    """HxW float32 blending weights of a tile, 1 at its centre; `borders` (top, bottom, left, right): the sides on
    the input's border, where the weight stays 1."""
    top, bottom, left, right = borders
    return axis_weight(height, top, bottom, device)[:, None] * axis_weight(width, left, right, device)[None, :]


def tiled_logits(model: torch.nn.Module, image: torch.Tensor, size: tuple[int, int], tile: tuple[int, int],
                 overlap: float, batch_size: int, tta: str, on_tiles: Callable[[int, int], None] | None = None
                 ) -> Iterator[torch.Tensor]:
    """Each TTA pass of `model` over BxCxhxw network inputs (full resolution, padded), in tiles of `tile` (clipped to
    the input), `batch_size` tiles a forward -> Bx1xHxW float32 blended logits at the photos' `size` (H, W);
    `on_tiles(done, total)` after each forward (a progress bar's count of tiles)."""
    count, _, height, width = image.shape
    th, tw = min(tile[0], height), min(tile[1], width)
    places = [(b, y, x) for b in range(count) for y in tile_starts(height, th, overlap)
              for x in tile_starts(width, tw, overlap)]
    weights: dict[tuple[bool, ...], torch.Tensor] = {}  # by the sides on the input's border: 16 kinds at most
    passes = 2 if tta == "hflip" else 1
    sums = [torch.zeros((count, 1, height, width), dtype=torch.float32, device=image.device) for _ in range(passes)]
    norm = torch.zeros((count, 1, height, width), dtype=torch.float32, device=image.device)
    for start in range(0, len(places), batch_size):
        chunk = places[start : start + batch_size]
        tiles = torch.stack([image[b, :, y : y + th, x : x + tw] for b, y, x in chunk])
        chunk_weights = []
        for _, y, x in chunk:
            borders = (y == 0, y + th == height, x == 0, x + tw == width)
            if borders not in weights:
                weights[borders] = tile_weight(th, tw, image.device, borders)
            chunk_weights.append(weights[borders])
        for total, logits in zip(sums, tta_logits(model, tiles, (th, tw), None, tta)):
            for (b, y, x), one, weight in zip(chunk, logits, chunk_weights):
                total[b, :, y : y + th, x : x + tw].add_(one * weight)
        for (b, y, x), weight in zip(chunk, chunk_weights):
            norm[b, :, y : y + th, x : x + tw].add_(weight)
        if on_tiles is not None:
            on_tiles(start + len(chunk), len(places))
    for total in sums:
        yield total.div_(norm)[..., : size[0], : size[1]]
