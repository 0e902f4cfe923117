"""SegModule: preprocessing numbers, the per-image Dice, the loss, encoder weights files, checkpoints."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_module
from omegaconf import OmegaConf

from carvana import CarvanaError
from carvana.model.loading import load_module, read_checkpoint
from carvana.model.losses import dice_per_image
from carvana.model.module import SegModule

REPO = Path(__file__).resolve().parents[1]
PIXEL_RGB = (10, 20, 30)


def preprocessing(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "preprocessing" / f"{name}.yaml"))


def one_pixel() -> torch.Tensor:
    return torch.tensor(PIXEL_RGB, dtype=torch.uint8).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def module() -> SegModule:
    torch.manual_seed(0)
    return tiny_module(encoder_weights=None)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("imagenet", ((10 - 123.675) / 58.395, (20 - 116.28) / 57.12, (30 - 103.53) / 57.375)),
        # the seed's Keras caffe mode: BGR order, mean subtracted, no scaling
        ("caffe", (30 - 103.939, 20 - 116.779, 10 - 123.68)),
        ("tf", (10 / 127.5 - 1, 20 / 127.5 - 1, 30 / 127.5 - 1)),
    ],
)
def test_normalize_each_preprocessing(name: str, expected: tuple):
    pre = preprocessing(name)
    assert pre["name"] == name
    x = tiny_module(encoder_weights=None, preprocessing=pre).normalize(one_pixel())
    assert x.shape == (1, 3, 1, 1) and x.dtype == torch.float32
    torch.testing.assert_close(x.flatten(), torch.tensor(expected, dtype=torch.float32), rtol=0, atol=1e-5)


def test_default_preprocessing_is_imagenet(module: SegModule):
    expected = tiny_module(encoder_weights=None, preprocessing=preprocessing("imagenet")).normalize(one_pixel())
    torch.testing.assert_close(module.normalize(one_pixel()), expected)


def test_dice_per_image_hand_made():
    pred = torch.tensor([[[[1, 1], [0, 0]]]], dtype=torch.float32)
    target = torch.tensor([[[[1, 0], [0, 0]]]], dtype=torch.float32)
    # 2 * 1 / (2 + 1)
    torch.testing.assert_close(dice_per_image(pred, target), torch.tensor([2 / 3]))
    full, empty = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    torch.testing.assert_close(dice_per_image(empty, empty), torch.tensor([1.0]))
    torch.testing.assert_close(dice_per_image(empty, full), torch.tensor([0.0]))
    torch.testing.assert_close(dice_per_image(full, empty), torch.tensor([0.0]))
    torch.testing.assert_close(dice_per_image(full, full), torch.tensor([1.0]))
    # soft probabilities: 2 * (0.5 + 0.25) / (0.5 + 0.25 + 0 + 0 + 1 + 1)
    probs = torch.tensor([[[[0.5, 0.25], [0.0, 0.0]]]])
    target2 = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    torch.testing.assert_close(dice_per_image(probs, target2), torch.tensor([1.5 / 2.75]))


def test_dice_is_per_image_not_over_the_batch():
    full, empty = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    pred = torch.cat([full, empty])  # a perfect image, then an empty prediction of a full mask
    target = torch.cat([full, full])
    per_image = dice_per_image(pred, target)
    assert per_image.shape == (2,)
    torch.testing.assert_close(per_image, torch.tensor([1.0, 0.0]))
    assert per_image.mean().item() == pytest.approx(0.5)
    batch_wide = 2 * (pred * target).sum() / (pred.sum() + target.sum())
    assert batch_wide.item() == pytest.approx(2 / 3)


def test_dice_per_image_keeps_height_and_width_apart():
    pred = torch.zeros(1, 1, 2, 3)
    pred[0, 0, 0, :] = 1  # the top row
    target = pred.clone()
    assert dice_per_image(pred, target).item() == pytest.approx(1.0)
    assert dice_per_image(pred, target.flip(-2)).item() == pytest.approx(0.0)


def hand_loss(
    logits: torch.Tensor, mask: torch.Tensor, bce_weight: float = 0.2, dice_weight: float = 0.8
) -> torch.Tensor:
    """0.2 BCE + 0.8 (1 - soft Dice), smp's binary DiceLoss: one Dice over the whole batch, smooth 0, eps 1e-7."""
    bce = F.binary_cross_entropy_with_logits(logits, mask)
    probs = logits.sigmoid()
    dice = 2 * (probs * mask).sum() / (probs.sum() + mask.sum()).clamp_min(1e-7)
    dice_loss = (1 - dice) * (mask.sum() > 0)  # smp gives no Dice loss for a batch without a positive pixel
    return bce_weight * bce + dice_weight * dice_loss


