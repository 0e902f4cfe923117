"""carvana.Segmenter, the Python API: its probs8 are predict.py's PNG byte for byte (one checkpoint, a glob of an
ensemble, tiles), its mask is that PNG cut as predict.py and submit.py cut it, its cut-out predict.py's write=cutout;
a path, a PIL image and an array of one photo give one result; bad inputs are one-line CarvanaErrors."""

import contextlib
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import predict_args, predict_here, write_checkpoint
from PIL import Image

from carvana import CarvanaError, Segmenter
from carvana.data.io import probs_cut, read_image, read_probs8, write_image

SIZES = {"car_01.jpg": (64, 96), "car_02.png": (80, 112), "car_03.png": (64, 96)}  # (h, w): two share a batch


def write_photos(folder: Path) -> list[Path]:
    """Non-square photos of two sizes (a JPEG, two PNGs) with every level of each channel's gradient."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, (h, w) in SIZES.items():
        yy, xx = np.mgrid[:h, :w]
        write_image(folder / name, np.dstack([xx * 2, yy * 3, rng.integers(0, 255, (h, w))]).astype(np.uint8))
    return sorted(folder.iterdir())


@pytest.mark.parametrize("case", ["ensemble", "tiles"])
def test_probs8_mask_and_cutout_are_predict_pys(case: str, tmp_path: Path) -> None:
    """ensemble: two resized-input checkpoints by a glob, hflip TTA, photos of two sizes in one list (two share a
    batch); tiles: a full-size checkpoint with tile=[32,64], batch_size=2 tiles a forward."""
    models = tmp_path / "models"
    models.mkdir()
    if case == "ensemble":
        for seed in (0, 1):
            write_checkpoint(models / f"m{seed}.ckpt", seed=seed, input_size=[64, 96])
        ckpt, words, settings = f"{models}/*.ckpt", ["tta=hflip"], {"tta": "hflip"}
    else:
        ckpt = write_checkpoint(models / "full.ckpt", input_size=None)
        words, settings = ["tile=[32,64]", "batch_size=2"], {"tile": [32, 64], "batch_size": 2, "tta": "none"}
    photos = write_photos(tmp_path / "photos")
    out = tmp_path / "out"
    run = predict_here(predict_args(ckpt, out, f"input_dir={photos[0].parent}", "trainer=cpu", "write=[png,cutout]",
                                    *words))
    assert run.code == 0, run.err[-2000:]
    seg = Segmenter.load(ckpt, device="cpu", **settings)
    results = seg.predict(photos)
    assert len(results) == len(photos)
    for photo, result in zip(photos, results):
        png = read_probs8(out / f"{photo.stem}.png")
        assert result.probs8.shape == SIZES[photo.name] and np.array_equal(result.probs8, png)
        assert 0 < (png > 127).mean() < 1, "random weights: pixels on both sides of the threshold"
        assert result.mask.dtype == np.uint8 and np.array_equal(result.mask, (png > probs_cut(0.5)).astype(np.uint8))
        assert result.probs.dtype == np.float32 and np.array_equal(result.probs * 255, png.astype(np.float32))
        written = cv2.cvtColor(cv2.imread(str(out / "cutouts" / f"{photo.stem}.png"), cv2.IMREAD_UNCHANGED),
                               cv2.COLOR_BGRA2RGBA)
        assert result.cutout.shape == (*SIZES[photo.name], 4) and np.array_equal(result.cutout, written)
    assert np.array_equal(seg.predict(photos[1]).probs8, results[1].probs8), "one photo alone: its own batch"


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Segmenter:
    """The tiny resized-input checkpoint, predict.py's defaults (hflip, threshold 0.5)."""
    return Segmenter.load(write_checkpoint(tmp_path_factory.mktemp("seg") / "tiny.ckpt", input_size=[64, 96]),
                          device="cpu")


