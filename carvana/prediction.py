"""Full-resolution masks for a folder of photos: checkpoint ensembles, TTA, a writer that never holds them all."""

import glob
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from carvana import CarvanaError
from carvana.data import (
    CarvanaDataset,
    find_masks,
    find_stacked,
    list_images,
    load_boxes,
    split,
    to_tensor,
)
from carvana.export import check_onnx_run  # issue 10: ckpt=model.onnx
from carvana.geometry import Geometry
from carvana.hardware import default_workers, trainer_kwargs
from carvana.io import angle_of, atomic_path, car_id, probs_cut, read_mask, read_probs8, write_probs8
from carvana.module import SegModule, dice_per_image, load_models, read_checkpoint
from carvana.submission.rle import rle_encode
from carvana.submission.shards import SHARD_PATTERN, RleShardWriter, scan_shard

TTAS = ("none", "hflip")
WRITES = ("png", "rle")


def find_checkpoints(ckpt: str | list[str] | None) -> list[Path]:
    """Checkpoint (or exported .onnx) paths from one path, a glob, or a list of either; a pattern matching nothing is
    an error."""
    if not ckpt:
        raise CarvanaError("ckpt= is required: a checkpoint, a glob of checkpoints, or a list [A, B]")
    paths = []
    for item in [ckpt] if isinstance(ckpt, str) else list(ckpt):
        found = sorted(glob.glob(str(item))) if glob.has_magic(str(item)) else [item]
        if not found:
            raise CarvanaError(f"ckpt={item} matches no checkpoint")
        paths += [Path(p) for p in found]
    return paths


class PhotoDataset(CarvanaDataset):
    """Photos for prediction, each made once into every network input the models need (one per geometry key, as
    training made it); an unreadable photo or one of another size is reported, not fatal."""

    def __init__(self, images: list[Path], size: tuple[int, int], geometries: list[Geometry],
                 stacked: list[list[Path]] | None = None, boxes: dict | None = None):
        super().__init__(images, stacked=stacked, boxes=boxes)
        self.size, self.geometries = size, {g.key: g for g in geometries}

    def __getitem__(self, index: int) -> dict:
        path = self.images[index]
        try:
            raw = self.read(index)
            if raw["image"].shape[:2] != self.size:
                height, width = raw["image"].shape[:2]
                raise CarvanaError(f"photo {path} is {width}x{height}, the others {self.size[1]}x{self.size[0]}")
            inputs = {}
            for key, geometry in self.geometries.items():
                image, extra = geometry.to_input(raw["image"], raw["extra"], raw["box"])
                inputs[key] = to_tensor(np.dstack([image, *extra]) if extra else image)
            item, error = {"inputs": inputs, **({"bbox": torch.tensor(raw["box"])} if raw["box"] else {})}, ""
        except CarvanaError as err:
            item, error = self.placeholder(index), str(err)
        return {**item, "name": path.name, "error": error}

    def placeholder(self, index: int) -> dict:
        """Black inputs of the batch's shapes for a photo that could not be read (it is skipped when written)."""
        channels = 3 + (len(self.stacked[index]) if self.stacked else 0)
        inputs = {key: torch.zeros((channels, *g.input_shape(self.size)), dtype=torch.uint8)
                  for key, g in self.geometries.items()}
        item = {"inputs": inputs}
        return {**item, "bbox": torch.tensor((0, self.size[0], 0, self.size[1]))} if self.boxes is not None else item


class Ensemble(pl.LightningModule):
    """Mean probability of several SegModules, each with optional horizontal-flip TTA -> BxHxW probs8."""

    def __init__(self, models: list[SegModule], tta: str = "none", size: tuple[int, int] | None = None):
        super().__init__()
        self.size = size  # the photos' (H, W)
        if tta not in TTAS:
            raise CarvanaError(f"unknown tta={tta}: choose one of {', '.join(TTAS)}")
        self.models, self.tta = torch.nn.ModuleList(models), tta

    def probs(self, inputs: dict[str, torch.Tensor], size: tuple[int, int], boxes: torch.Tensor | None = None
              ) -> torch.Tensor:
        """Each model's network input (PhotoDataset's, by geometry key) -> Bx1xHxW float32 probs at the full `size`,
        averaged over models and TTA."""
        total = None
        for model in self.models:
            image = inputs[model.geometry.key]
            for flip in (False, True) if self.tta == "hflip" else (False,):
                logits = model(image.flip(-1) if flip else image)
                logits = logits.flip(-1) if flip else logits
                probs = model.geometry.to_full(logits, size, boxes).float().sigmoid_()  # float32 sums under autocast
                total = probs if total is None else total.add_(probs)
        count = len(self.models) * (2 if self.tta == "hflip" else 1)
        return total.div_(count) if count > 1 else total

    def predict_step(self, batch: dict, batch_idx: int) -> "HostProbs8":
        return copy_probs8(self.probs(batch["inputs"], self.size, batch.get("bbox")))  # issue 10: was to_probs8


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