def test_loss_against_hand_computation(module: SegModule):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 12, generator=gen) * 3
    mask = (torch.rand(3, 1, 8, 12, generator=gen) > 0.6).float()
    torch.testing.assert_close(module.criterion(logits, mask), hand_loss(logits, mask))
    # a fixed value, so that both sides cannot drift together
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 1.0]]]])
    mask = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    p = torch.sigmoid(logits)
    bce = (
        -(
            torch.log(1 - p[0, 0, 0, 0])
            + torch.log(p[0, 0, 0, 1])
            + torch.log(1 - p[0, 0, 1, 0])
            + torch.log(p[0, 0, 1, 1])
        )
        / 4
    )
    dice = 2 * (p[0, 0, 0, 1] + p[0, 0, 1, 1]) / (p.sum() + 2)
    torch.testing.assert_close(module.criterion(logits, mask), 0.2 * bce + 0.8 * (1 - dice))


def test_loss_weights_and_empty_masks():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 4, 6, generator=gen)
    mask = (torch.rand(2, 1, 4, 6, generator=gen) > 0.5).float()
    only_bce = tiny_module(encoder_weights=None, loss={"name": "bce_dice", "bce_weight": 1.0, "dice_weight": 0.0})
    torch.testing.assert_close(only_bce.criterion(logits, mask), F.binary_cross_entropy_with_logits(logits, mask))
    empty = torch.zeros_like(mask)
    torch.testing.assert_close(only_bce.criterion(logits, empty), hand_loss(logits, empty, 1.0, 0.0))
    torch.testing.assert_close(tiny_module(encoder_weights=None).criterion(logits, empty), hand_loss(logits, empty))


def test_forward_shape_non_square(module: SegModule):
    image = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        logits = module.eval()(image)
    assert logits.shape == (2, 1, 64, 96)


def test_unknown_encoder():
    with pytest.raises(CarvanaError, match="nosuchnet"):
        tiny_module(encoder_name="nosuchnet")


def test_encoder_weights_from_a_local_file(module: SegModule, tmp_path: Path):
    path = tmp_path / "mobilenet_v2_encoder.pth"
    torch.save(module.net.encoder.state_dict(), path)
    torch.manual_seed(1)
    fresh = tiny_module(encoder_weights=None)
    loaded = tiny_module(encoder_weights=str(path))
    key = "features.0.0.weight"
    assert not torch.equal(fresh.net.encoder.state_dict()[key], module.net.encoder.state_dict()[key])
    for name, tensor in module.net.encoder.state_dict().items():
        assert torch.equal(loaded.net.encoder.state_dict()[name], tensor), name


def test_encoder_weights_file_of_another_network(tmp_path: Path):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CarvanaError, match="other.pth"):
        tiny_module(encoder_weights=str(path))


def test_missing_encoder_weights_file(tmp_path: Path):
    with pytest.raises(CarvanaError, match="nothere.pth"):
        tiny_module(encoder_weights=str(tmp_path / "nothere.pth"))


def test_missing_encoder_weights_path_without_suffix(tmp_path: Path):
    with pytest.raises(CarvanaError, match="weights"):
        tiny_module(encoder_weights=str(tmp_path / "encoder_weights"))


def test_read_checkpoint_refuses_other_files(tmp_path: Path):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(CarvanaError, match="notes.ckpt"):
        read_checkpoint(text)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"a": 1}, foreign)
    with pytest.raises(CarvanaError, match="foreign.ckpt"):
        read_checkpoint(foreign)
    with pytest.raises(CarvanaError, match="nothere.ckpt"):
        read_checkpoint(tmp_path / "nothere.ckpt")
    with pytest.raises(CarvanaError, match="foreign.ckpt"):
        load_module(foreign)


def test_checkpoint_of_a_real_training(trained_run: dict):
    ckpt = torch.load(trained_run["ckpt"], map_location="cpu", weights_only=True)  # torch >= 2.6's default
    hp = ckpt["hyper_parameters"]
    assert hp["encoder_name"] == "mobilenet_v2"
    assert hp["encoder_weights"] is None
    assert hp["preprocessing"] == preprocessing("imagenet")
    assert type(hp["preprocessing"]) is dict and type(hp["decoder_channels"]) in (list, tuple)
    assert read_checkpoint(trained_run["ckpt"])["state_dict"].keys() == ckpt["state_dict"].keys()


def test_load_module_in_a_fresh_process(trained_run: dict):
    """A checkpoint alone rebuilds the model in a new interpreter (no config, no pickled OmegaConf objects)."""
    key = "net.segmentation_head.0.weight"
    code = (
        "import sys, torch\n"
        "from carvana.model.loading import load_module\n"
        "m = load_module(sys.argv[1])\n"
        "assert not m.training\n"
        "with torch.no_grad():\n"
        "    out = m(torch.zeros(1, 3, 64, 96, dtype=torch.uint8))\n"
        f"print(m.hparams.encoder_name, m.hparams.preprocessing['name'], tuple(out.shape), "
        f"repr(m.state_dict()['{key}'].sum().item()), sep='|')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(trained_run["ckpt"])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, pre, shape, total = proc.stdout.strip().splitlines()[-1].split("|")
    assert (name, pre, shape) == ("mobilenet_v2", "imagenet", "(1, 1, 64, 96)")
    saved = torch.load(trained_run["ckpt"], map_location="cpu", weights_only=True)["state_dict"][key]
    assert float(total) == saved.sum().item()
