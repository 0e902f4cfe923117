"""The service's model: the checkpoints (or ONNX files) predict.py loads, each photo made into the network inputs
PredictDataset makes, and Ensemble.predict_step as predict.py's Trainer runs it (inference mode, its precision, on its
device) -> the photo's HxW probs8, the bytes predict.py writes."""

import contextlib
import math
import os
from pathlib import Path

import numpy as np
import torch

from carvana import CarvanaError
from carvana.cli import check_threshold
from carvana.data.dataset import to_tensor
from carvana.hardware import trainer_kwargs
from carvana.model.loading import load_models
from carvana.model.tta import TTAS, check_tta
from carvana.predict.ensemble import Ensemble
from carvana.predict.run import find_checkpoints
from carvana.predict.tiles import check_tiling
from carvana.predict.writer import CUTOUT_ALPHAS, HostProbs8
from carvana.serve.photos import PhotoError

DEVICES = ("auto", "cpu", "cuda")
KAGGLE_SIZE = (1280, 1918)  # (H, W) of Kaggle's photos: the warm-up's photo when a checkpoint does not say its own
PRECISIONS = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}  # Lightning's autocast dtypes


def photo_size_of(hparams: dict) -> tuple[int, int]:
    """The (H, W) of the photos a checkpoint predicts: its training photos' size, else Kaggle's."""
    size = (hparams.get("data") or {}).get("image_size")
    return tuple(int(s) for s in size) if size else KAGGLE_SIZE


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
        self.max_batch, self.max_input_pixels = cfg["max_batch"], cfg["max_input_pixels"]
        full = [g for g in self.geometries.values() if g.input_size is None]
        self.tile = check_tiling(cfg["tile"], cfg["tile_overlap"], full)  # predict.py's tile=, for full-size models
        if self.tile and math.prod(self.tile) > self.max_input_pixels:
            raise CarvanaError(f"tile={list(self.tile)} is {math.prod(self.tile)} pixels, more than max_input_pixels="
                               f"{self.max_input_pixels}: choose a smaller tile or a larger max_input_pixels")
        self.ensembles = {(tta, False): Ensemble(self.models, tta).to(self.device).eval() for tta in TTAS}
        if self.tile:  # tiles a forward: as many as max_input_pixels holds
            tile_batch = max(1, self.max_input_pixels // math.prod(self.tile))
            self.ensembles |= {(tta, True): Ensemble(self.models, tta, self.tile, cfg["tile_overlap"], tile_batch)
                               .to(self.device).eval() for tta in TTAS}

    def input_pixels(self, size: tuple[int, int]) -> int:
        """The network pixels of a photo of `size` (H, W): the largest input any geometry makes of it."""
        return max(math.prod(g.input_shape(size)) for g in self.geometries.values())

    def kind(self, size: tuple[int, int], tta: str) -> tuple[tuple[int, int], str, bool]:
        """A photo's kind of forward: (size, tta, tiled), tiled when its network input is over max_input_pixels;
        PhotoError 413 when it is and cannot be tiled (tile=null, or an ensemble with resized models)."""
        pixels = self.input_pixels(size)
        if pixels <= self.max_input_pixels:
            return size, tta, False
        resized = any(g.input_size is not None for g in self.geometries.values())
        if self.tile is None or resized:
            why = "tile=null" if self.tile is None else "the ensemble's resized models cannot be tiled"
            raise PhotoError(413, f"the photo's network input is {pixels} pixels, over max_input_pixels="
                                  f"{self.max_input_pixels}, and {why}: make the photo smaller")
        return size, tta, True

    def batch_limit(self, kind: tuple[tuple[int, int], str, bool]) -> int:
        """Photos of this kind in one forward: max_batch, fewer where their inputs would pass max_input_pixels; a
        tiled photo alone (its tiles fill the forward)."""
        size, _, tiled = kind
        return 1 if tiled else max(1, min(self.max_batch, self.max_input_pixels // self.input_pixels(size)))

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

    def forward(self, kind: tuple[tuple[int, int], str, bool], items: list[dict[str, torch.Tensor]]
                ) -> list[tuple[HostProbs8, int]]:
        """A batch of photos of one kind (size, tta, tiled) -> for each, (the batch's BxHxW probs8 on the host, its
        index): HostProbs8.numpy() waits for a GPU's copy, in the caller's thread."""
        size, tta, tiled = kind
        batch = {"inputs": {key: torch.stack([item[key] for item in items]).to(self.device) for key in self.geometries},
                 "size": torch.tensor([size] * len(items))}
        with torch.inference_mode(), self.autocast():
            probs8 = self.ensembles[tta, tiled].predict_step(batch, 0)
        return [(probs8, i) for i in range(len(items))]

    def warm_up(self) -> None:
        """One forward of a blank photo of the first checkpoint's photo size: the first request does not pay for
        the device's start, and a model that cannot run (a missing compiler, a full-size ONNX file) stops the start."""
        size = photo_size_of(dict(self.models[0].hparams))
        self.set_threads()
        probs8, _ = self.forward(self.kind(size, "none"), [self.inputs(np.zeros((*size, 3), np.uint8))])[0]
        assert probs8.numpy().shape == (1, *size), probs8.numpy().shape

    def describe(self) -> dict:
        """/health's account of the model: names, files, input geometry, TTA and where it runs."""
        names = sorted({f"{m.hparams['arch']} {m.hparams['encoder_name']}" for m in self.models})
        geometry = [{"key": g.key, "mode": g.mode, "input_size": list(g.input_size) if g.input_size else None}
                    for g in self.geometries.values()]
        return {"model": " + ".join(names), "checkpoints": [Path(p).name for p in self.ckpts], "geometry": geometry,
                "device": str(self.device), "precision": self.precision, "max_input_pixels": self.max_input_pixels,
                "tile": list(self.tile) if self.tile else None}
