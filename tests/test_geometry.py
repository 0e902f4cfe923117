"""The geometry both ways (photo -> network input -> logits at 1918x1280) and the training transform built on it."""

import numpy as np
import pytest
import torch
from helpers import augment

from carvana import CarvanaError
from carvana.data.boxes import cut_box
from carvana.data.dataset import AugmentSampler, SegDataset
from carvana.data.geometry import OUTSIDE_BOX, Geometry, padded_size
from carvana.data.io import read_image, write_image, write_mask_gif, write_probs8
from carvana.data.transforms import train_transform

NO_AUGMENT = augment(hflip=0.0, affine=0.0, color=0.0)
FULL_AUGMENT = augment(hflip=1.0, affine=1.0, color=1.0)


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


def test_modes_keys_and_input_shapes():
    assert [Geometry().mode, Geometry(crop_size=[1024, 1024]).mode, Geometry(input_size=[640, 960]).mode,
            Geometry(input_size=[640, 960], boxes=True).mode] == ["pad", "crop", "resize", "boxes"]
    assert [Geometry().key, Geometry(crop_size=[64, 64]).key, Geometry(input_size=[640, 960]).key,
            Geometry(input_size=[640, 960], boxes=True).key] == ["full", "full", "640x960", "box640x960"]
    assert Geometry().input_shape((1280, 1918)) == (1280, 1920)
    assert Geometry(crop_size=[1024, 1024]).input_shape((1280, 1918)) == (1280, 1920)  # evaluation: full, padded
    assert Geometry(input_size=[320, 480]).input_shape((1280, 1918)) == (320, 480)
    assert Geometry(input_size=[320, 480]) == Geometry(input_size=(320, 480))  # a config's list or a tuple


def test_pad_both_ways_at_full_carvana_size():
    image, _ = photo(1280, 1918)
    geometry = Geometry()
    padded, _ = geometry.to_input(image)
    assert padded.shape == (1280, 1920, 3)
    np.testing.assert_array_equal(padded[:, :1918], image)  # bottom and right padding: the photo sits at [0, 0]
    assert not padded[:, 1918:].any()
    logits = torch.from_numpy(padded).permute(2, 0, 1)[None].float()
    back = geometry.to_full(logits, (1280, 1918))
    assert back.shape == (1, 3, 1280, 1918)  # non-square: a swapped axis cannot pass
    np.testing.assert_array_equal(back[0].permute(1, 2, 0).numpy().astype(np.uint8), image)


def test_pad_of_training_equals_pad_of_evaluation():
    image, mask = photo(50, 90)
    out = train_transform(Geometry(), NO_AUGMENT)(image=image, mask=mask)
    assert out["image"].shape == (64, 96, 3) and out["mask"].shape == (64, 96)
    np.testing.assert_array_equal(out["image"], Geometry().to_input(image)[0])


def test_resize_both_ways():
    image, mask = photo(1280, 1918)
    geometry = Geometry(input_size=[320, 480])
    out = train_transform(geometry, NO_AUGMENT)(image=image, mask=mask)
    assert out["image"].shape == (320, 480, 3) and out["mask"].shape == (320, 480)
    assert set(np.unique(out["mask"]).tolist()) == {0, 1}
    assert abs(out["mask"].mean() - mask.mean()) < 0.01  # the car stays where it was
    np.testing.assert_array_equal(geometry.to_input(image)[0], out["image"])  # evaluation sees training's resize
    back = geometry.to_full(torch.full((2, 1, 320, 480), 0.7), (1280, 1918))
    assert back.shape == (2, 1, 1280, 1918) and torch.allclose(back, torch.tensor(0.7))


def test_stacked_channels_resize_nearest_as_training_does():
    """Validation and prediction make the network input exactly as training's A.Resize: colours by cv2 area, stacked
    channels (a first stage's probabilities) by nearest, so the same input and the same logits."""
    image, mask = photo(128, 190, seed=3)
    stacked = np.random.default_rng(4).integers(0, 256, (128, 190), dtype=np.uint8)
    geometry = Geometry(input_size=[32, 64])
    trained = train_transform(geometry, NO_AUGMENT)(image=image, mask=mask, masks=[stacked])
    colours, extra = geometry.to_input(image, [stacked])
    np.testing.assert_array_equal(colours, trained["image"])
    np.testing.assert_array_equal(extra[0], trained["masks"][0])


def test_car_boxes_both_ways():
    image, _ = photo(128, 190, seed=5)
    box = (10, 74, 20, 116)
    geometry = Geometry(input_size=[32, 64], boxes=True)
    small, _ = geometry.to_input(image, box=box)
    np.testing.assert_array_equal(small, Geometry(input_size=[32, 64]).to_input(image[10:74, 20:116])[0])
    logits = torch.full((1, 1, 32, 64), 2.0)
    full = geometry.to_full(logits, (128, 190), torch.tensor([box]))
    assert full.shape == (1, 1, 128, 190)
    assert torch.all(full[..., 10:74, 20:116] == 2.0)
    outside = torch.ones(128, 190, dtype=torch.bool)
    outside[10:74, 20:116] = False
    assert torch.all(full[0, 0][outside] == OUTSIDE_BOX)
    with pytest.raises(CarvanaError, match="does not fit"):
        cut_box(image, (0, 200, 0, 10))
    with pytest.raises(CarvanaError, match="bboxes"):
        geometry.to_input(image)


