"""Input modes: pad 1918 -> 1920 and back, resize and back, random crops; masks stay {0, 1}; bad sizes refused."""

import numpy as np
import pytest
import torch

from carvana import CarvanaError
from carvana.transforms import input_mode, padded_size, restore, train_transform

NO_AUGMENT = {"hflip": 0.0, "affine": 0.0, "shift_limit": 0.0625, "scale_limit": 0.1, "color": 0.0}
FULL_AUGMENT = {"hflip": 1.0, "affine": 1.0, "shift_limit": 0.0625, "scale_limit": 0.1, "color": 1.0}


def photo(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random HxWx3 uint8 photo and an HxW {0,1} mask with a filled ellipse-ish blob."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    y, x = np.mgrid[:height, :width]
    mask = (((y - height / 2) / (height / 3)) ** 2 + ((x - width / 2) / (width / 3)) ** 2 < 1).astype(np.uint8)
    return image, mask


def test_padded_size():
    assert padded_size(1280, 1918) == (1280, 1920)
    assert padded_size(64, 96) == (64, 96)
    assert padded_size(65, 1) == (96, 32)


def test_pad_round_trip_at_full_carvana_size():
    image, mask = photo(1280, 1918)
    out = train_transform(None, None, NO_AUGMENT)(image=image, mask=mask)
    assert out["image"].shape == (1280, 1920, 3)
    assert out["mask"].shape == (1280, 1920)
    # padded at the bottom and the right with zeros: the photo sits unchanged at [:1280, :1918]
    np.testing.assert_array_equal(out["image"][:1280, :1918], image)
    np.testing.assert_array_equal(out["mask"][:1280, :1918], mask)
    assert not out["image"][:, 1918:].any() and not out["mask"][:, 1918:].any()
    # the way back: a Bx1xHxW tensor of the padded size is cropped to the photo (non-square: no swapped axes)
    padded = torch.from_numpy(out["image"]).permute(2, 0, 1)[None].float()
    back = restore(padded, (1280, 1918), resized=False)
    assert back.shape == (1, 3, 1280, 1918)
    np.testing.assert_array_equal(back[0].permute(1, 2, 0).numpy().astype(np.uint8), image)
    mask_back = restore(torch.from_numpy(out["mask"])[None, None].float(), (1280, 1918), resized=False)
    np.testing.assert_array_equal(mask_back[0, 0].numpy().astype(np.uint8), mask)


def test_pad_non_divisible_small_photo():
    image, mask = photo(50, 90)
    out = train_transform(None, None, NO_AUGMENT)(image=image, mask=mask)
    assert out["image"].shape == (64, 96, 3)
    np.testing.assert_array_equal(out["image"][:50, :90], image)


def test_resize_mode_shapes_and_restore():
    image, mask = photo(1280, 1918)
    out = train_transform(None, [320, 480], NO_AUGMENT)(image=image, mask=mask)
    assert out["image"].shape == (320, 480, 3)
    assert out["mask"].shape == (320, 480)
    assert set(np.unique(out["mask"]).tolist()) == {0, 1}
    logits = torch.randn(2, 1, 320, 480)
    back = restore(logits, (1280, 1918), resized=True)
    assert back.shape == (2, 1, 1280, 1918)
    # bilinear upsampling of a constant stays constant; an axis mix-up would fail the shape above
    assert torch.allclose(restore(torch.full((1, 1, 320, 480), 0.7), (1280, 1918), resized=True), torch.tensor(0.7))
    # the mask's resize keeps the car where it was (mean fraction preserved)
    assert abs(out["mask"].mean() - mask.mean()) < 0.01


def test_crop_mode_output_size():
    image, mask = photo(1280, 1918)
    transform = train_transform([1024, 1024], None, FULL_AUGMENT)
    for _ in range(3):
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (1024, 1024, 3)
        assert out["mask"].shape == (1024, 1024)
    small, small_mask = photo(64, 96)
    out = train_transform([64, 64], None, NO_AUGMENT)(image=small, mask=small_mask)
    assert out["image"].shape == (64, 64, 3)


def test_crop_mode_non_square_crop():
    image, mask = photo(1280, 1918)
    out = train_transform([256, 512], None, NO_AUGMENT)(image=image, mask=mask)
    assert out["image"].shape == (256, 512, 3)
    assert out["mask"].shape == (256, 512)


@pytest.mark.parametrize("crop_size,input_size", [(None, [320, 480]), ([64, 64], None), (None, None)])
def test_masks_stay_binary_after_augmentation(crop_size, input_size):
    image, mask = photo(128, 192)
    transform = train_transform(crop_size, input_size, FULL_AUGMENT)
    for _ in range(5):
        out = transform(image=image, mask=mask)
        assert out["mask"].dtype == np.uint8
        assert set(np.unique(out["mask"]).tolist()) <= {0, 1}
        assert out["image"].dtype == np.uint8


def test_input_mode_names():
    assert input_mode(None, None) == "pad"
    assert input_mode([1024, 1024], None) == "crop"
    assert input_mode(None, [640, 960]) == "resize"


def test_input_mode_refuses_both_sizes():
    with pytest.raises(CarvanaError, match="crop_size.*input_size"):
        input_mode([1024, 1024], [640, 960])
    with pytest.raises(CarvanaError):
        train_transform([1024, 1024], [640, 960], NO_AUGMENT)


@pytest.mark.parametrize(
    "crop_size,input_size,key",
    [([1000, 1024], None, "data.crop_size"), (None, [640, 950], "data.input_size"), (None, [640], "data.input_size")],
)
def test_input_mode_refuses_sizes_not_divisible_by_32(crop_size, input_size, key):
    with pytest.raises(CarvanaError, match=f"{key}.*32"):
        input_mode(crop_size, input_size)


def test_validation_and_prediction_see_the_training_resize(tmp_path):
    """Without a transform (validation, prediction) the loader resizes the photo exactly as training's A.Resize does,
    and keeps the mask and the size at full resolution for the metric and the way back."""
    from carvana.data import CarvanaDataset
    from carvana.io import read_image, write_image, write_mask_gif, write_probs8

    image, mask = photo(128, 190, seed=3)
    stacked = np.random.default_rng(4).integers(0, 256, (128, 190), dtype=np.uint8)  # a first stage's probabilities
    write_image(tmp_path / "car_01.jpg", image)
    write_mask_gif(tmp_path / "car_01_mask.gif", mask)
    write_probs8(tmp_path / "car_01.png", stacked)
    item = CarvanaDataset([tmp_path / "car_01.jpg"], [tmp_path / "car_01_mask.gif"],
                          stacked=[[tmp_path / "car_01.png"]], input_size=[32, 64])[0]
    trained = train_transform(None, [32, 64], NO_AUGMENT)(image=read_image(tmp_path / "car_01.jpg"), masks=[stacked])
    np.testing.assert_array_equal(item["image"][:3].permute(1, 2, 0).numpy(), trained["image"])
    np.testing.assert_array_equal(item["image"][3].numpy(), trained["masks"][0])
    assert item["mask"].shape == (1, 128, 190) and item["size"].tolist() == [128, 190]


@pytest.mark.parametrize(
    ("source", "target", "channels"),
    [
        ((1280, 1918), (320, 480), 3),  # Kaggle's photos at the demo's input: 3.996 across, 4 down
        ((1280, 1918), (640, 960), 3),
        ((1280, 1918), (640, 959), 3),  # halved both ways: cv2's integer path, (sum + 2) / 4
        ((66, 130), (33, 65), 1),
        ((64, 96), (16, 24), 3),  # whole ratios: cv2 sums blocks as integers, times float32 1/area
        ((1280, 1920), (640, 640), 3),  # 2x3 blocks: 1/6 is not a power of two
        ((90, 90), (30, 45), 3),
        ((64, 96), (64, 48), 3),  # one direction only
        ((64, 96), (32, 96), 3),
        ((63, 95), (21, 19), 4),
        ((100, 77), (33, 20), 3),
    ],
)
def test_area_downscale_is_bit_identical_to_cv2(source, target, channels):
    import cv2

    from carvana.transforms import area_downscale

    image = np.random.default_rng(sum(source) + sum(target)).integers(0, 256, (*source, channels), dtype=np.uint8)
    expected = cv2.resize(image, target[::-1], interpolation=cv2.INTER_AREA).reshape(*target, channels)
    got = area_downscale(torch.from_numpy(image).permute(2, 0, 1)[None], target)[0].permute(1, 2, 0).numpy()
    assert got.dtype == np.uint8
    assert (got != expected).sum() == 0, f"{(got != expected).sum()} of {got.size} values differ"


def test_resize_on_device_and_on_cpu_equal_the_training_resize():
    """The resize a model of another input size does itself in an ensemble (full-size photos): the same bits as
    training's A.Resize, colours by area and a stacked channel by nearest, on the CPU (cv2) and as on a GPU."""
    from carvana.transforms import resize_like_training, resize_on_device

    image, _ = photo(128, 190, seed=5)
    stacked = np.random.default_rng(6).integers(0, 256, (128, 190), dtype=np.uint8)
    trained = train_transform(None, [32, 64], NO_AUGMENT)(image=image, masks=[stacked])
    expected = np.dstack([trained["image"], trained["masks"][0]])
    batch = torch.from_numpy(np.dstack([image, stacked])).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    for resize in (resize_like_training, resize_on_device):
        got = resize(batch, (32, 64))
        assert got.shape == (2, 4, 32, 64) and got.dtype == torch.uint8
        np.testing.assert_array_equal(got[1].permute(1, 2, 0).numpy(), expected, err_msg=resize.__name__)


def augmented(dataset, loader_workers: int | None = None) -> list[np.ndarray]:
    """The dataset's items as augmented photos, read directly or through a DataLoader with that many workers."""
    if loader_workers is None:
        return [dataset[i]["image"].numpy() for i in range(len(dataset))]
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=1, num_workers=loader_workers)
    return [batch["image"][0].numpy() for batch in loader]