# issue 10: the GPU's copy back overlaps the next batch ----------------------------------------------------------
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
# ---------------------------------------------------------------------------------------------------------------


class MaskWriter(BasePredictionWriter):
    """Writes each batch as it comes (PNG probs8 and/or rows of this rank's RLE shard), in threads."""

    def __init__(self, output_dir: Path, write: list[str], threshold: float, threads: int = 4):
        super().__init__(write_interval="batch")
        self.output_dir, self.write, self.cut = Path(output_dir), write, probs_cut(threshold)
        self.pool = ThreadPoolExecutor(max(1, threads))
        self.pending: deque[Future] = deque()
        self.limit = 4 * max(1, threads)  # bounded: memory does not grow with the number of photos
        self.shard: RleShardWriter | None = None
        self.errors: list[tuple[str, str]] = []  # (photo name, message) of photos that could not be predicted

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if "rle" in self.write:
            self.shard = RleShardWriter(self.output_dir, trainer.global_rank)

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: HostProbs8,
                           batch_indices: list[int] | None, batch: dict, batch_idx: int, dataloader_idx: int = 0
                           ) -> None:
        for i, (name, error) in enumerate(zip(batch["name"], batch["error"])):  # issue 10: index, not probs8
            if error:
                self.errors.append((name, error))
                continue
            self.pending.append(self.pool.submit(self._write_one, name, prediction, i))  # issue 10
            while len(self.pending) > self.limit:
                self._finish(self.pending.popleft())

    def _write_one(self, name: str, prediction: HostProbs8, index: int) -> tuple[str, str | None]:
        probs8 = prediction.numpy()[index]  # issue 10: waits for the batch's copy from the GPU, in this thread
        if "png" in self.write:
            write_probs8(self.output_dir / f"{Path(name).stem}.png", probs8)
        return name, rle_encode(probs8 > self.cut) if self.shard else None  # encoded here, in the thread

    def _finish(self, future: Future) -> None:
        name, rle = future.result()
        if self.shard is not None:
            self.shard.write(name, rle)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        while self.pending:
            self._finish(self.pending.popleft())
        if self.shard is not None:
            self.shard.close()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self.errors)
            self.errors = [e for errors in gathered for e in errors]
        trainer.strategy.barrier("predict-written")  # rank 0 reads every rank's files afterwards


def written_names(output_dir: Path, write: list[str], images: list[Path]) -> set[str]:
    """Photos whose every requested output is already there (a restart skips them)."""
    done = {p.name for p in images}
    if "png" in write:
        done &= {p.name for p in images if (output_dir / f"{p.stem}.png").exists()}
    if "rle" in write:
        # a line without its newline is a half-written row of a killed run: not done
        done &= {row.name for shard in output_dir.glob(SHARD_PATTERN) for row in scan_shard(shard)[0]}
    return done


def dice_table(images: list[Path], pred_dir: Path, masks: list[Path], threshold: float) -> pd.DataFrame:
    """Per-photo Kaggle Dice of written predictions against their masks -> DataFrame[image, car, angle, dice]."""
    rows = []
    for path, mask in zip(images, masks):
        pred = torch.from_numpy(read_probs8(pred_dir / f"{path.stem}.png") > probs_cut(threshold))
        truth = torch.from_numpy(read_mask(mask))
        dice = float(dice_per_image(pred[None, None], truth[None, None])[0])
        rows.append({"image": path.name, "car": car_id(path), "angle": angle_of(path), "dice": dice})
    return pd.DataFrame(rows)


