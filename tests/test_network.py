"""The network: every smp architecture through the same module, pretrained weights and their preprocessing."""

from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from helpers import tiny_module

from carvana import CarvanaError
from carvana.data.geometry import Geometry
from carvana.model.loading import load_module
from carvana.model.module import SegModule
from carvana.model.network import ARCHITECTURES, IMAGENET, resolve_preprocessing

PHOTO = (64, 96)  # h, w: non-square
# the encoder and input each architecture needs: DPT takes timm ViTs only; PAN's pyramid pools a 64x96 input to 0
SPECIAL = {"dpt": {"encoder_name": "tu-vit_tiny_patch16_224"}, "pan": {"input_size": [128, 192]}}


def one_step_and_predict(module: SegModule) -> torch.Tensor:
    """One optimizer step on two random 64x96 photos, then the eval logits at the photos' full size."""
    photos = torch.randint(0, 256, (2, *PHOTO, 3), dtype=torch.uint8).numpy()
    inputs = torch.stack([torch.from_numpy(module.geometry.to_input(p)[0]).permute(2, 0, 1) for p in photos])
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    module.train()
    loss = module.criterion(module(inputs), torch.ones(2, 1, *inputs.shape[-2:]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    module.eval()
    with torch.no_grad():
        return module.geometry.to_full(module(inputs), PHOTO)


@pytest.mark.parametrize("arch", sorted(smp.MODEL_ARCHITECTURES_MAPPING))
def test_every_smp_architecture_trains_and_predicts(arch: str):
    torch.manual_seed(0)
    module = tiny_module(arch=arch, encoder_weights=None, **SPECIAL.get(arch, {}))
    assert type(module.net) is smp.MODEL_ARCHITECTURES_MAPPING[arch]
    logits = one_step_and_predict(module)
    assert logits.shape == (2, 1, *PHOTO) and torch.isfinite(logits).all()


def test_simple_unet_trains_and_predicts():
    module = tiny_module(arch="simple_unet", encoder_name="simple_unet")
    assert one_step_and_predict(module).shape == (2, 1, *PHOTO)


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(CarvanaError) as err:
        tiny_module(arch="unet3d")
    assert "unet3d" in str(err.value) and all(name in str(err.value) for name in ARCHITECTURES)


def test_architecture_that_refuses_its_encoder_is_one_line():
    with pytest.raises(CarvanaError, match="model.arch=dpt.*mobilenet_v2"):
        tiny_module(arch="dpt", encoder_name="mobilenet_v2")


def test_unknown_weights_name_lists_the_encoders_weights():
    with pytest.raises(CarvanaError, match="resnet50.*imagenet, ssl, swsl"):
        tiny_module(encoder_name="resnet50", encoder_weights="instagram")


def test_no_download_without_network_is_one_line(monkeypatch: pytest.MonkeyPatch):
    """encoder_weights=imagenet offline: one line naming the key and the fix, not huggingface_hub's traceback."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fails at once instead of retrying for 30 s
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CarvanaError, match="encoder_weights=null"):
        tiny_module(encoder_name="resnet18", encoder_weights="imagenet")


def test_preprocessing_follows_the_weights(monkeypatch: pytest.MonkeyPatch):
    """preprocessing=auto: smp's hub config for smp encoders (here a caffe-style BGR one, 0..255 units), timm's
    pretrained_cfg for tu- encoders (in [0, 1] units: scaled to 0..255), ImageNet statistics without weights."""
    import carvana.model.network

    asked = []

    def hub_config(name: str, pretrained: str) -> dict:
        asked.append((name, pretrained))
        return {"input_space": "BGR", "input_range": [0, 255], "mean": [103.9, 116.8, 123.7], "std": [1, 1, 1]}

    monkeypatch.setattr(carvana.model.network, "get_preprocessing_params", hub_config)
    auto = {"name": "auto"}
    smp_pre = resolve_preprocessing(auto, "resnet50", "imagenet")
    assert asked == [("resnet50", "imagenet")]
    assert smp_pre == {"name": "resnet50.imagenet", "input_space": "BGR", "mean": [103.9, 116.8, 123.7],
                       "std": [1.0, 1.0, 1.0]}
    timm_pre = resolve_preprocessing(auto, "tu-mobilevit_xxs", "imagenet")  # timm: mean 0, std 1 (no normalisation)
    assert timm_pre["input_space"] == "RGB" and timm_pre["mean"] == [0.0] * 3 and timm_pre["std"] == [255.0] * 3
    vit = resolve_preprocessing(auto, "tu-vit_tiny_patch16_224", "imagenet")  # timm ViT: 0.5 / 0.5
    assert vit["mean"] == [127.5] * 3 and vit["std"] == [127.5] * 3
    assert resolve_preprocessing(auto, "resnet50", None) == IMAGENET
    explicit = {"name": "caffe", "input_space": "BGR", "mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0]}
    assert resolve_preprocessing(explicit, "resnet50", "imagenet") is explicit
    with pytest.raises(CarvanaError, match="preprocessing=imagenet"):
        resolve_preprocessing(auto, "resnet50", "/weights/resnet50.pth")


def test_bgr_preprocessing_reaches_the_network_in_bgr_order():
    """One pixel through a resolved BGR preprocessing: the encoder gets blue first, minus the means."""
    pre = {"name": "x", "input_space": "BGR", "mean": [100.0, 110.0, 120.0], "std": [1.0, 2.0, 4.0]}
    x = tiny_module(preprocessing=pre).normalize(torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1))
    torch.testing.assert_close(x.flatten(), torch.tensor([(30 - 100) / 1, (20 - 110) / 2, (10 - 120) / 4]))


def test_an_fpn_checkpoint_rebuilds_with_its_geometry(tmp_path: Path):
    import pytorch_lightning as pl

    module = tiny_module(arch="fpn", input_size=[32, 64])
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "fpn.ckpt")
    loaded = load_module(tmp_path / "fpn.ckpt")
    assert type(loaded.net) is smp.FPN and loaded.geometry == Geometry(input_size=[32, 64])