def test_crop_mode_trains_on_crops_and_evaluates_padded():
    image, mask = photo(1280, 1918)
    geometry = Geometry(crop_size=[256, 512])
    transform = train_transform(geometry, FULL_AUGMENT)
    for _ in range(3):
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (256, 512, 3) and out["mask"].shape == (256, 512)
    assert geometry.to_input(image)[0].shape == (1280, 1920, 3)


@pytest.mark.parametrize("geometry", [Geometry(input_size=[320, 480]), Geometry(crop_size=[64, 64]), Geometry()],
                         ids=["resize", "crop", "pad"])
def test_masks_stay_binary_after_augmentation(geometry: Geometry):
    image, mask = photo(128, 192)
    transform = train_transform(geometry, FULL_AUGMENT)
    for _ in range(5):
        out = transform(image=image, mask=mask)
        assert out["mask"].dtype == np.uint8 and set(np.unique(out["mask"]).tolist()) <= {0, 1}
        assert out["image"].dtype == np.uint8


def test_bad_sizes_are_refused():
    with pytest.raises(CarvanaError, match="crop_size.*input_size"):
        Geometry(crop_size=[1024, 1024], input_size=[640, 960])
    bad = (({"crop_size": [1000, 1024]}, "data.crop_size"), ({"input_size": [640, 950]}, "data.input_size"),
           ({"input_size": [640]}, "data.input_size"))
    for kwargs, key in bad:
        with pytest.raises(CarvanaError, match=f"{key}.*32"):
            Geometry(**kwargs)
    with pytest.raises(CarvanaError, match="bboxes.*input_size"):
        Geometry(boxes=True)


def test_validation_items_keep_the_mask_and_size_at_full_resolution(tmp_path):
    image, mask = photo(128, 190, seed=3)
    write_image(tmp_path / "car_01.jpg", image)
    write_mask_gif(tmp_path / "car_01_mask.gif", mask)
    write_probs8(tmp_path / "car_01.png", np.full((128, 190), 200, np.uint8))
    item = SegDataset([tmp_path / "car_01.jpg"], [tmp_path / "car_01_mask.gif"], Geometry(input_size=[32, 64]),
                          stacked=[[tmp_path / "car_01.png"]])[0]
    expected = Geometry(input_size=[32, 64]).to_input(read_image(tmp_path / "car_01.jpg"))[0]
    np.testing.assert_array_equal(item["image"][:3].permute(1, 2, 0).numpy(), expected)
    assert torch.all(item["image"][3] == 200)
    assert item["mask"].shape == (1, 128, 190) and item["size"].tolist() == [128, 190]
    assert item["name"] == "car_01.jpg"


def test_augmentations_are_a_function_of_seed_epoch_and_index(tmp_path):
    """albumentations keeps its own random state: every draw comes from (seed, epoch, index) through the sampler, so
    a run resumed at an epoch, or read by other workers, draws what an uninterrupted run draws."""
    from torch.utils.data import DataLoader

    image, mask = photo(64, 96, seed=7)
    write_image(tmp_path / "car_01.jpg", image)
    write_mask_gif(tmp_path / "car_01_mask.gif", mask)
    transform = train_transform(Geometry(crop_size=[32, 32]), FULL_AUGMENT)
    dataset = SegDataset([tmp_path / "car_01.jpg"] * 4, [tmp_path / "car_01_mask.gif"] * 4,
                         Geometry(crop_size=[32, 32]),
                         transform=transform)

    def epoch(step: int, workers: int) -> list[np.ndarray]:
        sampler = AugmentSampler(dataset, 1, 0, seed=80, step=lambda: step)
        sampler.set_epoch(7)  # Lightning's epoch does not count: the global step at the pass's start does
        loader = DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=workers)
        return [batch["image"][0].numpy() for batch in loader]

    first, by_workers = epoch(8, 0), epoch(8, 2)
    assert len(first) == 4 and all(np.array_equal(a, b) for a, b in zip(first, by_workers))
    assert not np.array_equal(first[0], first[1])  # each index its own draw
    assert not any(np.array_equal(a, b) for a, b in zip(first, epoch(16, 0)))  # another pass, other draws
    two_ranks = [AugmentSampler(dataset, 2, r, seed=80, step=lambda: 8) for r in (0, 1)]
    seen = [index for sampler in two_ranks for index, _ in sampler]
    assert sorted(seen) == [0, 1, 2, 3]  # each photo on one rank