def predict(images: list[Path], ckpts: list[Path], output_dir: Path, trainer_kwargs: dict, tta: str = "none",
            write: list[str] = ("png",), threshold: float = 0.5, batch_size: int = 4, num_workers: int | None = None,
            writer_threads: int = 4, bboxes: str | None = None, switches: dict | None = None
            ) -> tuple[int, list[tuple[str, str]], bool]:
    """Predict the photos not yet written -> (photos predicted now, (name, error) of failed photos, is rank 0)."""
    bad = [w for w in write if w not in WRITES]
    if bad or not write:
        raise CarvanaError(f"write={list(write)}: choose png, rle or [png, rle]")
    models = load_models(ckpts, switches)  # issue 10: .onnx files too; switches: model.compile, ...
    todo = [p for p in images if p.name not in written_names(output_dir, write, images)]
    if not todo:
        return 0, [], True
    # the photos set the size (masks come out at the photo's size, whatever the model was trained at); one size
    # per run, as batches need it: the most common one, from the file headers
    size = pd.Series([photo_size(p) for p in todo]).mode()[0]
    stacked_dirs = {tuple(m.hparams.get("data", {}).get("stacked_dirs") or []) for m in models}
    if len(stacked_dirs) > 1:
        raise CarvanaError(f"the checkpoints were trained on different data.stacked_dirs ({sorted(stacked_dirs)}): "
                           f"ensemble checkpoints of one stage only")
    dirs = list(stacked_dirs.pop())
    stacked = find_stacked(todo, dirs) if dirs else None
    writer = MaskWriter(output_dir, list(write), threshold, writer_threads)
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[writer], logger=False)
    check_onnx_run(models, trainer.world_size)  # issue 10
    workers = default_workers(trainer.num_devices) if num_workers is None else num_workers
    dataset = PhotoDataset(todo, size, [m.geometry for m in models], stacked, car_boxes(models, bboxes, todo))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                        pin_memory=torch.cuda.is_available())
    trainer.predict(Ensemble(models, tta, size), dataloaders=loader, return_predictions=False)
    return len(todo) - len(writer.errors), writer.errors, trainer.is_global_zero


def car_boxes(models: list[SegModule], bboxes: str | None, images: list[Path]) -> dict | None:
    """The photos' car boxes when a model was trained on them: from `bboxes`, else the checkpoint's data.bboxes."""
    if not any(m.geometry.boxes for m in models):
        return None
    path = bboxes or next((m.hparams.get("data") or {}).get("bboxes") for m in models if m.geometry.boxes)
    return load_boxes(path, images)


def photo_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header; an unreadable file gives (0, 0) and is reported when predicted."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except OSError:
        return 0, 0


def run(cfg: dict) -> tuple[str, int]:
    """predict.py's job from its plain config -> (summary line for rank 0, exit status); see conf/predict.yaml."""
    ckpts = find_checkpoints(cfg["ckpt"])
    meta = read_checkpoint(ckpts[0], onnx=True)["hyper_parameters"].get("data") or {}  # issue 10: onnx=True
    root = Path(cfg["data"]["root"] or meta.get("root") or ".")
    write = [cfg["write"]] if isinstance(cfg["write"], str) else list(cfg["write"])
    output_dir = Path(cfg["output_dir"])
    if cfg["predict_on_val"]:
        if "png" not in write:
            raise CarvanaError("predict_on_val=true scores the written PNGs: use write=png or write=[png,rle]")
        fold = meta.get("fold") if cfg["fold"] is None else cfg["fold"]
        images = split(root, meta.get("image_dir", "train"), cfg["data"]["folds"] or meta.get("folds"), fold)[1]
        masks = find_masks(images, root / meta.get("val_mask_dir", "train_masks"))  # before the long run starts
    else:
        images = list_images(cfg["input_dir"] or root / "test")
    count, errors, rank_zero = predict(
        images, ckpts, output_dir, trainer_kwargs(cfg["trainer"]), tta=cfg["tta"], write=write,
        threshold=cfg["threshold"], batch_size=cfg["batch_size"], num_workers=cfg["num_workers"],
        writer_threads=cfg["writer_threads"], bboxes=cfg["data"].get("bboxes"), switches=cfg.get("model"))
    if not rank_zero:
        return "", 0
    line = f"predicted={count} skipped={len(images) - count - len(errors)} output_dir={output_dir}"
    if cfg["predict_on_val"]:
        failed = {name for name, _ in errors}
        kept = [(p, m) for p, m in zip(images, masks) if p.name not in failed]
        table = dice_table([p for p, _ in kept], output_dir, [m for _, m in kept], cfg["threshold"])
        table_path = output_dir / f"dice_fold{fold}.csv"
        with atomic_path(table_path) as tmp:
            table.to_csv(tmp, index=False)
        line += f" val_dice={table.dice.mean():.4f} dice_table={table_path}"
    for _, error in errors:
        print(f"error: {error}", file=sys.stderr, flush=True)
    return line, 1 if errors else 0
