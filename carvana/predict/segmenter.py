"""The Python API and the service's model, one object: `Segmenter.load(ckpt)` loads what predict.py's ckpt= takes (a
checkpoint, a glob of an ensemble's checkpoints, an ONNX file), and `seg.predict(photo)` runs predict.py's code path on
photos in memory: each photo made into the network inputs PredictDataset makes, Ensemble.predict_step as predict.py's
Trainer runs it (inference mode, its precision, on its device), batches of one size as SizeBatchSampler forms them ->
the HxW probs8 predict.py writes as its PNG, the mask and the cut-out of its writer. python -m carvana.serve builds the
same object from conf/serve.yaml (Segmenter.from_serve_config) and runs its forwards in its model thread."""

import contextlib
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from carvana import CarvanaError
from carvana.cli import check_threshold
from carvana.data.dataset import SizeBatchSampler, to_tensor
from carvana.data.io import orientation, probs_cut, read_image, upright
from carvana.hardware import trainer_kwargs
from carvana.model.loading import load_models
from carvana.model.tta import TTAS, check_tta
from carvana.predict.cutout import CUTOUT_ALPHAS, CUTOUT_COLOURS, cutout
from carvana.predict.ensemble import Ensemble
from carvana.predict.run import find_checkpoints
from carvana.predict.tiles import check_tiling
from carvana.predict.writer import HostProbs8

DEVICES = ("auto", "cpu", "cuda")
KAGGLE_SIZE = (1280, 1918)  # (H, W) of Kaggle's photos: the warm-up's photo when a checkpoint does not say its own
PRECISIONS = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}  # Lightning's autocast dtypes
# Segmenter.load's keys whose defaults are predict.py's, read from conf/predict.yaml (the one place they live)
PREDICT_KEYS = ("tta", "tile", "tile_overlap", "threshold", "batch_size", "cutout_alpha", "cutout_colour", "model")

Kind = tuple[tuple[int, int], str, bool]  # a forward's kind: the photos' (H, W), the TTA, whether tiled


class InputTooLarge(CarvanaError):
    """A photo whose network input is over max_input_pixels and cannot be tiled (the service answers 413)."""


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


def to_image(photo: object) -> np.ndarray:
    """A photo -> HxWx3 uint8 RGB as displayed: a path read by predict.py's reader (read_image), a PIL image's pixels
    with its EXIF orientation applied (io's rule), an HxWx3 uint8 RGB array as it is."""
    if isinstance(photo, (str, os.PathLike)):
        return read_image(photo)
    if hasattr(photo, "getexif") and hasattr(photo, "convert"):  # a PIL image (PIL is imported only by who has one)
        return upright(np.asarray(photo.convert("RGB")), orientation(photo))
    if not isinstance(photo, np.ndarray):
        raise CarvanaError(f"a photo is a path, a PIL image or an HxWx3 uint8 RGB array, not {type(photo).__name__}")
    if photo.dtype != np.uint8:
        raise CarvanaError(f"the photo array is {photo.dtype}: give uint8 0..255, e.g. "
                           "(array * 255).round().astype(np.uint8) for floats in [0, 1]")
    if photo.ndim != 3 or photo.shape[2] != 3:
        raise CarvanaError(f"the photo array has shape {photo.shape}: give HxWx3 RGB (np.dstack([grey] * 3) for a grey "
                           "photo, array[..., :3] for RGBA)")
    if photo.shape[0] == 0 or photo.shape[1] == 0:
        raise CarvanaError(f"the photo array has shape {photo.shape}: it has no pixels")
    return np.ascontiguousarray(photo)


@dataclass(eq=False)  # arrays: compare their fields with np.array_equal
class Result:
    """One photo's prediction: `probs8` is predict.py's PNG for it, byte for byte; the rest follows from it."""

    image: np.ndarray  # HxWx3 uint8 RGB, the photo as predicted
    probs8: np.ndarray  # HxW uint8, 0..255 for probability 0..1 (predict.py's 8-bit PNG)
    threshold: float
    cutout_alpha: str = "probs"
    cutout_colour: str = "blur"

    @property
    def probs(self) -> np.ndarray:
        """HxW float32 in [0, 1] at the photo's size: probs8 / 255 (quantised to 1/255, as predict.py writes it)."""
        return self.probs8.astype(np.float32) / np.float32(255)

    @property
    def mask(self) -> np.ndarray:
        """HxW uint8 {0, 1}: probability > threshold, predict.py's and submit.py's cut (probs8 > probs_cut)."""
        return (self.probs8 > probs_cut(self.threshold)).astype(np.uint8)

    @cached_property
    def cutout(self) -> np.ndarray:
        """HxWx4 uint8 RGBA cut-out, predict.py's write=cutout (computed once, when first asked for)."""
        return cutout(self.image, self.probs8, self.cutout_alpha, probs_cut(self.threshold), self.cutout_colour)


