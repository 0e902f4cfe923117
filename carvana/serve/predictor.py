"""The service's model: the checkpoints (or ONNX files) predict.py loads, each photo made into the network inputs
PredictDataset makes, and Ensemble.predict_step as predict.py's Trainer runs it (inference mode, its precision, on its
device) -> the photo's HxW probs8, the bytes predict.py writes."""

import contextlib
import os
from pathlib import Path

import numpy as np
import torch

from carvana import CarvanaError
from carvana.cli import check_threshold
from carvana.data.dataset import to_tensor
from carvana.export import photo_size_of
from carvana.hardware import trainer_kwargs
from carvana.model.loading import load_models
from carvana.model.tta import TTAS, check_tta
from carvana.predict.ensemble import Ensemble
from carvana.predict.run import find_checkpoints
from carvana.predict.writer import CUTOUT_ALPHAS, HostProbs8

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}  # Lightning's autocast dtypes


def resolve_device(device: str, precision: str) -> tuple[torch.device, str]:
    """device= and precision= -> (the torch device, the precision predict.py's trainer=auto would take there)."""
    if device not in DEVICES:
        raise CarvanaError(f"device={device}: choose one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise CarvanaError(f"device=cuda, but torch sees no GPU here (torch {torch.__version__}): use device=auto")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    precision = trainer_kwargs({"accelerator": "gpu" if cuda else "cpu", "precision": precision})["precision"]
    if precision not in PRECISIONS:
        raise CarvanaError(f"precision={precision}: choose auto or one of {', '.join(PRECISIONS)}")
    return torch.device("cuda:0" if cuda else "cpu"), precision


class Predictor:
    """Loads the models of cfg (conf/serve.yaml) and predicts batches of photos of one size, as predict.py does."""

    def __init__(self, cfg: dict):
        check_tta(cfg["tta"], "tta")
        check_threshold(cfg["threshold"])
        if cfg["cutout_alpha"] not in CUTOUT_ALPHAS:
            raise CarvanaError(f"cutout_alpha={cfg['cutout_alpha']}: choose {' or '.join(CUTOUT_ALPHAS)}")
        self.device, self.precision = resolve_device(cfg["device"], cfg["precision"])
        self.threads = cfg["threads"] or len(os.sched_getaffinity(0))
        self.ckpts = find_checkpoints(cfg["ckpt"])
        self.models = load_models(self.ckpts, cfg["model"])  # every file whole and of this project, before serving
        for path, model in zip(self.ckpts, self.models):
            if model.geometry.boxes or model.hparams["in_channels"] > 3:
                need = "car boxes (data.bboxes)" if model.geometry.boxes else "stacked masks (data.stacked_dirs)"
                raise CarvanaError(f"ckpt={path} predicts from {need} besides the photo: the service takes photos "
                                   "alone; predict with predict.py")
        self.geometries = {m.geometry.key: m.geometry for m in self.models}
        self.ensembles = {tta: Ensemble(self.models, tta).to(self.device).eval() for tta in TTAS}

    def set_threads(self) -> None:
        """torch's threads, in the model's thread (the count is per thread)."""
        if self.device.type == "cpu":
            torch.set_num_threads(self.threads)

    def inputs(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        """HxWx3 uint8 RGB photo -> its CxHxW uint8 network input for each geometry key, as PredictDataset's."""
        return {key: to_tensor(geometry.to_input(image)[0]) for key, geometry in self.geometries.items()}

    def autocast(self) -> contextlib.AbstractContextManager:
        """What Lightning's predict loop runs the step under at this precision."""
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def forward(self, kind: tuple[tuple[int, int], str], items: list[dict[str, torch.Tensor]]
                ) -> list[tuple[HostProbs8, int]]:
        """A batch of photos of one (size, tta) -> for each, (the batch's BxHxW probs8 on the host, its index):
        HostProbs8.numpy() waits for a GPU's copy, in the caller's thread."""
        size, tta = kind
        batch = {"inputs": {key: torch.stack([item[key] for item in items]).to(self.device) for key in self.geometries},
                 "size": torch.tensor([size] * len(items))}
        with torch.inference_mode(), self.autocast():
            probs8 = self.ensembles[tta].predict_step(batch, 0)
        return [(probs8, i) for i in range(len(items))]

    def warm_up(self) -> None:
        """One forward of a blank photo of the first checkpoint's photo size: the first request does not pay for
        the device's start, and a model that cannot run (a missing compiler, a full-size ONNX file) stops the start."""
        size = photo_size_of(dict(self.models[0].hparams))
        self.set_threads()
        probs8, _ = self.forward((size, "none"), [self.inputs(np.zeros((*size, 3), np.uint8))])[0]
        assert probs8.numpy().shape == (1, *size), probs8.numpy().shape

    def describe(self) -> dict:
        """/health's account of the model: names, files, input geometry, TTA and where it runs."""
        names = sorted({f"{m.hparams['arch']} {m.hparams['encoder_name']}" for m in self.models})
        geometry = [{"key": g.key, "mode": g.mode, "input_size": list(g.input_size) if g.input_size else None}
                    for g in self.geometries.values()]
        return {"model": " + ".join(names), "checkpoints": [Path(p).name for p in self.ckpts], "geometry": geometry,
                "device": str(self.device), "precision": self.precision}
