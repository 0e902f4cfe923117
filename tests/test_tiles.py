"""Tiled prediction (carvana.predict.tiles): the tiles cover the photo, their blend is exact where the network's output
does not depend on its context, the whole photo in one tile is the untiled prediction, and bad settings are refused."""

import pytest
import torch

from carvana import CarvanaError
from carvana.data.geometry import Geometry
from carvana.model.tta import tta_logits
from carvana.predict.tiles import check_tiling, tile_starts, tile_weight, tiled_logits


class PixelNet(torch.nn.Module):
    """A network whose logit of a pixel depends on that pixel alone (a 1x1 convolution and a square): a tiled run
    must give it exactly, whatever the tiles and their weights."""

    geometry = Geometry()

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv(image.float() / 255)
        return x * x - 0.5


@pytest.mark.parametrize(("length", "tile", "overlap"), [(96, 32, 0.25), (100, 32, 0.5), (32, 64, 0.25), (97, 96, 0)])
def test_tiles_cover_every_pixel_and_the_last_is_flush(length: int, tile: int, overlap: float):
    starts = tile_starts(length, min(tile, length), overlap)
    covered = torch.zeros(length, dtype=torch.bool)
    for s in starts:
        covered[s : s + min(tile, length)] = True
    assert covered.all() and starts[0] == 0 and starts[-1] + min(tile, length) == length
    assert starts == sorted(set(starts))


def test_weights_fall_off_toward_the_borders():
    weight = tile_weight(64, 96, torch.device("cpu"))
    assert weight.shape == (64, 96) and float(weight.min()) > 0
    assert float(weight[32, 48]) > float(weight[32, 10]) > float(weight[32, 0])
    assert float(weight[31, 47]) == pytest.approx(float(weight.max()))


@pytest.mark.parametrize(("tile", "overlap", "tta"), [((32, 32), 0.25, "none"), ((32, 64), 0.5, "hflip"),
                                                       ((64, 32), 0.0, "hflip")])
def test_blend_of_context_free_logits_is_exact(tile: tuple[int, int], overlap: float, tta: str):
    """Two photos of 96x160 (padded input) in 32-pixel tiles: every pass equals the untiled pass."""
    net = PixelNet()
    image = torch.randint(0, 256, (2, 3, 96, 160), dtype=torch.uint8)
    size = (90, 150)  # the photos' own size: the padding is cropped off
    whole = list(tta_logits(net, image, size, None, tta))
    tiled = list(tiled_logits(net, image, size, tile, overlap, batch_size=3, tta=tta))
    assert len(tiled) == len(whole) == (2 if tta == "hflip" else 1)
    for a, b in zip(tiled, whole):
        assert a.shape == b.shape == (2, 1, *size)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_one_tile_over_the_whole_photo_is_the_untiled_prediction():
    """A real network: a tile as large as the input (clipped to it) runs the very same forward."""
    from conftest import tiny_module

    module = tiny_module().eval()
    image = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        whole = next(tta_logits(module, image, (64, 96), None, "none"))
        tiled = next(tiled_logits(module, image, (64, 96), (1024, 1024), 0.25, 4, "none"))
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)


class SpyNet(PixelNet):
    """PixelNet that remembers the largest input it was given."""

    largest: tuple = ()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.largest = max(self.largest, tuple(image.shape), key=lambda s: torch.Size(s).numel())
        return super().forward(image)


def test_a_large_photo_reaches_the_network_only_in_tiles():
    """The memory bound: a 1280x1920 photo in 256x256 tiles, 3 a forward: the network never sees more than 3 tiles
    (its activations scale with them, not the photo), and the output is the photo's size."""
    net = SpyNet()
    image = torch.randint(0, 256, (1, 3, 1280, 1920), dtype=torch.uint8)
    (logits,) = tiled_logits(net, image, (1280, 1918), (256, 256), 0.25, batch_size=3, tta="none")
    assert net.largest == (3, 3, 256, 256)
    assert logits.shape == (1, 1, 1280, 1918) and torch.isfinite(logits).all()


@pytest.mark.parametrize(("tile", "overlap", "geometry", "needle"), [
    ([100, 64], 0.25, Geometry(), "tile=[100, 64] must be [height, width], both multiples of 32"),
    ([64], 0.25, Geometry(), "must be [height, width]"),
    ([64, 64], 1.0, Geometry(), "tile_overlap=1.0 is a share of the tile"),
    ([64, 64], -0.1, Geometry(), "tile_overlap=-0.1"),
    ([64, 64], 0.25, Geometry(input_size=(64, 96)), "resized to [64, 96] (data.input_size), so it has no native"),
])
def test_bad_tiling_is_refused(tile: list, overlap: float, geometry: Geometry, needle: str):
    with pytest.raises(CarvanaError, match=None) as err:
        check_tiling(tile, overlap, [geometry])
    assert needle in str(err.value), err.value


def test_tiling_of_a_crop_model_is_allowed():
    assert check_tiling([64, 96], 0.25, [Geometry(crop_size=(64, 64)), Geometry()]) == (64, 96)
    assert check_tiling(None, 0.25, [Geometry(input_size=(64, 96))]) is None
