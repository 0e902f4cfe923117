"""The work of python -m carvana.export (__main__.py): a checkpoint's whole network as ONNX, its preprocessing
inside, checked at once against PyTorch on a photo (conf/export.yaml). predict.py runs the file like a checkpoint
(ckpt=model.onnx, carvana.model.onnx).

The graph: `image` Bx(3+k)xhxw uint8 RGB (+ k stacked masks), the network input as carvana.data.geometry makes it (the
photo resized with cv2 area to the checkpoint's input size, or padded at the bottom and right to a multiple of 32,
e.g. 1280x1918 -> 1280x1920) -> `logits` and `probs` (their sigmoid), both Bx1xhxw float32. The batch axis is dynamic;
so are h and w, as multiples of 32, for a model that sees photos at their own resolution (data.crop_size, or the whole
photo padded): it predicts photos of any size, as its checkpoint does; a model that resizes photos takes its input size
only (every photo is resized to it). predict.py reads `logits`: it upsamples logits to the photo's size before the
sigmoid, as it does for checkpoints (upsampled probabilities differ from the sigmoid of upsampled logits); a deployment
without this project reads `probs`. The metadata (`carvana.hyper_parameters`, JSON) holds the checkpoint's
hyperparameters: geometry, threshold, preprocessing, provenance. photo= (default: the first photo of the checkpoint's
data.root/test) is predicted both ways, at its own size and (dynamic sizes) resized to a second one; the export is
refused, and nothing written, when the probabilities at full size differ by more than 1e-3 or the masks in more than
1e-4 of their pixels.

format=smp writes the network alone in segmentation_models_pytorch's own format instead, a folder (save_pretrained:
config.json, model.safetensors, README.md) with carvana.json beside: the preprocessing and geometry a user applies
without this project, the threshold, and the checkpoint's hyperparameters. The folder is written under a temporary name;
smp.from_pretrained rebuilds the network from it there, and only when its logits on the photo, preprocessed as
carvana.json says, are the checkpoint's within 1e-5 is it put in place (replacing an earlier export; a folder holding
anything else is refused before the work).
"""

import contextlib
import io
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch

from carvana import CarvanaError
from carvana.cli import conf_value
from carvana.data.geometry import DIVISOR, padded_size
from carvana.data.io import read_image
from carvana.data.layout import list_images
from carvana.files import atomic_dir, atomic_path, check_writable_dir
from carvana.model.loading import load_module
from carvana.model.module import SegModule
from carvana.model.onnx import METADATA_KEY, OnnxModel, import_onnx

FORMATS = ("onnx", "smp")
OUTPUTS = ("logits", "probs")
MAX_PROB_DIFF = 1e-3  # the export's refusal limits, at the photo's full size
MAX_MASK_DIFF = 1e-4  # share of mask pixels (probs > threshold) that differ
MAX_LOGIT_DIFF = 1e-5  # format=smp: the same network in PyTorch both ways, only the files between them
SMP_FILES = ("README.md", "carvana.json", "config.json", "model.safetensors")  # an earlier format=smp export's files


class _Graph(torch.nn.Module):
    """SegModule.forward (preprocessing inside) with the sigmoid beside the logits: the exported graph."""

    def __init__(self, module: SegModule):
        super().__init__()
        self.module = module

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.module(image)
        return logits, torch.sigmoid(logits)


def dynamic_sizes(module: SegModule) -> bool:
    """Whether the graph takes any h and w (multiples of 32): a model that sees photos at their own resolution."""
    return module.geometry.input_size is None


def input_text(module: SegModule, shape: tuple[int, int]) -> str:
    """The graph's input as a user reads it: Bx3xHxW (multiples of 32) or Bx3x64x96."""
    channels = module.hparams["in_channels"]
    return f"Bx{channels}xHxW" if dynamic_sizes(module) else f"Bx{channels}x{shape[0]}x{shape[1]}"


