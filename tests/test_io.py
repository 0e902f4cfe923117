"""carvana.data.io and the photo check against the real Carvana files: palette GIF masks, RGB photos, truncated
JPEGs, atomic writes."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import REPO
from PIL import Image

from carvana import CarvanaError
from carvana.data.dataset import SegDataset
from carvana.data.geometry import Geometry
from carvana.data.io import probs_cut, read_image, read_mask, write_mask_gif
from carvana.data.photo_check import check_photos
from carvana.files import atomic_path

CAR = "0cdf5b5d0ce1"


@pytest.fixture(scope="module")
def real(shared_data: Path) -> Path:
    return shared_data / "real"


def test_read_mask_real_gif_is_0_1_at_full_size(real: Path):
    for angle in (1, 5, 9):
        mask = read_mask(real / "train_masks" / f"{CAR}_{angle:02d}_mask.gif")
        assert mask.shape == (1280, 1918)
        assert mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 1}
        # a car fills roughly an eighth to a quarter of a Carvana photo
        assert 0.08 < mask.mean() < 0.3, mask.mean()


def test_pil_convert_L_maps_the_palette_to_255(real: Path):
    """The trap read_mask avoids: convert('L') goes through the palette and gives {0, 255}, not {0, 1}."""
    with Image.open(real / "train_masks" / f"{CAR}_01_mask.gif") as img:
        assert img.mode == "P"
        assert set(np.unique(np.asarray(img)).tolist()) == {0, 1}
        assert set(np.unique(np.asarray(img.convert("L"))).tolist()) == {0, 255}


def test_cv2_reads_the_gif_as_three_channels_of_255(real: Path):
    """The other trap: OpenCV (>= 4.7) decodes the palette GIF to BGR {0, 255}, not indices."""
    bgr = cv2.imread(str(real / "train_masks" / f"{CAR}_01_mask.gif"))
    assert bgr is not None and bgr.shape == (1280, 1918, 3)
    assert set(np.unique(bgr).tolist()) == {0, 255}
    np.testing.assert_array_equal(bgr[..., 0] // 255, read_mask(real / "train_masks" / f"{CAR}_01_mask.gif"))


def test_read_mask_agrees_with_the_palette_indices(real: Path):
    path = real / "train_masks" / f"{CAR}_03_mask.gif"
    with Image.open(path) as img:
        np.testing.assert_array_equal(read_mask(path), np.asarray(img))


def test_read_image_is_rgb(real: Path):
    path = real / "train" / f"{CAR}_01.jpg"
    image = read_image(path)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image.shape == (1280, 1918, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, bgr[..., ::-1])
    # one pixel where the channels differ, so a BGR image cannot pass by symmetry
    ys, xs = np.nonzero((bgr[..., 0].astype(int) - bgr[..., 2]) > 20)
    y, x = ys[0], xs[0]
    assert tuple(image[y, x]) == tuple(bgr[y, x, ::-1])
    assert image[y, x, 2] > image[y, x, 0] + 20


def test_read_image_test_photo(real: Path):
    photos = sorted((real / "test").glob("*.jpg"))
    assert photos
    assert read_image(photos[0]).shape == (1280, 1918, 3)


def test_a_prediction_serving_as_labels_is_cut_at_one_half(tmp_path: Path):
    """Pseudo-labels are predict.py's probabilities, cut at 0.5; the same file given as a mask is refused as soft."""
    probs = np.array([[0, 127, 128, 255], [1, 126, 200, 130], [0, 0, 0, 0]], dtype=np.uint8)
    path = tmp_path / "car_01.png"
    assert cv2.imwrite(str(path), probs)
    mask = SegDataset([], None, Geometry(), soft_masks=[path]).read_mask(path)
    assert mask.dtype == np.uint8 and mask.shape == (3, 4)
    np.testing.assert_array_equal(mask, (probs > 127).astype(np.uint8))
    with pytest.raises(CarvanaError, match="grey levels 1, 126, 127, 128, ..."):
        read_mask(path)


@pytest.mark.parametrize("top", [1, 255])
@pytest.mark.parametrize("name", ["car_01_mask.png", "car_01.png", "car_01_mask.gif"])
def test_masks_are_read_by_their_values(tmp_path: Path, name: str, top: int):
    """0/1 and 0/255 masks, PNG or GIF, all give the car (a 0/1 PNG cut at 127 would be all background)."""
    truth = np.zeros((32, 48), np.uint8)
    truth[5:20, 7:30] = 1
    path = tmp_path / name
    if name.endswith(".gif"):
        Image.fromarray(truth * top, mode="L").save(path)
    else:
        assert cv2.imwrite(str(path), truth * top)
    np.testing.assert_array_equal(read_mask(path), truth)


def test_a_soft_mask_is_refused_by_name(tmp_path: Path):
    path = tmp_path / "car_01_mask.png"
    assert cv2.imwrite(str(path), np.array([[0, 255, 128]], np.uint8))
    with pytest.raises(CarvanaError, match="car_01_mask.png is not black and white: it has grey levels 128 "):
        read_mask(path)