def test_the_run_seed_reproduces_the_augmentations(tmp_path):
    """albumentations 2 keeps its own random state: the run's seed must reach it, in the main process and in each
    DataLoader worker (each its own sequence), or `seed` does not reproduce a training run."""
    import pytorch_lightning as pl

    from carvana.data import CarvanaDataset
    from carvana.io import write_image, write_mask_gif

    image, mask = photo(64, 96, seed=7)
    write_image(tmp_path / "car_01.jpg", image)
    write_mask_gif(tmp_path / "car_01_mask.gif", mask)

    def dataset():
        transform = train_transform([32, 32], None, FULL_AUGMENT)
        return CarvanaDataset([tmp_path / "car_01.jpg"] * 4, [tmp_path / "car_01_mask.gif"] * 4, transform)

    torch.manual_seed(80)
    first = augmented(dataset())
    torch.manual_seed(80)
    again = augmented(dataset())
    assert len(first) == len(again) == 4 and all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], first[1])  # one sequence, not one draw repeated

    pl.seed_everything(80, workers=True)
    workers = augmented(dataset(), loader_workers=2)
    pl.seed_everything(80, workers=True)
    repeat = augmented(dataset(), loader_workers=2)
    assert len(workers) == len(repeat) == 4 and all(np.array_equal(a, b) for a, b in zip(workers, repeat))
    # items 0 and 1 are the first draws of workers 0 and 1: their own sequences, not one sequence twice
    assert not np.array_equal(workers[0], workers[1])
