"""python -m carvana.export: a checkpoint's whole network as ONNX, its preprocessing inside, checked at once against
PyTorch on a photo (conf/export.yaml). predict.py runs the file like a checkpoint (ckpt=model.onnx,
carvana.model.onnx).

The graph: `image` Bx(3+k)xhxw uint8 RGB (+ k stacked masks), the network input as carvana.data.geometry makes it (the
photo resized with cv2 area to the checkpoint's input size, or padded at the bottom and right to a multiple of 32,
e.g. 1280x1918 -> 1280x1920) -> `logits` and `probs` (their sigmoid), both Bx1xhxw float32; the batch axis is
dynamic, h and w are fixed. predict.py reads `logits`: it upsamples logits to the photo's size before the sigmoid, as
it does for checkpoints (upsampled probabilities differ from the sigmoid of upsampled logits); a deployment without
this project reads `probs`. The metadata (`carvana.hyper_parameters`, JSON) holds the checkpoint's hyperparameters:
geometry, threshold, preprocessing, provenance. photo= (default: the first photo of the checkpoint's data.root/test)
is predicted both ways; the export is refused, and nothing written, when the probabilities at full size differ by
more than 1e-3 or the masks in more than 1e-4 of their pixels.
"""

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from carvana import CarvanaError
from carvana.cli import compose, conf_value, run_or_exit
from carvana.data.geometry import padded_size
from carvana.data.io import read_image
from carvana.data.layout import list_images
from carvana.files import atomic_path, check_writable_dir
from carvana.model.loading import load_module
from carvana.model.module import SegModule
from carvana.model.onnx import METADATA_KEY, OnnxModel, import_onnx

OUTPUTS = ("logits", "probs")
MAX_PROB_DIFF = 1e-3  # the export's refusal limits, at the photo's full size
MAX_MASK_DIFF = 1e-4  # share of mask pixels (probs > threshold) that differ
PHOTO_SIZE = (1280, 1918)  # Kaggle's photos: what a full-size model is exported for when its checkpoint does not say


class _Graph(torch.nn.Module):
    """SegModule.forward (preprocessing inside) with the sigmoid beside the logits: the exported graph."""

    def __init__(self, module: SegModule):
        super().__init__()
        self.module = module

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.module(image)
        return logits, torch.sigmoid(logits)


def photo_size_of(hparams: dict) -> tuple[int, int]:
    """The (H, W) of the photos a checkpoint predicts: its training photos' size, else Kaggle's."""
    size = (hparams.get("data") or {}).get("image_size")
    return tuple(int(s) for s in size) if size else PHOTO_SIZE


def export_onnx(module: SegModule, path: Path) -> None:
    """Write `module`'s network with its preprocessing as ONNX: image Bx(C)xhxw uint8 -> logits, probs Bx1xhxw
    float32, batch dynamic, at the geometry's input (h, w); its hyperparameters as JSON in the metadata."""
    onnx, _ = import_onnx()
    hparams = dict(module.hparams)
    height, width = module.geometry.input_shape(photo_size_of(hparams))
    example = torch.zeros((2, hparams["in_channels"], height, width), dtype=torch.uint8)  # 2: not specialised to 1
    name = f"model.arch={hparams['arch']} with model.encoder_name={hparams['encoder_name']}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Graph(module.eval()), (example,), str(path), input_names=["image"],
                              output_names=list(OUTPUTS), dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
                              dynamo=True, external_data=False, verbose=False)
    except Exception as err:  # noqa: BLE001 -- torch.export and onnxscript raise many types for an unsupported op
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise CarvanaError(f"{name} cannot be exported to ONNX by torch {torch.__version__} ({type(err).__name__}: "
                           f"{first}): predict with the checkpoint instead") from None
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {
        METADATA_KEY: json.dumps(hparams), "carvana.outputs": ", ".join(OUTPUTS),
        "carvana.input": f"image Bx{hparams['in_channels']}x{height}x{width} uint8 RGB"})
    model.producer_name = "carvana.export"
    onnx.save(model, str(path))