def test_a_gif_whose_palette_lists_white_first_reads_as_it_looks(tmp_path: Path):
    """Indices 0 = white, 1 = black: every viewer shows the car white, so the car is where the index is 0."""
    truth = np.zeros((32, 48), np.uint8)
    truth[5:20, 7:30] = 1
    img = Image.fromarray((1 - truth).astype(np.uint8), mode="P")
    img.putpalette([255, 255, 255, 0, 0, 0] + [0, 0, 0] * 254)
    img.save(tmp_path / "car_01_mask.gif")
    np.testing.assert_array_equal(read_mask(tmp_path / "car_01_mask.gif"), truth)


def test_truncated_jpeg_raises_naming_the_file(real: Path, tmp_path: Path):
    data = (real / "train" / f"{CAR}_02.jpg").read_bytes()
    cut = tmp_path / f"{CAR}_02.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CarvanaError, match=str(cut).replace(".", r"\.")):
        read_image(cut)


def test_missing_and_unreadable_photo_raise(tmp_path: Path):
    with pytest.raises(CarvanaError, match="nothere.jpg"):
        read_image(tmp_path / "nothere.jpg")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(CarvanaError, match="junk.png"):
        read_image(junk)


def test_missing_mask_raises(tmp_path: Path):
    with pytest.raises(CarvanaError, match="nothere_mask.gif"):
        read_mask(tmp_path / "nothere_mask.gif")


def test_write_mask_gif_round_trip(tmp_path: Path):
    rng = np.random.default_rng(0)
    mask = (rng.random((64, 96)) > 0.5).astype(np.uint8)
    mask[0, 0], mask[-1, -1] = 1, 0
    path = tmp_path / "car_01_mask.gif"
    write_mask_gif(path, mask)
    back = read_mask(path)
    assert back.shape == (64, 96) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, mask)
    with Image.open(path) as img:  # Carvana's format: palette indices 0/1, white car on black
        assert img.mode == "P"
        assert set(np.unique(np.asarray(img.convert("L"))).tolist()) == {0, 255}
    assert [p.name for p in tmp_path.iterdir()] == ["car_01_mask.gif"]


def test_atomic_path_renames_on_success(tmp_path: Path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_keeps_the_old_file_when_the_block_raises(tmp_path: Path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 127 / 255, 0.9, 1.0])
def test_probs_cut_is_the_float_threshold(threshold: float):
    probs = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(probs > probs_cut(threshold), probs.astype(np.float64) > threshold * 255)


def test_check_photos_gives_the_sizes_in_order_and_names_the_first_bad_photo(real: Path, tmp_path: Path):
    photos = sorted((real / "train").glob("*.jpg"))[:5] + sorted((real / "test").glob("*.jpg"))[:3]
    checked = list(check_photos(photos, workers=3))
    assert [c.size for c in checked] == [Image.open(p).size[::-1] for p in photos]  # (height, width)
    assert checked[0].size == (1280, 1918) and {c.car for c in checked} == {None}
    garbled = tmp_path / "garbled.jpg"
    data = bytearray(photos[0].read_bytes())
    data[len(data) // 2:len(data) // 2 + 4000] = bytes(4000)  # image data zeroed: libjpeg only warns
    garbled.write_bytes(bytes(data))
    with pytest.raises(CarvanaError, match=r"garbled\.jpg is corrupt"):
        list(check_photos(photos[:4] + [garbled] + photos[4:], workers=2))


def test_check_photos_from_a_script_without_a_main_guard_runs_it_once(real: Path, tmp_path: Path):
    """Its workers are fresh interpreters: multiprocessing's spawn would import the calling script again in each."""
    script = tmp_path / "check.py"
    script.write_text("from pathlib import Path\nfrom carvana.data.photo_check import check_photos\nprint('ran')\n"
                      f"print(len(list(check_photos(sorted(Path({str(real / 'train')!r}).glob('*.jpg')), 2))))\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ran", "16"]


def test_check_photos_reads_every_mask_by_its_values_and_size(real: Path, tmp_path: Path):
    """Each photo's mask is read in the same pass: its car or none, a soft one and one of another size refused."""
    photos = sorted((real / "train").glob("*.jpg"))[:3]
    masks = [real / "train_masks" / f"{p.stem}_mask.gif" for p in photos]
    empty = tmp_path / "empty_mask.gif"
    write_mask_gif(empty, np.zeros((1280, 1918), np.uint8))
    assert [c.car for c in check_photos(photos, 2, [*masks[:2], empty])] == [True, True, False]
    soft = tmp_path / "soft_mask.png"
    grey = read_mask(masks[0]) * 255
    grey[600, 900] = 128
    assert cv2.imwrite(str(soft), grey)
    with pytest.raises(CarvanaError, match=r"soft_mask\.png is not black and white: it has grey levels 128"):
        list(check_photos(photos[:2], 1, [masks[0], soft]))
    small = tmp_path / "small_mask.gif"
    write_mask_gif(small, np.zeros((1280, 1916), np.uint8))
    with pytest.raises(CarvanaError, match=r"1280x1918 but its mask .*small_mask\.gif is 1280x1916 \(height x width"):
        list(check_photos(photos[:1], 1, [small]))


def test_a_png_named_jpg_is_read_as_the_png_it_is(tmp_path: Path):
    """The file's own bytes say what it is: a PNG named .jpg is no truncated JPEG."""
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)
    path = tmp_path / "car_01.jpg"
    assert cv2.imwrite(str(tmp_path / "car_01.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (tmp_path / "car_01.png").rename(path)
    np.testing.assert_array_equal(read_image(path), image)
    assert [c.size for c in check_photos([path])] == [(64, 96)]


def alpha_mask(truth: np.ndarray, colour: int | np.ndarray) -> np.ndarray:
    """HxWx4 RGBA whose alpha is `truth` (0/255) and whose colours are `colour` everywhere (or an HxWx3 image)."""
    rgb = np.broadcast_to(colour, (*truth.shape, 3)).astype(np.uint8)
    return np.dstack([rgb, truth * 255])


@pytest.mark.parametrize("colour", ["white", "black", "photo"])
@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_an_alpha_that_is_not_opaque_everywhere_is_the_mask(tmp_path: Path, colour: str, mode: str):
    """Background-removal masks: white or black pixels (or the photo), the object in the alpha; RGBA or LA."""
    truth = np.zeros((32, 48), np.uint8)
    truth[5:20, 7:30] = 1
    pixels = {"white": 255, "black": 0, "photo": np.random.default_rng(0).integers(0, 256, (32, 48, 3))}[colour]
    rgba = alpha_mask(truth, pixels)
    image = Image.fromarray(rgba) if mode == "RGBA" else Image.fromarray(rgba[..., [0, 3]], mode="LA")
    image.save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "a.png"), truth)


