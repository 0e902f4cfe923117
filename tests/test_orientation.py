"""Phone photos: a JPEG (or PNG) whose pixels are stored sideways with an EXIF orientation tag is read as displayed,
its size too, by training, predict.py and the service; masks are drawn on the displayed photo. Real Carvana photos,
downscaled to 240x160 and re-saved with orientations 3, 6 and 8."""

from pathlib import Path

import numpy as np
import pytest
from helpers import compose_train
from PIL import Image

from carvana.data.io import image_size, read_image, read_mask, read_probs8
from carvana.data.photo_check import check_photos

ORIENTATION = 0x0112  # the EXIF tag
SIZE = (160, 240)  # (h, w) displayed, as the real photos (1280x1918) downscaled
# the displayed image -> the stored pixels of each tag (exif_transpose undoes it)
STORE = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
# training set: group letter, angle, tag (two photos a group, every tag in training and validation)
PHOTOS = [("a", 1, 1), ("a", 3, 6), ("b", 5, 3), ("b", 7, 8), ("c", 9, 6), ("c", 11, 1), ("d", 13, 8), ("d", 15, 3)]
GROUP = "^([^-]+)-"


def save_tagged(image: Image.Image, path: Path, tag: int) -> None:
    """Save `image` (as it should be displayed) with its pixels stored for EXIF orientation `tag`."""
    exif = Image.Exif()
    exif[ORIENTATION] = tag
    stored = image if STORE[tag] is None else image.transpose(STORE[tag])
    stored.save(path, exif=exif, **({"quality": 95} if path.suffix == ".jpg" else {}))


def real_pair(real: Path, angle: int) -> tuple[Image.Image, Image.Image]:
    """A real photo and its mask (0/255), downscaled to SIZE, upright."""
    car = min(real.glob("train/*_01.jpg")).name.split("_")[0]
    with Image.open(real / "train" / f"{car}_{angle:02d}.jpg") as photo:
        small = photo.convert("RGB").resize(SIZE[::-1], Image.Resampling.LANCZOS)
    truth = read_mask(real / "train_masks" / f"{car}_{angle:02d}_mask.gif")
    mask = Image.fromarray(truth * 255).resize(SIZE[::-1], Image.Resampling.NEAREST)
    return small, mask