def export_onnx(module: SegModule, path: Path, example: torch.Tensor) -> None:
    """Write `module`'s network with its preprocessing as ONNX: image Bx(C)xhxw uint8 -> logits, probs Bx1xhxw
    float32, batch dynamic, h and w too (multiples of 32) where the geometry allows; hyperparameters in the metadata."""
    onnx, _ = import_onnx()
    hparams = dict(module.hparams)
    example = torch.cat([example, example])  # batch 2: the batch axis is not specialised to 1
    axes = {0: torch.export.Dim("batch")}
    if dynamic_sizes(module):  # 32 * a dimension: smp's encoders need sides divisible by 32 (OnnxModel refuses others)
        axes.update({2: 32 * torch.export.Dim("h32", min=1), 3: 32 * torch.export.Dim("w32", min=1)})
    name = f"model.arch={hparams['arch']} with model.encoder_name={hparams['encoder_name']}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Graph(module.eval()), (example,), str(path), input_names=["image"],
                              output_names=list(OUTPUTS), dynamic_shapes={"image": axes}, dynamo=True,
                              external_data=False, verbose=False)
    except Exception as err:  # noqa: BLE001 -- torch.export and onnxscript raise many types for an unsupported op
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise CarvanaError(f"{name} cannot be exported to ONNX by torch {torch.__version__} ({type(err).__name__}: "
                           f"{first}): predict with the checkpoint instead") from None
    model = onnx.load(str(path))
    sides = " (H, W: multiples of 32)" if dynamic_sizes(module) else ""
    onnx.helper.set_model_props(model, {
        METADATA_KEY: json.dumps(hparams), "carvana.outputs": ", ".join(OUTPUTS),
        "carvana.input": f"image {input_text(module, example.shape[2:])} uint8 RGB{sides}"})
    model.producer_name = "carvana.export"
    onnx.save(model, str(path))


def network_input(module: SegModule, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor]:
    """An HxWx3 uint8 photo -> (its 1x(3+k)xhxw uint8 network input, its (H, W), its box as a 1x4 tensor: the whole
    photo)."""
    size = image.shape[:2]
    box = (0, size[0], 0, size[1])  # a car-box model sees the whole photo as its box: the check is of the network
    extra = [np.zeros(size, np.uint8)] * (module.hparams.in_channels - 3)  # stacked masks: empty
    net_input, stacked = module.geometry.to_input(image, extra, box)
    x = torch.from_numpy(np.dstack([net_input, *stacked]).transpose(2, 0, 1).copy())[None]
    return x, size, torch.tensor([box])