def parity(module: SegModule, model: OnnxModel, photo: Path) -> dict[str, float]:
    """PyTorch against onnxruntime on one photo at its full size -> max |probs difference| (also of the `probs`
    output at the input size) and the share of mask pixels (probs > threshold) that differ."""
    image = read_image(photo)
    size = image.shape[:2]
    box = (0, size[0], 0, size[1])  # a car-box model sees the whole photo as its box: the check is of the network
    extra = [np.zeros(size, np.uint8)] * (module.hparams.in_channels - 3)  # stacked masks: empty
    net_input, stacked = module.geometry.to_input(image, extra, box)
    x = torch.from_numpy(np.dstack([net_input, *stacked]).transpose(2, 0, 1).copy())[None]
    boxes = torch.tensor([box])
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


def export(ckpt: str | Path, output: str | Path, photo: str | Path | None = None) -> dict:
    """Export a checkpoint to `output` (.onnx) and check it on `photo` -> the parity figures; nothing is written when
    the export or its check fails."""
    output = Path(output)
    if output.suffix != ".onnx":
        raise CarvanaError(f"output={output}: name it *.onnx (predict.py tells ONNX files by their suffix)")
    if not output.parent.is_dir():
        raise CarvanaError(f"output={output}: no folder {output.parent}")
    check_writable_dir(output.parent, "output")  # a read-only folder is that, not a network the exporter cannot take
    module = load_module(ckpt, {"channels_last": False, "compile": False})  # speed switches mean nothing in ONNX
    photo = Path(photo) if photo else default_photo(module.hparams)
    size = read_image(photo).shape[:2]  # a photo that cannot be read, or does not fit, fails now, not after the export
    if module.geometry.input_size is None and padded_size(*size) != padded_size(*photo_size_of(module.hparams)):
        height, width = photo_size_of(module.hparams)
        raise CarvanaError(f"photo={photo} is {size[1]}x{size[0]}: this full-size model predicts photos of "
                           f"{width}x{height}")
    with atomic_path(output) as tmp:
        export_onnx(module, tmp)
        figures = parity(module, OnnxModel(tmp), photo)
        # `not <=`: a NaN fails too
        if not (figures["max_prob_diff"] <= MAX_PROB_DIFF and figures["mask_diff_share"] <= MAX_MASK_DIFF):
            raise CarvanaError(f"the ONNX model differs from the checkpoint on {photo}: max_prob_diff="
                               f"{figures['max_prob_diff']:.2e} (limit {MAX_PROB_DIFF}), mask_diff_share="
                               f"{figures['mask_diff_share']:.2e} (limit {MAX_MASK_DIFF}): nothing written")
    height, width = module.geometry.input_shape(photo_size_of(module.hparams))
    return {**figures, "photo": photo, "input": f"Bx{module.hparams.in_channels}x{height}x{width}"}


def main(argv: list[str] | None = None) -> None:
    """Export and check; print the figures and the file; expected errors: one line, exit status 2."""
    def work(words: list[str]) -> tuple[dict, dict]:
        cfg = compose("export", words)
        for key in ("ckpt", "output"):
            if not cfg[key]:
                raise CarvanaError(f"{key}= is required: python -m carvana.export ckpt=last.ckpt output=model.onnx")
        return cfg, export(cfg["ckpt"], cfg["output"], cfg["photo"])

    cfg, figures = run_or_exit(sys.argv[1:] if argv is None else argv, "export", work)
    print(f"parity on {figures['photo']}: max_prob_diff={figures['max_prob_diff']:.2e} (limit {MAX_PROB_DIFF}) "
          f"mask_diff_share={figures['mask_diff_share']:.2e} (limit {MAX_MASK_DIFF})")
    print(f"onnx={cfg['output']} image={figures['input']} uint8 -> logits, probs", flush=True)


if __name__ == "__main__":
    main()
