"""OnnxModel: a network exported by `python -m carvana.export` predicting like a SegModule (`geometry`, `hparams`, uint8
network inputs -> logits), with onnxruntime; the hyperparameters it carries in its metadata. A full-resolution model's
graph takes any height and width that are multiples of 32, as its checkpoint does; a resizing model's only its own."""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning.utilities.parsing import AttributeDict

from carvana import CarvanaError
from carvana.data.geometry import DIVISOR, Geometry

METADATA_KEY = "carvana.hyper_parameters"


def import_onnx() -> tuple:
    """(onnx, onnxruntime), or the install hint as a CarvanaError."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise CarvanaError(f"ONNX needs the export extra ({err.name} is missing): pip install -e '.[export]'") from None
    return onnx, onnxruntime


def read_onnx_hparams(path: str | Path, key: str = "ckpt") -> dict:
    """The SegModule hyperparameters in an exported file's metadata; another file is a CarvanaError."""
    onnx, _ = import_onnx()
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
    """An exported .onnx file in place of a SegModule, run by onnxruntime on the CPU, or on CUDA where onnxruntime-gpu
    provides it and the inputs are on a GPU."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.hparams = AttributeDict(read_onnx_hparams(self.path))
        hp = self.hparams
        self.geometry = Geometry(hp.get("crop_size"), hp.get("input_size"), hp.get("boxes", False))
        self.sessions: dict[str, object] = {}  # by device type: made at the first batch, on the inputs' device

    def session(self, device: torch.device) -> object:
        """The onnxruntime session for inputs on `device`."""
        if device.type not in self.sessions:
            _, ort = import_onnx()
            providers = ["CPUExecutionProvider"]
            if device.type == "cuda":
                if "CUDAExecutionProvider" not in ort.get_available_providers():
                    print(f"warning: onnxruntime has no CUDA provider here (pip install onnxruntime-gpu): {self.path} "
                          "runs on the CPU", file=sys.stderr, flush=True)
                else:
                    providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
            self.sessions[device.type] = ort.InferenceSession(str(self.path), providers=providers)
        return self.sessions[device.type]

    def check_size(self, size: tuple[int, int], photo: str = "these photos' input") -> None:
        """Refuse a network input of `size` (h, w) the graph cannot take: a fixed side of another size, or a dynamic
        side (a multiple of 32) that is not one; a CarvanaError naming the file and `photo`."""
        expected = self.session(torch.device("cpu")).get_inputs()[0].shape[-2:]
        fits = all(got == want if isinstance(want, int) else got % DIVISOR == 0 for got, want in zip(size, expected))
        if not fits:
            wanted = "x".join(str(w) if isinstance(w, int) else f"({w})" for w in expected)
            raise CarvanaError(f"{self.path} takes network inputs of {wanted} (height x width), not "
                               f"{'x'.join(map(str, size))} ({photo}): export it again with python -m carvana.export "
                               "(any size), or predict with its checkpoint")

    def check_input(self, shape: torch.Size | tuple[int, ...]) -> None:
        """check_size for a network input of shape (..., h, w)."""
        self.check_size(tuple(shape[-2:]))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Bx(C)xhxw uint8 network inputs (geometry.to_input) -> Bx1xhxw float32 logits, on the inputs' device."""
        session = self.session(image.device)
        self.check_input(image.shape[1:])
        logits = session.run(["logits"], {"image": np.ascontiguousarray(image.cpu().numpy())})[0]
        return torch.from_numpy(logits).to(image.device)
