"""The writer of predict.py: each batch's probabilities come back from the device without stopping it, and threads
write them as they come (8-bit PNGs, rows of this rank's RLE shard, RGBA cut-outs), never holding more than a few
batches."""

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from carvana.data.io import probs_cut, read_image, write_png, write_probs8
from carvana.data.rle import rle_encode
from carvana.predict.cutout import CUTOUT_ALPHAS, CUTOUT_COLOURS, cutout  # run.py and serve import them from here
from carvana.predict.manifest import CUTOUTS
from carvana.predict.shards import RleShardWriter


def to_probs8(probs: torch.Tensor) -> torch.Tensor:
    """Bx1xHxW probs in [0, 1] -> BxHxW uint8 0..255 on the CPU, rounded half to even.

    On a GPU they are scaled and rounded there, and a quarter of the bytes comes back. On the CPU, one cv2 pass a
    photo (read 10 MB, write 2.5 MB) instead of torch's three (scale, round, convert): 0.7 ms a photo instead of 1.5.
    """
    if probs.device.type != "cpu":
        return probs.mul_(255).round_()[:, 0].to(torch.uint8).cpu()
    out = np.empty((len(probs), *probs.shape[-2:]), np.uint8)
    for photo, dst in zip(probs[:, 0].float().numpy(), out):
        cv2.convertScaleAbs(photo, dst=dst, alpha=255.0)  # saturating, rounds half to even as torch.round does
    return torch.from_numpy(out)


class HostProbs8(NamedTuple):
    """A batch's BxHxW uint8 probs8 in host memory, and the CUDA event after which they are there (None: already)."""

    probs8: torch.Tensor
    ready: torch.cuda.Event | None = None

    def numpy(self) -> np.ndarray:
        """BxHxW uint8, once the copy has landed (the writer's threads wait here, not the predict loop)."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.probs8.numpy()


def copy_probs8(probs: torch.Tensor) -> HostProbs8:
    """to_probs8 without waiting: on a GPU the uint8 probs are copied into pinned host memory without blocking, so
    the next batch is launched while this one comes back (.cpu() waited for the copy, every batch)."""
    if probs.device.type != "cuda":
        return HostProbs8(to_probs8(probs))
    probs8 = probs.mul_(255).round_()[:, 0].to(torch.uint8)
    host = torch.empty(probs8.shape, dtype=torch.uint8, pin_memory=True)  # torch's caching host allocator
    host.copy_(probs8, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return HostProbs8(host, ready)


class Stopped(Exception):
    """A signal (SIGTERM) stopped the prediction between two batches; what was written is kept."""


class MaskWriter(BasePredictionWriter):
    """Writes each batch as it comes (PNG probs8, rows of this rank's RLE shard, RGBA cut-outs of `photos`, the
    input photos by name), in threads."""

    def __init__(self, output_dir: Path, write: list[str], threshold: float, threads: int,
                 photos: dict[str, Path] | None = None, cutout_alpha: str = "probs", cutout_colour: str = "blur"):
        super().__init__(write_interval="batch")
        self.output_dir, self.write, self.cut = Path(output_dir), write, probs_cut(threshold)
        self.photos, self.cutout_alpha, self.cutout_colour = photos or {}, cutout_alpha, cutout_colour
        assert cutout_alpha in CUTOUT_ALPHAS and cutout_colour in CUTOUT_COLOURS, "predict.py's checks"
        # photos already written, predicted again only to keep an uninterrupted run's batches
        self.skip: set[str] = set()
        self.pool = ThreadPoolExecutor(max(1, threads))
        self.pending: deque[Future] = deque()
        self.limit = 4 * max(1, threads)  # bounded: memory does not grow with the number of photos
        self.shard: RleShardWriter | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if "cutout" in self.write:
            (self.output_dir / CUTOUTS).mkdir(exist_ok=True)
        if "rle" in self.write:
            self.shard = RleShardWriter(self.output_dir, trainer.global_rank)

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: HostProbs8,
                           batch_indices: list[int] | None, batch: dict, batch_idx: int, dataloader_idx: int = 0
                           ) -> None:
        for i, name in enumerate(batch["name"]):  # the writer threads take the arrays
            if name in self.skip:
                continue
            self.pending.append(self.pool.submit(self._write_one, name, prediction, i))
            while len(self.pending) > self.limit:
                self._finish(self.pending.popleft())

    def _write_one(self, name: str, prediction: HostProbs8, index: int) -> tuple[str, str | None]:
        probs8 = prediction.numpy()[index]  # waits for the batch's copy from the GPU, in this thread
        if "png" in self.write:
            write_probs8(self.output_dir / f"{Path(name).stem}.png", probs8)
        if "cutout" in self.write:  # the photo read again here, in the thread: the batch holds the network's input
            rgba = cutout(read_image(self.photos[name]), probs8, self.cutout_alpha, self.cut, self.cutout_colour)
            write_png(self.output_dir / CUTOUTS / f"{Path(name).stem}.png", rgba)
        return name, rle_encode(probs8 > self.cut) if self.shard else None  # encoded here, in the thread

    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        # Lightning's SIGTERM handler only records the signal, and its predict loop never looks: stop here, at the
        # next batch (with tile=, the next photo); on_exception writes what the threads hold
        if trainer.received_sigterm:
            raise Stopped("SIGTERM")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # the photos handed to the threads are written whole before the process ends, so a rerun skips them; a
        # write that failed is left to the error being raised
        while self.pending:
            future = self.pending.popleft()
            if future.exception() is None:
                self._finish(future)
        if self.shard is not None:
            self.shard.close()

    def _finish(self, future: Future) -> None:
        name, rle = future.result()
        if self.shard is not None:
            self.shard.write(name, rle)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        while self.pending:
            self._finish(self.pending.popleft())
        if self.shard is not None:
            self.shard.close()
        trainer.strategy.barrier("predict-written")  # rank 0 reads every rank's files afterwards