def predict_defaults() -> dict:
    """conf/predict.yaml's values of PREDICT_KEYS: Segmenter.load's defaults are predict.py's."""
    from omegaconf import OmegaConf

    from carvana.cli import CONF

    values = OmegaConf.to_container(OmegaConf.load(CONF / "predict.yaml"))
    return {key: values[key] for key in PREDICT_KEYS}


class Segmenter:
    """Loaded models and predict.py's settings -> the probabilities of photos in memory, as predict.py writes them.

    Build it with Segmenter.load(ckpt, **settings) (predict.py's defaults) or Segmenter.from_serve_config(cfg)."""

    def __init__(self, ckpt: str | Path | list, *, tta: str, tile: list[int] | None, tile_overlap: float,
                 threshold: float, batch_size: int, cutout_alpha: str, cutout_colour: str, model: dict | None,
                 device: str = "auto", precision: str = "auto", threads: int | None = None,
                 max_input_pixels: int | None = None):
        self.tta, self.threshold = check_tta(tta, "tta"), check_threshold(threshold)
        if cutout_alpha not in CUTOUT_ALPHAS or cutout_colour not in CUTOUT_COLOURS:
            raise CarvanaError(f"cutout_alpha={cutout_alpha} cutout_colour={cutout_colour}: choose "
                               f"{' or '.join(CUTOUT_ALPHAS)}, and one of {', '.join(CUTOUT_COLOURS)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise CarvanaError(f"batch_size={batch_size} must be an integer >= 1")
        self.cutout_alpha, self.cutout_colour, self.batch_size = cutout_alpha, cutout_colour, batch_size
        self.device, self.precision = resolve_device(device, precision)
        self.threads, self.max_input_pixels = threads, max_input_pixels
        self.ckpts = find_checkpoints(str(ckpt) if isinstance(ckpt, Path) else ckpt)
        self.models = load_models(self.ckpts, model)  # every file whole and of this project, before predicting
        for path, loaded in zip(self.ckpts, self.models):
            if loaded.geometry.boxes or loaded.hparams["in_channels"] > 3:
                need = "car boxes (data.bboxes)" if loaded.geometry.boxes else "stacked masks (data.stacked_dirs)"
                raise CarvanaError(f"ckpt={path} predicts from {need} besides the photo: this takes photos alone; "
                                   "predict with predict.py")
        self.geometries = {m.geometry.key: m.geometry for m in self.models}
        self.tile = self._check_tile(tile, tile_overlap)
        self.ensembles = {(t, False): Ensemble(self.models, t).to(self.device).eval() for t in TTAS}
        if self.tile:  # tiles a forward: batch_size (predict.py's), or as many as max_input_pixels holds
            tile_batch = batch_size if max_input_pixels is None else max(1, max_input_pixels // math.prod(self.tile))
            self.ensembles |= {(t, True): Ensemble(self.models, t, self.tile, tile_overlap, tile_batch)
                               .to(self.device).eval() for t in TTAS}

    def _check_tile(self, tile: list[int] | None, overlap: float) -> tuple[int, int] | None:
        """predict.py's tile check: every model's geometry; with max_input_pixels (the service, which tiles only
        photos past it), the full-size ones', and a tile within the bound."""
        if self.max_input_pixels is None:
            return check_tiling(tile, overlap, list(self.geometries.values()))
        checked = check_tiling(tile, overlap, [g for g in self.geometries.values() if g.input_size is None])
        if checked and math.prod(checked) > self.max_input_pixels:
            raise CarvanaError(f"tile={list(checked)} is {math.prod(checked)} pixels, more than max_input_pixels="
                               f"{self.max_input_pixels}: choose a smaller tile or a larger max_input_pixels")
        return checked

    @classmethod
    def load(cls, ckpt: str | Path | list, **settings: object) -> "Segmenter":
        """What predict.py's ckpt= takes -> a Segmenter with predict.py's settings (conf/predict.yaml), `settings`
        (tta=, tile=, threshold=, batch_size=, device=, precision=, ...) over them."""
        unknown = sorted(set(settings) - {*PREDICT_KEYS, "device", "precision", "threads"})
        if unknown:
            raise CarvanaError(f"Segmenter.load got {', '.join(unknown)}: choose from {', '.join(PREDICT_KEYS)}, "
                               "device, precision, threads")
        return cls(ckpt, **{**predict_defaults(), **settings})

    @classmethod
    def from_serve_config(cls, cfg: dict) -> "Segmenter":
        """The service's Segmenter from conf/serve.yaml's values (max_batch photos, max_input_pixels a forward)."""
        return cls(cfg["ckpt"], tta=cfg["tta"], tile=cfg["tile"], tile_overlap=cfg["tile_overlap"],
                   threshold=cfg["threshold"], batch_size=cfg["max_batch"], cutout_alpha=cfg["cutout_alpha"],
                   cutout_colour=cfg["cutout_colour"], model=cfg["model"], device=cfg["device"],
                   precision=cfg["precision"], threads=cfg["threads"] or len(os.sched_getaffinity(0)),
                   max_input_pixels=cfg["max_input_pixels"])

    def predict(self, photos: object, tta: str | None = None) -> Result | list[Result]:
        """A photo (a path, a PIL image, an HxWx3 uint8 RGB array) -> its Result; a list of photos -> their Results
        in its order, predicted in batches of photos of one size (batch_size a forward, as predict.py)."""
        many = isinstance(photos, (list, tuple))
        images = [to_image(p) for p in (photos if many else [photos])]
        tta = self.tta if tta is None else check_tta(tta, "tta")
        probs8: list[np.ndarray | None] = [None] * len(images)
        sizes = [image.shape[:2] for image in images]
        self.set_threads()
        for batch in SizeBatchSampler(range(len(images)), sizes, 1 if self.tile else self.batch_size):
            kind = self.kind(sizes[batch[0]], tta)
            for start in range(0, len(batch), self.batch_limit(kind)):  # the service's bound on a forward
                part = batch[start:start + self.batch_limit(kind)]
                for i, (host, row) in zip(part, self.forward(kind, [self.inputs(images[i]) for i in part])):
                    probs8[i] = host.numpy()[row]
        results = [Result(image, p, self.threshold, self.cutout_alpha, self.cutout_colour)
                   for image, p in zip(images, probs8)]
        return results if many else results[0]

    def input_pixels(self, size: tuple[int, int]) -> int:
        """The network pixels of a photo of `size` (H, W): the largest input any geometry makes of it."""
        return max(math.prod(g.input_shape(size)) for g in self.geometries.values())

    def kind(self, size: tuple[int, int], tta: str) -> Kind:
        """A photo's kind of forward: (size, tta, tiled); tiled with tile= (predict.py), or with max_input_pixels (the
        service) when its network input is over it; InputTooLarge when it is and cannot be tiled."""
        if self.max_input_pixels is None:
            return size, tta, self.tile is not None
        pixels = self.input_pixels(size)
        if pixels <= self.max_input_pixels:
            return size, tta, False
        resized = any(g.input_size is not None for g in self.geometries.values())
        if self.tile is None or resized:
            why = "tile=null" if self.tile is None else "the ensemble's resized models cannot be tiled"
            raise InputTooLarge(f"the photo's network input is {pixels} pixels, over max_input_pixels="
                                f"{self.max_input_pixels}, and {why}: make the photo smaller")
        return size, tta, True

    def batch_limit(self, kind: Kind) -> int:
        """Photos of this kind in one forward: batch_size, fewer where their inputs would pass max_input_pixels; a
        tiled photo alone (its tiles fill the forward)."""
        size, _, tiled = kind
        if tiled or self.max_input_pixels is None:
            return 1 if tiled else self.batch_size
        return max(1, min(self.batch_size, self.max_input_pixels // self.input_pixels(size)))

    def set_threads(self) -> None:
        """torch's threads, in the calling thread (the count is per thread), when `threads` is set."""
        if self.device.type == "cpu" and self.threads:
            torch.set_num_threads(self.threads)

    def inputs(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        """HxWx3 uint8 RGB photo -> its CxHxW uint8 network input for each geometry key, as PredictDataset's."""
        return {key: to_tensor(geometry.to_input(image)[0]) for key, geometry in self.geometries.items()}

    def autocast(self) -> contextlib.AbstractContextManager:
        """What Lightning's predict loop runs the step under at this precision."""
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def forward(self, kind: Kind, items: list[dict[str, torch.Tensor]]) -> list[tuple[HostProbs8, int]]:
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
