"""The cut-out (write=cutout, ?output=cutout): alpha 0 on the background and 255 on the car for a BCE+Dice model's
probabilities, soft only at the edge; the car's own colour estimated at the edge; colour=photo the plain cut-out."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from carvana import CarvanaError
from carvana.data.io import probs_cut, read_image, read_mask
from carvana.predict.cutout import EDGE_BAND, alpha_from_probs, cutout
from carvana.predict.run import check_settings

CUT = probs_cut(0.5)
H, W = 64, 96  # not square: a transposed axis cannot pass
GREEN = np.array([0, 177, 64], np.float32)


def car_mask() -> np.ndarray:
    """HxW {0, 1}: a car-like blob off centre."""
    mask = np.zeros((H, W), np.uint8)
    cv2.ellipse(mask, (52, 34), (30, 18), 10, 0, 360, 1, -1)
    return mask


def test_alpha_is_0_on_background_255_on_car_for_bce_dice_probs():
    mask = car_mask()
    edge_soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.0)
    probs = 0.08 + 0.88 * edge_soft  # a BCE+Dice model's: 0.08 on the background, 0.96 on the car
    alpha = alpha_from_probs(np.round(probs * 255).astype(np.uint8), CUT)
    kernel = np.ones((2 * EDGE_BAND + 3, 2 * EDGE_BAND + 3), np.uint8)
    background, car = cv2.dilate(mask, kernel) == 0, cv2.erode(mask, kernel) == 1
    assert (alpha[background] == 0).all() and (alpha[car] == 255).all()
    soft = (alpha > 0) & (alpha < 255)
    assert soft.any(), "the edge stays soft"
    assert not (soft & (background | car)).any(), "soft only near the edge"
    assert ((alpha > 127) == (probs > 0.5)).all(), "the alpha's half level is the threshold's"


def test_alpha_soft_only_near_the_thresholded_edge():
    probs8 = np.full((H, W), 20, np.uint8)
    probs8[:, 60:] = 250
    probs8[10:20, 10:20] = 100  # a shadow at 0.39, far from the car: below the threshold, so not in the cut-out
    alpha = alpha_from_probs(probs8, CUT)
    assert (alpha[10:20, 10:20] == 0).all()
    assert (alpha[:, :60] == 0).all() and (alpha[:, 60:] == 255).all()


def test_mask_alpha_is_the_thresholded_probability():
    probs8 = np.round(cv2.GaussianBlur(car_mask().astype(np.float32), (0, 0), 2.0) * 255).astype(np.uint8)
    rgba = cutout(np.zeros((H, W, 3), np.uint8), probs8, "mask", CUT, "blur")
    assert rgba.shape == (H, W, 4) and set(np.unique(rgba[..., 3])) == {0, 255}
    assert ((rgba[..., 3] == 255) == (probs8 > CUT)).all()


def composite() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A red car with a soft edge pasted onto a known studio (light grey with dark lettering) -> the photo, the true
    alpha in [0, 1], the car's own colour (float32) and the soft band."""
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    car = np.dstack([200 - xx, 30 + yy / 4, 40 + 0 * xx]).astype(np.float32)  # the car's own colour
    studio = np.full((H, W, 3), 225, np.float32)
    studio[::8] = 40  # the studio's lettering: dark lines
    alpha = cv2.GaussianBlur(car_mask().astype(np.float32), (0, 0), 2.0)[..., None]
    photo = np.round(alpha * car + (1 - alpha) * studio).astype(np.uint8)
    return photo, alpha[..., 0], car, (alpha[..., 0] > 0.02) & (alpha[..., 0] < 0.98)


def edge_error(rgba: np.ndarray, car: np.ndarray, band: np.ndarray) -> float:
    """The mean colour error (levels) in the band of a cut-out laid on green, against the car's own colour with the
    cut-out's alpha (the colour's error alone; bench/cutout_edges.py measures both together)."""
    a = rgba[..., 3:].astype(np.float32) / 255
    return float(np.abs(a * rgba[..., :3] - a * car)[band].mean())


@pytest.mark.parametrize("colour", ["blur", "ml"])
def test_decontaminated_edge_is_closer_to_the_car_than_the_plain_one(colour: str):
    if colour == "ml":
        pytest.importorskip("pymatting")
    photo, alpha, car, _ = composite()
    probs8 = np.round(alpha * 255).astype(np.uint8)
    a = alpha_from_probs(probs8, CUT)
    band = (a > 0) & (a < 255)  # where the colour is estimated: elsewhere both are the photo's
    plain = edge_error(cutout(photo, probs8, "probs", CUT, "photo"), car, band)
    clean = edge_error(cutout(photo, probs8, "probs", CUT, colour), car, band)
    assert plain > 15, "the test's studio must show at the edge"
    assert clean < 0.6 * plain, (clean, plain)  # here: blur 0.37, ml 0.47 of the plain error


def test_colour_photo_is_the_plain_cutout_and_estimates_change_only_the_soft_band():
    photo, alpha, _, _ = composite()
    probs8 = np.round(alpha * 255).astype(np.uint8)
    plain = cutout(photo, probs8, "probs", CUT, "photo")
    assert np.array_equal(plain, np.dstack([photo, alpha_from_probs(probs8, CUT)]))
    clean = cutout(photo, probs8, "probs", CUT, "blur")
    soft = (plain[..., 3] > 0) & (plain[..., 3] < 255)
    assert np.array_equal(clean[..., 3], plain[..., 3]) and np.array_equal(clean[~soft], plain[~soft])
    assert (clean[soft] != plain[soft]).any()


def test_unknown_cutout_colour_is_refused():
    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), version_base=None):
        cfg = compose(config_name="predict", overrides=["ckpt=x.ckpt", "cutout_colour=halo"])
    with pytest.raises(CarvanaError, match="cutout_colour=halo: choose blur, ml, photo"):
        check_settings(dict(cfg))


def test_no_car_is_transparent():
    rgba = cutout(np.full((H, W, 3), 200, np.uint8), np.full((H, W), 30, np.uint8), "probs", CUT, "blur")
    assert (rgba[..., 3] == 0).all() and (rgba[..., :3] == 200).all()


def test_real_car_on_the_studio_gets_its_own_edge_colour(shared_data: Path):
    """A real Carvana car (1918x1280), its mask blurred as the alpha, on the studio's grey, BCE+Dice-like probs."""
    name = min((shared_data / "real" / "train").glob("*.jpg"))
    car = read_image(name).astype(np.float32)
    mask = read_mask(shared_data / "real" / "train_masks" / f"{name.stem}_mask.gif")
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5)[..., None]
    photo = np.round(alpha * car + (1 - alpha) * np.median(car[mask == 0], axis=0)).astype(np.uint8)
    probs8 = np.round((0.08 + 0.88 * alpha[..., 0]) * 255).astype(np.uint8)
    a = alpha_from_probs(probs8, CUT)
    assert (a[mask == 0] < 255).all() and (a[cv2.dilate(mask, np.ones((9, 9), np.uint8)) == 0] == 0).all()
    band = (a > 0) & (a < 255)
    plain = edge_error(cutout(photo, probs8, "probs", CUT, "photo"), car, band)
    clean = edge_error(cutout(photo, probs8, "probs", CUT, "blur"), car, band)
    assert clean < 0.65 * plain, (clean, plain)  # here 7.5 against 15.1 levels