def test_a_path_a_pil_image_and_an_array_give_one_result(segmenter: Segmenter, tmp_path: Path) -> None:
    """PNG photo (lossless: PIL and cv2 decode the same pixels); a PNG whose EXIF says rotate 90: displayed size."""
    path = write_photos(tmp_path / "photos")[1]
    by_path = segmenter.predict(path)
    assert np.array_equal(segmenter.predict(str(path)).probs8, by_path.probs8)
    assert np.array_equal(segmenter.predict(read_image(path)).probs8, by_path.probs8)
    with Image.open(path) as img:
        assert np.array_equal(segmenter.predict(img).probs8, by_path.probs8)
        exif = Image.Exif()
        exif[0x0112] = 6  # stored sideways: displayed rotated 90 degrees clockwise
        img.save(tmp_path / "turned.png", exif=exif)
    turned = segmenter.predict(tmp_path / "turned.png")
    assert turned.probs8.shape == SIZES[path.name][::-1]
    with Image.open(tmp_path / "turned.png") as img:
        assert np.array_equal(segmenter.predict(img).probs8, turned.probs8)


def test_keywords_change_what_they_name(segmenter: Segmenter, tmp_path: Path) -> None:
    path = write_photos(tmp_path / "photos")[0]
    result = segmenter.predict(path)
    assert not np.array_equal(segmenter.predict(path, tta="none").probs8, result.probs8), "one pass, not hflip's mean"
    strict = Segmenter.load(segmenter.ckpts[0], device="cpu", threshold=0.6).predict(path)
    assert np.array_equal(strict.probs8, result.probs8)
    assert np.array_equal(strict.mask, (result.probs8 > probs_cut(0.6)).astype(np.uint8))
    assert strict.mask.sum() < result.mask.sum()


@pytest.mark.parametrize(("photo", "message"), [
    (np.zeros((64, 96, 3), np.float32), r"float32: give uint8 0\.\.255"),
    (np.zeros((64, 96), np.uint8), r"shape \(64, 96\): give HxWx3 RGB"),
    (np.zeros((64, 96, 4), np.uint8), r"array\[\.\.\., :3\] for RGBA"),
    (np.zeros((0, 96, 3), np.uint8), "has no pixels"),
    ("no/such/photo.jpg", "cannot read photo no/such/photo.jpg"),
    (42, "a photo is a path, a PIL image or an HxWx3 uint8 RGB array, not int"),
])
def test_bad_photos_are_one_line_errors(segmenter: Segmenter, photo: object, message: str) -> None:
    with pytest.raises(CarvanaError, match=message) as err:
        segmenter.predict(photo)
    assert "\n" not in str(err.value)


def test_bad_settings_are_one_line_errors(segmenter: Segmenter, tmp_path: Path) -> None:
    ckpt = segmenter.ckpts[0]
    with pytest.raises(CarvanaError, match="Segmenter.load got tiles: choose from tta, tile"):
        Segmenter.load(ckpt, tiles=[64, 64])
    with pytest.raises(CarvanaError, match=r"tile=\[64, 64\]: this model sees photos resized"):
        Segmenter.load(ckpt, tile=[64, 64])
    with pytest.raises(CarvanaError, match="matches no checkpoint"):
        Segmenter.load(tmp_path / "*.ckpt")
    with pytest.raises(CarvanaError, match="threshold=1.5 is a probability"):
        Segmenter.load(ckpt, threshold=1.5)


@pytest.mark.slow  # the export checks its parity at two sizes: ~40 s on 2 shared cores
def test_an_onnx_file_gives_predict_pys_png(tmp_path: Path) -> None:
    """ckpt= an exported full-size ONNX file (any multiple of 32): photos of two sizes, predict.py's PNGs exactly."""
    pytest.importorskip("onnxruntime", reason="pip install -e '.[export]' installs onnx and onnxruntime")
    from carvana.export.__main__ import main as export

    ckpt = write_checkpoint(tmp_path / "pad.ckpt", data={"image_size": [64, 96]})
    photos = write_photos(tmp_path / "photos")
    with contextlib.redirect_stdout(io.StringIO()):
        export([f"ckpt={ckpt}", f"output={tmp_path / 'pad.onnx'}", f"photo={photos[1]}"])
    run = predict_here(predict_args(tmp_path / "pad.onnx", tmp_path / "out", f"input_dir={photos[0].parent}"))
    assert run.code == 0, run.err[-2000:]
    seg = Segmenter.load(tmp_path / "pad.onnx", tta="none")
    assert [type(m).__name__ for m in seg.models] == ["OnnxModel"]
    results = seg.predict(photos)
    for photo, result in zip(photos, results):
        assert np.array_equal(result.probs8, read_probs8(tmp_path / "out" / f"{photo.stem}.png")), photo.name
