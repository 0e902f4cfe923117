"""Probabilities for a folder of photos: each photo made once into every network input the models need, the mean over
models and TTA at the photo's own size, written as it comes (carvana.predict.writer) in batches of one size."""

import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from carvana import CarvanaError
from carvana.data.dataset import SegDataset, SizeBatchSampler, to_tensor
from carvana.data.geometry import Geometry
from carvana.model.onnx import OnnxModel
from carvana.model.tta import TTAS, tta_logits
from carvana.predict.tiles import tiled_logits
from carvana.predict.writer import HostProbs8, copy_probs8
from carvana.progress import tile_counter


class PredictDataset(SegDataset):
    """Photos for prediction, each made once into every network input the models need (one per geometry key, as
    training made it), with its own size."""

    def __init__(self, images: list[Path], geometries: list[Geometry], stacked: list[list[Path]] | None = None,
                 boxes: dict | None = None):
        super().__init__(images, None, geometries[0], stacked=stacked, boxes=boxes)
        self.geometries = {g.key: g for g in geometries}

    def __getitem__(self, index: int) -> dict:
        raw = self.read(index)
        inputs = {}
        for key, geometry in self.geometries.items():
            image, extra = geometry.to_input(raw["image"], raw["extra"], raw["box"])
            inputs[key] = to_tensor(np.dstack([image, *extra]) if extra else image)
        item = {"inputs": inputs, "name": self.images[index].name, "size": torch.tensor(raw["image"].shape[:2])}
        return {**item, "bbox": torch.tensor(raw["box"])} if raw["box"] is not None else item


class PredictData(pl.LightningDataModule):
    """The photos to predict, each on one rank (never repeated to even the ranks out: a photo would be written twice),
    in batches of photos of one size, in the order of the list."""

    def __init__(self, dataset: PredictDataset, sizes: list[tuple[int, int]], batch_size: int, num_workers: int):
        super().__init__()
        self.dataset, self.sizes, self.batch_size, self.num_workers = dataset, sizes, batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        batches = SizeBatchSampler(range(len(self.dataset)), self.sizes, self.batch_size,
                                   num_replicas=self.trainer.world_size, rank=self.trainer.global_rank)
        return DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), worker_init_fn=leave_sigterm_to_the_main_process)


def leave_sigterm_to_the_main_process(worker_id: int) -> None:
    """A DataLoader worker ignores SIGTERM: `timeout` signals the whole process group, and the main process stops at
    the next batch and shuts its workers down itself. A worker killed by it instead made torch's SIGCHLD handler raise
    from the iterator's __del__: an 'Exception ignored ... Traceback' under the stop line. (A worker still exits when
    the main process dies: torch's watchdog.)"""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Ensemble(pl.LightningModule):
    """Mean probability of several models (SegModules or OnnxModels), each with the same TTA -> BxHxW probs8; with a
    `tile` (h, w), each model runs on overlapping tiles, `tile_batch` a forward (carvana.predict.tiles)."""

    def __init__(self, models: list, tta: str, tile: tuple[int, int] | None = None, tile_overlap: float = 0.25,
                 tile_batch: int = 4):
        super().__init__()
        assert tta in TTAS, tta  # checked once where a user gives it: predict.py's check_settings, the Segmenter
        self.models, self.tta = torch.nn.ModuleList(models), tta
        self.tile, self.tile_overlap, self.tile_batch = tile, tile_overlap, tile_batch

    def passes(self, model: torch.nn.Module, image: torch.Tensor, size: tuple[int, int], boxes: torch.Tensor | None
               ) -> Iterator[torch.Tensor]:
        """Each TTA pass of one model -> Bx1xHxW float32 logits at the photos' `size`, whole or tiled."""
        if self.tile is None:
            return tta_logits(model, image, size, boxes, self.tta)
        number = next(i for i, m in enumerate(self.models, 1) if m is model)
        label = f" (model {number}/{len(self.models)})" if len(self.models) > 1 else ""
        counter = tile_counter(self._trainer, label)  # Lightning's bar counts photos: count a large photo's tiles
        return tiled_logits(model, image, size, self.tile, self.tile_overlap, self.tile_batch, self.tta, counter)

    def probs(self, inputs: dict[str, torch.Tensor], size: tuple[int, int], boxes: torch.Tensor | None = None
              ) -> torch.Tensor:
        """Each model's network input (PredictDataset's, by geometry key) -> Bx1xHxW float32 probs at the photos'
        `size`, averaged over models and TTA passes."""
        total, count = None, 0
        for model in self.models:
            for logits in self.passes(model, inputs[model.geometry.key], size, boxes):
                probs = logits.sigmoid_()
                total = probs if total is None else total.add_(probs)
                count += 1
        return total.div_(count) if count > 1 else total

    def predict_step(self, batch: dict, batch_idx: int) -> HostProbs8:
        size = tuple(int(s) for s in batch["size"][0])  # a batch holds photos of one size
        return copy_probs8(self.probs(batch["inputs"], size, batch.get("bbox")))  # the copy back overlaps


def batches_to_do(images: list[Path], sizes: list[tuple[int, int]], done: set[str], batch_size: int) -> list[int]:
    """The indices of the photos of every batch (of the whole sorted list, by size) that holds a photo not yet
    written: a resumed run predicts in the batches of an uninterrupted one, so it writes the same bytes (a batch of
    other photos may round apart)."""
    batches = SizeBatchSampler(range(len(images)), sizes, batch_size)
    return sorted(i for batch in batches if any(images[j].name not in done for j in batch) for i in batch)


def check_onnx_sizes(models: list, images: list[Path], sizes: list[tuple[int, int]], tile: tuple[int, int] | None
                     ) -> None:
    """Refuse, before anything is written, a photo whose network input an ONNX file's graph cannot take (a file
    exported for one size, before exports took any size)."""
    first: dict[tuple[int, int], Path] = {}  # a photo of each size, to name
    for size, photo in zip(sizes, images):
        first.setdefault(size, photo)
    for model in models:
        if isinstance(model, OnnxModel):
            for size, photo in first.items():
                shape = model.geometry.input_shape(size)
                if tile:  # tiles clipped to the padded photo, as tiled_logits cuts them
                    shape = (min(tile[0], shape[0]), min(tile[1], shape[1]))
                model.check_size(shape, f"photo {photo.name}, height x width {size[0]}x{size[1]}")


def check_onnx_run(models: list, world_size: int) -> None:
    """Refuse ONNX files in several processes (DDP): onnxruntime takes the machine's cores or one GPU by itself."""
    onnx_models = [m for m in models if isinstance(m, OnnxModel)]
    if onnx_models and world_size > 1:
        raise CarvanaError(f"{onnx_models[0].path}: ONNX models predict in one process (onnxruntime takes the "
                           f"machine's cores or one GPU), not {world_size}: use trainer=cpu or trainer=gpu")