@pytest.fixture(scope="module")
def phone_root(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data=folder layout: real photos saved with tags 1, 3, 6, 8, masks drawn upright (PNG, no EXIF)."""
    root = tmp_path_factory.mktemp("phone")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    (root / "upright").mkdir()
    for group, angle, tag in PHOTOS:
        photo, mask = real_pair(shared_data / "real", angle)
        name = f"{group}-{angle:02d}-tag{tag}"
        save_tagged(photo, root / "images" / f"{name}.jpg", tag)
        photo.save(root / "upright" / f"{name}.png")
        mask.save(root / "masks" / f"{name}.png")
    return root


def test_size_is_the_displayed_one(phone_root: Path):
    for path in sorted((phone_root / "images").glob("*.jpg")):
        with Image.open(path) as img:
            stored = (img.height, img.width)
        tag = int(path.stem[-1])
        assert stored == (SIZE[::-1] if tag in (6, 8) else SIZE), (path, stored)
        assert image_size(path) == SIZE, path


@pytest.mark.parametrize("tag", [2, 3, 4, 5, 6, 7, 8])
def test_read_image_is_the_displayed_photo(phone_root: Path, tmp_path: Path, tag: int):
    """Every orientation, PNG and TIFF (lossless: exactly) and JPEG (within its noise), as PIL's exif_transpose shows
    it; a mask PNG that carries a tag is read as displayed too."""
    image = Image.open(phone_root / "upright" / "a-01-tag1.png")
    store = {**STORE, 2: Image.Transpose.FLIP_LEFT_RIGHT, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 7: Image.Transpose.TRANSVERSE}
    for suffix in (".png", ".tif", ".jpg"):
        path = tmp_path / f"photo{suffix}"
        exif = Image.Exif()
        exif[ORIENTATION] = tag
        image.transpose(store[tag]).save(path, exif=exif)
        pixels = read_image(path)
        assert pixels.shape == (*SIZE, 3) and image_size(path) == SIZE
        diff = np.abs(pixels.astype(int) - np.asarray(image).astype(int)).mean()
        assert diff < (4 if suffix == ".jpg" else 0.01), (suffix, diff)
    mask = Image.open(phone_root / "masks" / "a-01-tag1.png")
    exif = Image.Exif()
    exif[ORIENTATION] = tag
    mask.transpose(store[tag]).save(tmp_path / "mask.png", exif=exif)
    assert (read_mask(tmp_path / "mask.png") == np.asarray(mask) // 255).all()


def test_the_photo_check_accepts_upright_masks(phone_root: Path):
    images = sorted((phone_root / "images").glob("*.jpg"))
    masks = [phone_root / "masks" / f"{p.stem}.png" for p in images]
    assert [c.size for c in check_photos(images, 1, masks)] == [SIZE] * len(images)


def test_training_pairs_each_tagged_photo_with_its_upright_mask(phone_root: Path, tmp_path: Path):
    """The data module's photos equal the upright copies (so their masks, drawn upright, are aligned)."""
    from carvana.training.run import build_datamodule

    cfg = compose_train("data=folder", f"data.root={phone_root}", f"data.group='{GROUP}'", "data.n_folds=2",
                        "data.num_workers=0", "data.crop_size=null")
    dm = build_datamodule(cfg, tmp_path / "run")
    dm.setup("fit")
    for dataset in (dm.train_set, dm.val_set):
        for index, path in enumerate(dataset.images):
            raw = dataset.read(index)
            upright = np.asarray(Image.open(phone_root / "upright" / f"{path.stem}.png")).astype(int)
            assert raw["image"].shape[:2] == raw["mask"].shape == SIZE, path
            assert np.abs(raw["image"].astype(int) - upright).mean() < 4, path
            # the car (darker than Carvana's white studio) lies under the mask
            grey = raw["image"].mean(axis=2)
            assert grey[raw["mask"] == 0].mean() - grey[raw["mask"] == 1].mean() > 20, path


@pytest.fixture(scope="module")
def phone_ckpt(phone_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of train.py's job on the tagged photos (whole photos, padded)."""
    from carvana.training.run import train

    out = tmp_path_factory.mktemp("phone-run") / "run"
    cfg = compose_train("data=folder", f"data.root={phone_root}", f"data.group='{GROUP}'", "data.n_folds=2",
                        "data.num_workers=0", "data.crop_size=null", "data.batch_size=2", "trainer=cpu",
                        "trainer.max_epochs=1", "model.encoder_weights=null", "trainer.enable_progress_bar=false")
    dice, ckpt, _ = train(cfg, out)
    assert 0 <= dice <= 1
    return Path(ckpt)


def predict_folder(ckpt: Path, photos: Path, out: Path, *words: str) -> str:
    """predict.py's job through the library: its summary line."""
    from helpers import predict_in_process

    return predict_in_process(f"ckpt={ckpt}", f"input_dir={photos}", f"output_dir={out}", *words)


@pytest.fixture(scope="module")
def mixed(phone_root: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A portrait photo (stored 240x160 with tag 6), a landscape one of the same stored size, and the same landscape
    photo stored sideways (tag 8, lossless PNG) next to its untagged copy."""
    photos = tmp_path_factory.mktemp("mixed")
    photo, _ = real_pair(shared_data / "real", 2)
    save_tagged(photo.transpose(Image.Transpose.ROTATE_90), photos / "portrait.jpg", 6)  # displayed 240x160 (h, w)
    photo.save(photos / "landscape.jpg", quality=95)
    save_tagged(photo, photos / "sideways.png", 8)
    photo.save(photos / "upright.png")
    with Image.open(photos / "portrait.jpg") as img:
        assert img.size == (SIZE[1], SIZE[0])  # stored as the landscape photo is
    return photos


def test_predict_writes_each_photo_at_its_displayed_size(phone_ckpt: Path, mixed: Path, tmp_path: Path):
    out = tmp_path / "out"
    predict_folder(phone_ckpt, mixed, out, "batch_size=4", "write=[png,cutout]")
    assert read_probs8(out / "portrait.png").shape == SIZE[::-1]
    assert read_probs8(out / "landscape.png").shape == SIZE
    with Image.open(out / "cutouts" / "portrait.png") as cut:
        assert (cut.height, cut.width) == SIZE[::-1]
    sideways, upright = read_probs8(out / "sideways.png").astype(int), read_probs8(out / "upright.png").astype(int)
    assert np.abs(sideways - upright).mean() < 1  # the same displayed pixels: the same mask, aligned


def test_a_rerun_redoes_a_mask_of_the_wrong_size(phone_ckpt: Path, mixed: Path, tmp_path: Path,
                                                capfd: pytest.CaptureFixture):
    """A mask an older predict.py wrote at the stored size is not kept: predicted again at the displayed size."""
    out = tmp_path / "out"
    predict_folder(phone_ckpt, mixed, out)
    right = read_probs8(out / "portrait.png")
    Image.fromarray(np.zeros(SIZE, np.uint8)).save(out / "portrait.png")  # the stored size, as before the fix
    capfd.readouterr()
    line = predict_folder(phone_ckpt, mixed, out)
    assert "1 photo(s) have masks of another size than the photo in output_dir" in capfd.readouterr().out
    assert line.startswith("predicted=1 "), line  # the others are kept
    assert read_probs8(out / "portrait.png").shape == SIZE[::-1], line
    assert np.abs(read_probs8(out / "portrait.png").astype(int) - right).mean() < 1


def test_the_service_answers_a_tagged_photo_at_its_displayed_size(phone_ckpt: Path, mixed: Path, tmp_path: Path):
    from helpers import Service, decode, post

    service = Service(tmp_path / "service", phone_ckpt)
    try:
        url = service.ready().url
        masks = {}
        for name, size in (("portrait.jpg", SIZE[::-1]), ("sideways.png", SIZE), ("upright.png", SIZE)):
            status, _, body = post(url, (mixed / name).read_bytes(), filename=name)
            assert status == 200, body[:300]
            masks[name] = decode(body).astype(int)
            assert masks[name].shape == size, name
        assert np.abs(masks["sideways.png"] - masks["upright.png"]).mean() < 1  # aligned
    finally:
        service.kill()


@pytest.mark.parametrize("said", ["displayed", "stored", "wrong"])
def test_coco_sizes_are_the_displayed_ones(phone_root: Path, tmp_path: Path, said: str):
    """A tag-6 photo's COCO entry: its displayed size (CVAT) or its stored one (Label Studio) is taken and the object,
    drawn on the displayed photo, comes out at the displayed size; another size is refused."""
    import json

    from pycocotools import mask as coco_mask

    from carvana import CarvanaError
    from carvana.data.coco import read_coco

    truth = read_mask(phone_root / "masks" / "a-03-tag6.png")
    rle = coco_mask.encode(np.asfortranarray(truth))
    rle["counts"] = rle["counts"].decode()
    height, width = {"displayed": SIZE, "stored": SIZE[::-1], "wrong": (SIZE[0], SIZE[1] + 2)}[said]
    content = {"images": [{"id": 1, "file_name": "images/a-03-tag6.jpg", "width": width, "height": height}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle, "iscrowd": 1}],
               "categories": [{"id": 1, "name": "car"}]}
    (tmp_path / "coco.json").write_text(json.dumps(content))
    if said == "wrong":
        with pytest.raises(CarvanaError, match="is 160x240 .* as displayed"):
            read_coco(tmp_path / "coco.json", phone_root)
        return
    coco = read_coco(tmp_path / "coco.json", phone_root)
    assert (coco.masks[coco.images[0]].read() == truth).all()