def parity_photos(module: SegModule, photo: Path) -> list[np.ndarray]:
    """The photo, and for dynamic sizes the photo resized so that the network input has another h and w (3/4 of its
    sides, or 3/2 for a photo too small for that): the sizes the export is checked at."""
    image = read_image(photo)
    if not dynamic_sizes(module):
        return [image]
    height, width = image.shape[:2]
    other = (height * 3 // 4, width * 3 // 4)
    if min(other) < DIVISOR or padded_size(*other) == padded_size(height, width):
        other = (height * 3 // 2, width * 3 // 2)
    return [image, cv2.resize(image, (other[1], other[0]), interpolation=cv2.INTER_AREA)]


def parity(module: SegModule, model: OnnxModel, image: np.ndarray) -> dict[str, float]:
    """PyTorch against onnxruntime on one photo at its full size -> max |probs difference| (also of the `probs`
    output at the input size) and the share of mask pixels (probs > threshold) that differ."""
    x, size, boxes = network_input(module, image)
    with torch.inference_mode():
        logits = module(x)
        ours = module.geometry.to_full(logits, size, boxes).sigmoid()
        theirs = model.geometry.to_full(model(x), size, boxes).sigmoid()
        probs_out = model.session(x.device).run(["probs"], {"image": x.numpy()})[0]  # a deployment's output
        small = float(np.abs(probs_out - logits.sigmoid().numpy()).max())
    cut = module.hparams.threshold
    return {"max_prob_diff": max(float((ours - theirs).abs().max()), small),
            "mask_diff_share": float(((ours > cut) != (theirs > cut)).float().mean())}


def default_photo(hparams: dict) -> Path:
    """The first photo of the checkpoint's data.root/test (else its training photos): what the export checks on."""
    root = Path((hparams.get("data") or {}).get("root") or conf_value("data/carvana", "root"))
    for folder in (root / "test", root / (hparams.get("data") or {}).get("image_dir", "train")):
        if folder.is_dir() and list_images(folder):
            return list_images(folder)[0]
    raise CarvanaError(f"no photo to check the export on in {root}/test (the checkpoint's data.root): give photo=PATH")


def smp_metadata(module: SegModule) -> dict:
    """carvana.json of format=smp: what a user does to a photo, without this project, before and after the network."""
    hparams = json.loads(json.dumps(dict(module.hparams)))  # plain JSON values, as the ONNX metadata has them
    pre, geometry = hparams["preprocessing"], module.geometry
    return {
        "about": "logits = smp.from_pretrained(this folder)(x): x is Bx(3+stacked_masks)xhxw float32, the photo's "
                 "uint8 RGB pixels in input_space order, (x - mean) / std, at the geometry's size (pad: the bottom and "
                 "right padded with 0 to a multiple of divisor; resize: cv2 area to input_size; boxes: the car's box "
                 "resized to input_size); logits back at the photo's size (pad: cropped; resize: bilinear); "
                 "mask = sigmoid(logits) > threshold",
        "input_space": pre["input_space"], "mean": pre["mean"], "std": pre["std"],  # 0..255 units
        "stacked_masks": hparams["in_channels"] - 3,  # probability masks 0..255 after the colours: x / 127.5 - 1
        "geometry": "boxes" if geometry.boxes else "resize" if geometry.input_size else "pad",
        "input_size": list(geometry.input_size) if geometry.input_size else None, "divisor": DIVISOR,
        "threshold": hparams["threshold"], "hyper_parameters": hparams,
    }


def smp_input(meta: dict, image: np.ndarray) -> torch.Tensor:
    """Bx(3+k)xhxw uint8 network inputs -> the smp network's float32 input, from carvana.json alone (as a user
    without this project computes it)."""
    x = image.astype(np.float32)
    rgb, masks = x[:, :3], x[:, 3:]
    if meta["input_space"] == "BGR":
        rgb = rgb[:, ::-1]
    mean, std = (np.array(meta[key], np.float32).reshape(1, -1, 1, 1) for key in ("mean", "std"))
    return torch.from_numpy(np.ascontiguousarray(np.concatenate([(rgb - mean) / std, masks / 127.5 - 1], 1)))


def write_smp(module: SegModule, output: Path, photo: Path) -> dict[str, float]:
    """Write the network with save_pretrained and carvana.json into a temporary folder, rebuild it there with
    smp.from_pretrained, and put the folder at `output` only if its logits on `photo` are the checkpoint's."""
    with atomic_dir(output) as tmp:
        module.net.save_pretrained(tmp, dataset="Carvana Image Masking Challenge")
        (tmp / "carvana.json").write_text(json.dumps(smp_metadata(module), indent=2) + "\n")
        with contextlib.redirect_stdout(io.StringIO()):  # huggingface_hub prints "Loading weights from local ..."
            net = smp.from_pretrained(str(tmp)).eval()
        x, _, _ = network_input(module, read_image(photo))
        with torch.inference_mode():
            diff = float((module(x) - net(smp_input(json.loads((tmp / "carvana.json").read_text()), x.numpy())))
                         .abs().max())
        if not diff <= MAX_LOGIT_DIFF:  # `not <=`: a NaN fails too
            raise CarvanaError(f"the smp folder's network differs from the checkpoint on {photo}: max_logit_diff="
                               f"{diff:.2e} (limit {MAX_LOGIT_DIFF}): nothing written")
    return {"max_logit_diff": diff}


def write_onnx(module: SegModule, output: Path, photo: Path) -> dict:
    """Write the ONNX file through a temporary name, kept only if it predicts `photo` as the checkpoint does, at every
    size of parity_photos."""
    images = parity_photos(module, photo)
    with atomic_path(output) as tmp:
        export_onnx(module, tmp, network_input(module, images[0])[0])
        model = OnnxModel(tmp)
        checks = [parity(module, model, image) for image in images]
        figures = {key: max(c[key] for c in checks) for key in checks[0]}
        sizes = ", ".join(f"{i.shape[0]}x{i.shape[1]}" for i in images)
        # `not <=`: a NaN fails too
        if not (figures["max_prob_diff"] <= MAX_PROB_DIFF and figures["mask_diff_share"] <= MAX_MASK_DIFF):
            raise CarvanaError(f"the ONNX model differs from the checkpoint on {photo} at {sizes} (height x width): "
                               f"max_prob_diff={figures['max_prob_diff']:.2e} (limit {MAX_PROB_DIFF}), mask_diff_share="
                               f"{figures['mask_diff_share']:.2e} (limit {MAX_MASK_DIFF}): nothing written")
    return {**figures, "sizes": sizes}


def check_output(output: Path, format: str) -> None:
    """Refuse an output the format cannot write, before the checkpoint is loaded."""
    if format not in FORMATS:
        raise CarvanaError(f"format={format}: choose one of {', '.join(FORMATS)}")
    if format == "onnx" and output.suffix != ".onnx":
        raise CarvanaError(f"output={output}: name it *.onnx (predict.py tells ONNX files by their suffix)")
    if format == "onnx" and output.is_dir():
        raise CarvanaError(f"output={output} is a folder: name a file (e.g. output={output / 'model.onnx'})")
    if format == "smp":
        if output.name in ("", "..") or output.is_file():
            raise CarvanaError(f"output={output}: format=smp writes a folder: name a new one (e.g. output=model_smp)")
        check_smp_folder(output)
    if not output.parent.is_dir():
        raise CarvanaError(f"output={output}: no folder {output.parent}")
    check_writable_dir(output.parent, "output")  # a read-only folder is that, not a network the exporter cannot take


def check_smp_folder(output: Path) -> None:
    """Refuse a folder holding anything but an earlier export's files: replacing it would delete them."""
    if not output.is_dir() or not any(output.iterdir()):
        return
    others = sorted(p.name + ("/" if p.is_dir() else "") for p in output.iterdir()
                    if p.name not in SMP_FILES or not p.is_file())
    if others or not (output / "carvana.json").is_file():
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "") if others else "no carvana.json"
        raise CarvanaError(f"output={output} holds files that are not an earlier export's ({shown}), which replacing "
                           "it would delete: choose a new or empty folder")


def choose_parity_photo(module: SegModule, photo: str | Path | None) -> Path:
    """The photo to check the export on, read now: one that cannot be read fails before the export."""
    photo = Path(photo) if photo else default_photo(module.hparams)
    read_image(photo)
    return photo


def export(ckpt: str | Path, output: str | Path, photo: str | Path | None = None, format: str = "onnx") -> dict:
    """Export a checkpoint to `output` (format=onnx: a .onnx file; smp: a folder of segmentation_models_pytorch) and
    check it on `photo` -> the parity figures; nothing is written when the export or its check fails."""
    output = Path(output)
    check_output(output, format)
    module = load_module(ckpt, {"channels_last": False, "compile": False})  # speed switches mean nothing exported
    arch = module.hparams.arch
    if format == "smp" and arch not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise CarvanaError(f"model.arch={arch} is not a segmentation_models_pytorch network: export it with "
                           "format=onnx")
    photo = choose_parity_photo(module, photo)
    figures = (write_smp if format == "smp" else write_onnx)(module, output, photo)
    shape = module.geometry.input_shape(read_image(photo).shape[:2])
    return {**figures, "photo": photo, "input": input_text(module, shape)}
