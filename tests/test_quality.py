"""The recipe's generalisation switches: appearance augmentations (CarColor), validation TTA, the weights' EMA."""

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from helpers import TINY_SIZE, augment, result_of, run_train, tiny_module, train_args

from carvana.data.io import read_image, read_mask
from carvana.data.transforms import CarColor, augmentations
from carvana.model.loading import load_module
from carvana.predict.ensemble import Ensemble


def photo_and_mask(root: Path) -> tuple[np.ndarray, np.ndarray]:
    photo = min((root / "train").glob("*.jpg"))
    return read_image(photo), read_mask(root / "train_masks" / f"{photo.stem}_mask.gif")


def test_car_color_recolours_the_car_and_leaves_the_studio(carvana_root: Path):
    image, mask = photo_and_mask(carvana_root)
    assert 0 < mask.sum() < mask.size
    changed = []
    for seed in range(6):
        transform = A.Compose([CarColor(p=1)])
        transform.set_random_seed(seed)
        out = transform(image=image, mask=mask)
        assert np.array_equal(out["mask"], mask)
        assert np.array_equal(out["image"][mask == 0], image[mask == 0])  # the studio untouched
        changed.append(np.abs(out["image"][mask > 0].astype(int) - image[mask > 0]).mean())
    assert min(changed) > 1  # every draw recolours the car
    transform.set_random_seed(3)
    again = transform(image=image, mask=mask)["image"]
    transform.set_random_seed(3)
    assert np.array_equal(transform(image=image, mask=mask)["image"], again)  # drawn from the sampler's seed


@pytest.mark.parametrize("key", ["hue", "gray", "channel_shuffle", "contrast", "quality", "car_color"])
def test_each_appearance_augmentation_changes_only_the_photo(carvana_root: Path, key: str):
    image, mask = photo_and_mask(carvana_root)
    transform = A.Compose(augmentations(**augment(hflip=0, affine=0, color=0, **{key: 1.0})))
    out = [transform(image=image, mask=mask) for _ in range(4)]
    assert all(np.array_equal(o["mask"], mask) for o in out)
    assert any(not np.array_equal(o["image"], image) for o in out), key
    assert len(augmentations(**augment(hflip=0, affine=0, color=0))) == \
        len(augmentations(**augment(hflip=0, affine=0, color=0, **{key: 0})))


def test_an_unknown_augmentation_key_is_refused_in_one_line(carvana_root: Path, tmp_path: Path):
    proc = run_train(train_args(carvana_root, tmp_path / "run", "+data.augment.hue_circle=0.5"), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[-1]]
    assert "data.augment key hue_circle" in proc.stderr and "car_color" in proc.stderr


def test_val_tta_hflip_is_what_predict_tta_hflip_averages():
    torch.manual_seed(0)
    module = tiny_module(encoder_weights=None, input_size=[64, 96], val_tta="hflip").eval()
    image = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    size = (128, 192)
    with torch.no_grad():
        probs, _ = module.val_probs(image, size)
        expected = Ensemble([module], tta="hflip").probs({module.geometry.key: image}, size)
        plain = module.geometry.to_full(module(image), size).sigmoid()
    assert probs.shape == (2, 1, *size)
    assert torch.allclose(probs, expected, atol=1e-5)
    assert not torch.allclose(probs, plain, atol=1e-3)  # the flip does change the random net's output


def test_an_unknown_val_tta_is_refused():
    with pytest.raises(Exception, match="model.val_tta=vflip"):
        tiny_module(encoder_weights=None, val_tta="vflip")


@pytest.mark.slow
def test_ema_validates_and_checkpoints_the_average(carvana_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    dice, ckpt = result_of(run_train(train_args(carvana_root, out, "optim.ema_decay=0.5", "trainer.max_epochs=2",
                                                "trainer.limit_train_batches=2")))
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    averaged, current = saved["state_dict"], saved["current_model_state"]
    name = next(k for k in averaged if k.endswith("weight") and averaged[k].ndim == 4)
    assert not torch.equal(averaged[name], current[name])  # the checkpoint holds the average, not the last step
    module = load_module(ckpt)  # predict.py's loader reads the average
    assert torch.equal(dict(module.state_dict())[name], torch.load(ckpt, map_location="cpu",
                                                                   weights_only=False)["state_dict"][name])
    assert 0 <= dice <= 1


def test_a_bad_ema_decay_is_refused(carvana_root: Path, tmp_path: Path):
    proc = run_train(train_args(carvana_root, tmp_path / "run", "optim.ema_decay=1.5"), timeout=120)
    assert proc.returncode == 2 and "optim.ema_decay=1.5" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_car_color_keeps_a_uint8_rgb_photo(carvana_root: Path):
    image, mask = photo_and_mask(carvana_root)
    out = A.Compose([A.Resize(*TINY_SIZE, interpolation=cv2.INTER_AREA), CarColor(p=1)])(image=image, mask=mask)
    assert out["image"].dtype == np.uint8 and out["image"].shape == (*TINY_SIZE, 3)
