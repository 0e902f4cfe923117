"""Losses and the border Dice metric against hand computations in numpy, on tiny non-square masks."""

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from carvana import CarvanaError
from carvana.model.losses import LOSSES, border_band, border_dice, border_weights, build_loss

LOSS_CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"

# an 8x10 mask with a 4x4 square at rows 2-5, columns 3-6, and its border band for a 3x3 kernel, written by hand:
# the square grown by one pixel (rows 1-6, columns 2-7) less the square shrunk by one (rows 3-4, columns 4-5)
SQUARE = """
0000000000
0000000000
0001111000
0001111000
0001111000
0001111000
0000000000
0000000000
"""
RING = """
0000000000
0011111100
0011111100
0011001100
0011001100
0011111100
0011111100
0000000000
"""


def grid(text: str) -> np.ndarray:
    """Rows of '0'/'1' characters -> HxW float64 array."""
    return np.array([[float(c) for c in row] for row in text.split()])


def as_tensor(*arrays: np.ndarray) -> torch.Tensor:
    """HxW arrays -> Bx1xHxW float32 tensor."""
    return torch.tensor(np.stack(arrays)[:, None], dtype=torch.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def bce(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-pixel binary cross-entropy of probabilities p against (soft) targets y."""
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


@pytest.fixture
def batch() -> tuple[np.ndarray, np.ndarray]:
    """Logits and masks 2x8x10 in float64: the square and a shifted rectangle, random logits."""
    rng = np.random.default_rng(0)
    second = np.zeros((8, 10))
    second[1:7, 6:10] = 1  # touches the right edge; its band (28 pixels) is smaller than the square's (32)
    return rng.normal(0, 2, (2, 8, 10)), np.stack([grid(SQUARE), second])


def run(name: str, logits: np.ndarray, mask: np.ndarray, **kwargs: float) -> float:
    """The loss of conf/loss/<name>.yaml (its arguments, `kwargs` changing them) on logits and masks."""
    cfg = {**OmegaConf.to_container(OmegaConf.load(LOSS_CONF / f"{name}.yaml")), **kwargs}
    return build_loss(**cfg)(as_tensor(*logits), as_tensor(*mask)).item()


def test_bce_dice_bce_and_dice(batch: tuple[np.ndarray, np.ndarray]) -> None:
    logits, mask = batch
    p = sigmoid(logits)
    expected_bce = bce(p, mask).mean()
    expected_dice = 1 - 2 * (p * mask).sum() / (p.sum() + mask.sum())  # over the whole batch, as smp's DiceLoss
    assert run("bce", logits, mask) == pytest.approx(expected_bce, rel=1e-5)
    assert run("dice", logits, mask) == pytest.approx(expected_dice, rel=1e-5)
    assert run("bce_dice", logits, mask) == pytest.approx(0.2 * expected_bce + 0.8 * expected_dice, rel=1e-5)
    assert run("bce_dice", logits, mask, bce_weight=1.0, dice_weight=0.0) == pytest.approx(expected_bce, rel=1e-5)


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_bootstrap_matches_hand_targets_and_detaches_p(batch: tuple[np.ndarray, np.ndarray], mode: str) -> None:
    logits, mask = batch
    p = sigmoid(logits)
    target = 0.9 * mask + 0.1 * (p if mode == "soft" else (p > 0.5))
    x = as_tensor(*logits).requires_grad_()
    loss = build_loss(f"bootstrap_{mode}", beta=0.9)(x, as_tensor(*mask))
    assert loss.item() == pytest.approx(bce(p, target).mean(), rel=1e-5)
    # p is a label, not a path for gradients: d loss / d logit = (p - target) / n
    loss.backward()
    np.testing.assert_allclose(x.grad[:, 0].numpy(), (p - target) / p.size, rtol=1e-4, atol=1e-7)


def test_bootstrap_soft_and_hard_differ_across_one_half() -> None:
    mask = np.array([[1.0, 1.0, 0.0]])
    logits = np.log(np.array([[0.3, 0.8, 0.6]]) / (1 - np.array([[0.3, 0.8, 0.6]])))  # p = 0.3, 0.8, 0.6
    soft, hard = run("bootstrap_soft", logits[None], mask[None]), run("bootstrap_hard", logits[None], mask[None])
    p = np.array([0.3, 0.8, 0.6])
    assert soft == pytest.approx(bce(p, np.array([0.95 + 0.05 * 0.3, 0.95 + 0.05 * 0.8, 0.05 * 0.6])).mean(), rel=1e-5)
    assert hard == pytest.approx(bce(p, np.array([0.95, 1.0, 0.05])).mean(), rel=1e-5)
    assert soft != pytest.approx(hard, rel=1e-3)


def test_online_bootstrap_keeps_each_images_hardest_pixels() -> None:
    # image 0: background everywhere, so its largest logits are its hardest pixels; image 1: all car, so its smallest.
    # Image 0's six largest losses exceed all of image 1's: picking over the batch instead of per image would differ.
    logits = np.stack([np.arange(12.0).reshape(3, 4) - 2, -np.arange(12.0).reshape(3, 4) / 10])
    mask = np.stack([np.zeros((3, 4)), np.ones((3, 4))])
    per_pixel = bce(sigmoid(logits), mask)
    # ratio 0.25 of 12 pixels: 3 per image; image 0's are logits 9, 8, 7 (the last three), image 1's -1.1, -1.0, -0.9
    expected = np.concatenate([per_pixel[0].ravel()[9:], per_pixel[1].ravel()[9:]]).mean()
    assert run("online_bootstrap", logits, mask, ratio=0.25) == pytest.approx(expected, rel=1e-5)
    assert run("online_bootstrap", logits, mask, ratio=1.0) == pytest.approx(per_pixel.mean(), rel=1e-5)


def test_border_band_is_the_hand_written_ring() -> None:
    band = border_band(as_tensor(grid(SQUARE)), kernel=3)
    assert band.shape == (1, 1, 8, 10)
    np.testing.assert_array_equal(band[0, 0].numpy(), grid(RING))
    # kernel 5 grows and shrinks by two: rows 0-7 x columns 1-8 less nothing (the square shrunk by two is empty)
    wide = np.zeros((8, 10))
    wide[0:8, 1:9] = 1
    np.testing.assert_array_equal(border_band(as_tensor(grid(SQUARE)), kernel=5)[0, 0].numpy(), wide)


def test_border_band_ignores_the_image_edge() -> None:
    left = np.zeros((4, 6))
    left[:, :3] = 1  # the car touches the left, top and bottom edges: only the columns beside x = 2.5 are border
    expected = np.zeros((4, 6))
    expected[:, 2:4] = 1
    np.testing.assert_array_equal(border_band(as_tensor(left), kernel=3)[0, 0].numpy(), expected)


@pytest.mark.parametrize("kernel", [4, 0])
def test_border_kernel_must_be_odd(kernel: int) -> None:
    with pytest.raises(CarvanaError, match="odd"):
        border_band(as_tensor(grid(SQUARE)), kernel=kernel)


def test_border_weights_sum_to_the_pixel_count(batch: tuple[np.ndarray, np.ndarray]) -> None:
    _, mask = batch
    weights = border_weights(as_tensor(*mask), kernel=3, border_weight=2.0)
    np.testing.assert_allclose(weights.sum(dim=(1, 2, 3)).numpy(), [80, 80], rtol=1e-6)
    # the square's ring has 6 * 6 - 2 * 2 = 32 pixels: raw weights 3 there, 1 elsewhere, sum 80 + 2 * 32 = 144
    expected = (1 + 2 * grid(RING)) * 80 / 144
    np.testing.assert_allclose(weights[0, 0].numpy(), expected, rtol=1e-6)


def test_border_loss_matches_hand_weighted_bce_and_dice(batch: tuple[np.ndarray, np.ndarray]) -> None:
    logits, mask = batch
    logits, mask = logits[:1], mask[:1]  # the square, whose ring is written out above
    w = (1 + 2 * grid(RING)) * 80 / 144
    p = sigmoid(logits[0])
    weighted_bce = (w * bce(p, mask[0])).sum() / w.sum()
    weighted_dice = (2 * (w * p * mask[0]).sum() + 1) / ((w * p).sum() + (w * mask[0]).sum() + 1)
    got = run("border", logits, mask, kernel=3, border_weight=2.0, bce_weight=1.0, dice_weight=1.0, smooth=1.0)
    assert got == pytest.approx(weighted_bce + 1 - weighted_dice, rel=1e-5)


def test_border_dice_per_image() -> None:
    square = grid(SQUARE)
    missed = square.copy()
    missed[2, 3] = 0  # a corner of the square, in the band
    stray = square.copy()
    stray[0, 0] = 1  # far from the edge: outside the band, so it does not count
    dice = border_dice(as_tensor(square, missed, stray), as_tensor(square, square, square), kernel=3)
    # the band holds 16 - 4 = 12 car pixels; missing one leaves 11 in common: 2 * 11 / (11 + 12)
    np.testing.assert_allclose(dice.numpy(), [1.0, 22 / 23, 1.0], rtol=1e-6)
    soft = border_dice(as_tensor(square * 0.5), as_tensor(square), kernel=3)
    np.testing.assert_allclose(soft.numpy(), [2 * 6 / (6 + 12)], rtol=1e-6)


def test_unknown_name_or_argument_lists_the_valid_ones() -> None:
    with pytest.raises(CarvanaError, match="choose one of bce_dice, dice, bce, bootstrap_soft"):
        build_loss("focal")
    with pytest.raises(CarvanaError, match="takes no argument smooth: its arguments are none"):
        build_loss("dice", smooth=1.0)
    with pytest.raises(CarvanaError, match="its arguments are beta"):
        build_loss("bootstrap_hard", beta=0.9, mode="soft")
    with pytest.raises(CarvanaError, match=r"loss 'border' needs kernel, border_weight.*\(conf/loss/border.yaml\)"):
        build_loss("border", bce_weight=1.0, dice_weight=1.0, smooth=1.0)


def test_each_loss_has_one_config() -> None:
    assert sorted(path.stem for path in LOSS_CONF.glob("*.yaml")) == sorted(LOSSES)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_config_builds_its_loss(name: str, batch: tuple[np.ndarray, np.ndarray]) -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(LOSS_CONF / f"{name}.yaml"))
    assert cfg["name"] == name
    logits, mask = batch
    loss = build_loss(**cfg)(as_tensor(*logits), as_tensor(*mask))
    assert loss.shape == () and 0 < loss.item() < 10
