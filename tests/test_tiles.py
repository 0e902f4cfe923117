"""Tiled prediction (carvana.predict.tiles): the tiles cover the photo, their blend is exact where the network's output
does not depend on its context, the whole photo in one tile is the untiled prediction, and bad settings are refused."""

from pathlib import Path

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
    weight = tile_weight(64, 96, torch.device("cpu"))  # a tile inside the photo: no side on its border
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
    from helpers import tiny_module

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
    ([512, 512], 0.99, Geometry(), ("tile_overlap=0.99 sends each pixel through the network about 10,609 times: "
                                    "43,865 tiles of 512x512 for a 1280x1920 photo (height x width; 12 without "
                                    "overlap): choose tile_overlap <= 0.75")),
    ([512, 512], 0.8, Geometry(), "about 36 times: 135 tiles of 512x512"),
    ([64, 64], 0.25, Geometry(input_size=(64, 96)), "resized to [64, 96] (data.input_size), so it has no native"),
])
def test_bad_tiling_is_refused(tile: list, overlap: float, geometry: Geometry, needle: str):
    with pytest.raises(CarvanaError, match=None) as err:
        check_tiling(tile, overlap, [geometry])
    assert needle in str(err.value), err.value


def test_tiling_of_a_crop_model_is_allowed():
    assert check_tiling([64, 96], 0.25, [Geometry(crop_size=(64, 64)), Geometry()]) == (64, 96)
    assert check_tiling([512, 512], 0.75, [Geometry()]) == (512, 512)  # 16 tiles over a pixel: the most allowed
    assert check_tiling(None, 0.25, [Geometry(input_size=(64, 96))]) is None


class TileMeanNet(torch.nn.Module):
    """A network whose output is constant over its input: the input's mean (a stand-in for a network whose output
    depends on its context); tiles of different content give different constants."""

    geometry = Geometry()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.float().mean((1, 2, 3), keepdim=True).expand(-1, 1, *image.shape[2:]) / 255


class ConstantNet(TileMeanNet):
    """0.25 everywhere, whatever the input."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.full((image.shape[0], 1, *image.shape[2:]), 0.25)


def test_constant_output_blends_without_a_seam_at_the_photo_border():
    """Issue 37.4: each tile's output is one constant. Where the only tiles are those of the first row, the blend
    must be the same in every row: the photo's top rows blend as the tiles' middle rows do (a floor weight there
    made the tiles weigh alike, and the blend jumped where one ended)."""
    image = torch.arange(96 * 160, dtype=torch.float32).reshape(1, 1, 96, 160).expand(1, 3, -1, -1)
    image = (image * 255 / image.max()).to(torch.uint8)  # brighter to the right and down: every tile differs
    (blend,) = tiled_logits(TileMeanNet(), image, (96, 160), (32, 32), 0.25, batch_size=4, tta="none")
    top = blend[0, 0, :16]  # rows 0..15: only the first row of tiles (the second starts at 24), their top halves
    torch.testing.assert_close(top, top[15:16].expand_as(top), rtol=1e-5, atol=1e-6)
    steps = blend[0, 0, :, 1:] - blend[0, 0, :, :-1]
    assert float(steps[0].abs().max()) <= float(steps[15].abs().max()) + 1e-6  # no larger step at the border
    (constant,) = tiled_logits(ConstantNet(), image, (90, 150), (32, 32), 0.25, batch_size=4, tta="none")
    assert bool((constant == 0.25).all())  # one constant everywhere: exactly it, no seam, no division by 0


def test_an_edge_tiles_weight_at_the_photo_border_is_not_its_neighbours():
    """The tile at the photo's left border is weighted fully toward that border; its neighbour in the overlap is not."""
    edge = tile_weight(32, 32, torch.device("cpu"), (True, False, True, False))  # top-left corner tile
    neighbour = tile_weight(32, 32, torch.device("cpu"), (True, False, False, False))  # starts at x=24, on the top
    assert float(edge[0, 0]) == float(edge[15, 15]) == 1.0  # the photo's corner weighs as the tile's centre
    overlap_edge, overlap_next = edge[0, 24:32], neighbour[0, 0:8]  # the same 8 pixels of the photo's top row
    assert bool((overlap_edge != overlap_next).all())  # a floor weighed them alike here: 1e-4 each
    torch.testing.assert_close(edge[0], edge[15])  # the top row weighs as the middle rows: no floor


def test_tiles_are_counted_as_they_are_done():
    """Issue 38.11: the progress is counted in tiles, not photos: after each forward, (done, total)."""
    calls = []
    image = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    list(tiled_logits(PixelNet(), image, (64, 96), (32, 32), 0.25, batch_size=5, tta="hflip",
                      on_tiles=lambda done, total: calls.append((done, total))))
    assert calls == [(5, 12), (10, 12), (12, 12)]  # 3 rows x 4 columns of tiles, 5 a forward


def test_lightnings_predict_bar_shows_the_tiles():
    """predict.py's Ensemble writes the tiles done on the trainer's bar (TQDM's, predict.py's default), per model."""
    import io
    from types import SimpleNamespace

    from pytorch_lightning.callbacks import TQDMProgressBar
    from tqdm import tqdm

    from carvana.predict.ensemble import Ensemble
    from carvana.progress import tile_counter

    bar, out = TQDMProgressBar(), io.StringIO()
    bar.predict_progress_bar = tqdm(total=1, file=out, desc="Predicting")
    ensemble = Ensemble([PixelNet(), PixelNet()], "none", tile=(32, 32), tile_overlap=0.25, tile_batch=5)
    ensemble._trainer = SimpleNamespace(progress_bar_callback=bar)
    ensemble.probs({"full": torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)}, (64, 96))
    assert "tiles 5/12 (model 1/2)" in out.getvalue() and "tiles 12/12 (model 2/2)" in out.getvalue()
    tile_counter(None)(1, 2)  # no trainer (the service): nothing to show, no error


def test_an_overlap_beyond_reason_is_refused_before_the_output_folder_is_made(tmp_path: Path):
    """predict.py checks tile and tile_overlap with its other keys: nothing is created for a refused run."""
    from helpers import predict_args, predict_here

    out = tmp_path / "out"
    run = predict_here(predict_args(tmp_path / "model.ckpt", out, "tile=[512,512]", "tile_overlap=0.99"))
    assert run.code == 2 and len(run.errors()) == 1 and "43,865 tiles" in run.errors()[0], run.err
    assert not out.exists()