def test_a_transparent_colour_of_a_gif_or_png_is_the_mask(tmp_path: Path):
    """A palette GIF and a grey PNG whose background colour is marked transparent: the alpha is the object."""
    truth = np.zeros((32, 48), np.uint8)
    truth[5:20, 7:30] = 1
    gif = Image.fromarray(truth, mode="P")
    gif.putpalette([0, 0, 0, 0, 0, 0] + [0, 0, 0] * 254)  # black object on black: only the transparency tells
    gif.save(tmp_path / "a.gif", transparency=0)
    Image.fromarray(np.full((32, 48), 200, np.uint8)).save(tmp_path / "b.png", transparency=200)
    np.testing.assert_array_equal(read_mask(tmp_path / "a.gif"), truth)
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), np.zeros_like(truth))  # all transparent: empty


def test_an_opaque_alpha_leaves_the_colours_the_mask(tmp_path: Path):
    truth = np.zeros((32, 48), np.uint8)
    truth[5:20, 7:30] = 1
    opaque = np.dstack([np.dstack([truth * 255] * 3), np.full((32, 48), 255, np.uint8)])
    Image.fromarray(opaque).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "a.png"), truth)


def test_a_soft_alpha_and_an_alpha_the_colours_contradict_are_refused(tmp_path: Path):
    truth = np.zeros((32, 48), np.uint8)
    truth[5:20, 7:30] = 1
    soft = alpha_mask(truth, 255)
    soft[5, 7, 3] = 128  # an anti-aliased edge
    Image.fromarray(soft).save(tmp_path / "soft.png")
    with pytest.raises(CarvanaError, match=r"soft\.png is not black and white: its alpha, .* has alpha levels 128 "
                                           r"\(of 0\.\.255\): .*alpha > 127"):
        read_mask(tmp_path / "soft.png")
    other = truth.copy()
    other[25:30, 35:40] = 1  # colours: a black-and-white mask of their own, not the alpha's
    Image.fromarray(np.dstack([np.dstack([other * 255] * 3), truth * 255])).save(tmp_path / "two.png")
    with pytest.raises(CarvanaError, match=r"two\.png shows two masks: .* differ in 25 pixels"):
        read_mask(tmp_path / "two.png")
    Image.fromarray(np.dstack([np.dstack([truth * 255] * 3), truth * 255])).save(tmp_path / "same.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "same.png"), truth)  # colours and alpha agree: one mask


def test_check_photos_reads_an_alpha_mask(tmp_path: Path):
    """The mask check before training reads the alpha too: white + an all-transparent alpha holds no object."""
    photo = tmp_path / "a.jpg"
    Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(photo)
    empty = np.zeros((32, 48), np.uint8)
    Image.fromarray(alpha_mask(empty, 255)).save(tmp_path / "white_mask.png")  # white, all transparent: no object
    truth = empty.copy()
    truth[3:9, 4:10] = 1
    Image.fromarray(alpha_mask(truth, 0)).save(tmp_path / "black_mask.png")  # black, object in the alpha
    checked = list(check_photos([photo, photo], 1, [tmp_path / "white_mask.png", tmp_path / "black_mask.png"]))
    assert [c.car for c in checked] == [False, True]
