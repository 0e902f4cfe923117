"""ONNX export of a checkpoint's whole network, its preprocessing inside, checked at once against PyTorch on a photo;
and OnnxModel, an exported file predicting in predict.py like a SegModule (ckpt=model.onnx), with onnxruntime.

    python -m carvana.export ckpt=PATH output=model.onnx [photo=PATH]

The graph: `image` Bx(3+k)xhxw uint8 RGB (+ k stacked masks), the network input as carvana.geometry makes it (the
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
from pytorch_lightning.utilities.parsing import AttributeDict

from carvana import CarvanaError
from carvana.cli import parse_words, run_or_exit
from carvana.data import list_images
from carvana.geometry import Geometry, padded_size
from carvana.io import atomic_path, read_image
from carvana.module import SegModule, load_module, read_checkpoint

METADATA_KEY = "carvana.hyper_parameters"
OUTPUTS = ("logits", "probs")
MAX_PROB_DIFF = 1e-3  # the export's refusal limits, at the photo's full size
MAX_MASK_DIFF = 1e-4  # share of mask pixels (probs > threshold) that differ
PHOTO_SIZE = (1280, 1918)  # Kaggle's photos: what a full-size model is exported for when its checkpoint does not say
DEFAULTS = {"ckpt": None, "output": None, "photo": None}


def _import_onnx() -> tuple:
    """(onnx, onnxruntime), or the install hint as a CarvanaError."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise CarvanaError(f"ONNX needs the export extra ({err.name} is missing): pip install -e '.[export]'") from None
    return onnx, onnxruntime


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
    onnx, _ = _import_onnx()
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


def read_onnx_hparams(path: str | Path, key: str = "ckpt") -> dict:
    """The SegModule hyperparameters in an exported file's metadata; another file is a CarvanaError."""
    onnx, _ = _import_onnx()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 -- protobuf's DecodeError and friends
        raise CarvanaError(f"{key}={path} is not a readable ONNX model ({type(err).__name__})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise CarvanaError(f"{key}={path} is not an ONNX model of this project (no {METADATA_KEY} metadata saying its "
                           "geometry): export it with python -m carvana.export")
    return json.loads(props[METADATA_KEY])


class OnnxModel(torch.nn.Module):
    """An exported .onnx file in place of a SegModule: `geometry`, `hparams`, uint8 inputs -> logits, run by
    onnxruntime on the CPU, or on CUDA where onnxruntime-gpu provides it and the inputs are on a GPU."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.hparams = AttributeDict(read_checkpoint(self.path, onnx=True)["hyper_parameters"])
        hp = self.hparams
        self.geometry = Geometry(hp.get("crop_size"), hp.get("input_size"), hp.get("boxes", False))
        self.sessions: dict[str, object] = {}  # by device type: made at the first batch, on the inputs' device

    def session(self, device: torch.device) -> object:
        """The onnxruntime session for inputs on `device`."""
        if device.type not in self.sessions:
            _, ort = _import_onnx()
            providers = ["CPUExecutionProvider"]
            if device.type == "cuda":
                if "CUDAExecutionProvider" not in ort.get_available_providers():
                    print(f"warning: onnxruntime has no CUDA provider here (pip install onnxruntime-gpu): {self.path} "
                          "runs on the CPU", file=sys.stderr, flush=True)
                else:
                    providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
            self.sessions[device.type] = ort.InferenceSession(str(self.path), providers=providers)
        return self.sessions[device.type]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Bx(C)xhxw uint8 network inputs (geometry.to_input) -> Bx1xhxw float32 logits, on the inputs' device."""
        session = self.session(image.device)
        expected = session.get_inputs()[0].shape[1:]
        if list(image.shape[1:]) != list(expected):
            raise CarvanaError(f"{self.path} takes network inputs of {'x'.join(map(str, expected))} (CxHxW), these "
                               f"photos make {'x'.join(map(str, image.shape[1:]))}: export it again for photos of "
                               "this size")
        logits = session.run(["logits"], {"image": np.ascontiguousarray(image.cpu().numpy())})[0]
        return torch.from_numpy(logits).to(image.device)


def check_onnx_run(models: list, world_size: int) -> None:
    """Refuse ONNX files in several processes (DDP): onnxruntime takes the machine's cores or one GPU by itself."""
    onnx_models = [m for m in models if isinstance(m, OnnxModel)]
    if onnx_models and world_size > 1:
        raise CarvanaError(f"{onnx_models[0].path}: ONNX models predict in one process (onnxruntime takes the "
                           f"machine's cores or one GPU), not {world_size}: use trainer=cpu or trainer=gpu")


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
    root = Path((hparams.get("data") or {}).get("root") or "data/carvana")
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
    """Parse key=value words, export and check; print the figures and the file; expected errors: one line, exit 2."""
    def work(words: list[str]) -> tuple[dict, dict]:
        cfg = parse_words(words, DEFAULTS, "ckpt=last.ckpt output=model.onnx", {})
        for key in ("ckpt", "output"):
            if not cfg[key]:
                raise CarvanaError(f"{key}= is required: python -m carvana.export ckpt=last.ckpt output=model.onnx")
        return cfg, export(cfg["ckpt"], cfg["output"], cfg["photo"])

    cfg, figures = run_or_exit(sys.argv[1:] if argv is None else argv, __doc__, work)
    print(f"parity on {figures['photo']}: max_prob_diff={figures['max_prob_diff']:.2e} (limit {MAX_PROB_DIFF}) "
          f"mask_diff_share={figures['mask_diff_share']:.2e} (limit {MAX_MASK_DIFF})")
    print(f"onnx={cfg['output']} image={figures['input']} uint8 -> logits, probs", flush=True)


if __name__ == "__main__":
    main()
