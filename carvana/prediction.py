"""Full-resolution masks for a folder of photos: checkpoint ensembles, TTA, a writer that never holds them all."""

import glob
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from PIL import Image
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
from carvana.export import check_onnx_run
from carvana.geometry import Geometry
from carvana.hardware import default_workers, trainer_kwargs
from carvana.io import (
    angle_of,
    atomic_path,
    car_id,
    check_threshold,
    check_writable_dir,
    probs_cut,
    read_mask,
    read_probs8,
)
from carvana.manifest import prepare, settings, written_names
from carvana.module import SegModule, dice_per_image, load_models, read_checkpoint
from carvana.progress import progress
from carvana.slurm import check_allocation
from carvana.writer import HostProbs8, MaskWriter, copy_probs8

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

    def predict_step(self, batch: dict, batch_idx: int) -> HostProbs8:
        return copy_probs8(self.probs(batch["inputs"], self.size, batch.get("bbox")))  # the copy back overlaps


def batches_to_do(images: list[Path], done: set[str], batch_size: int) -> list[Path]:
    """The photos of every batch (of the whole sorted list) that holds a photo not yet written: a resumed run predicts
    in the batches of an uninterrupted one, so it writes the same bytes (a batch of other photos may round apart)."""
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    return [photo for batch in batches if any(p.name not in done for p in batch) for photo in batch]


def dice_table(images: list[Path], pred_dir: Path, masks: list[Path], threshold: float) -> pd.DataFrame:
    """Per-photo Kaggle Dice of written predictions against their masks -> DataFrame[image, car, angle, dice]."""
    rows = []
    for path, mask in progress(list(zip(images, masks)), "scoring the predictions", len(images)):
        pred = torch.from_numpy(read_probs8(pred_dir / f"{path.stem}.png") > probs_cut(threshold))
        truth = torch.from_numpy(read_mask(mask))
        dice = float(dice_per_image(pred[None, None], truth[None, None])[0])
        rows.append({"image": path.name, "car": car_id(path), "angle": angle_of(path), "dice": dice})
    return pd.DataFrame(rows)


def predict(images: list[Path], ckpts: list[Path], output_dir: Path, trainer_kwargs: dict, tta: str = "none",
            write: list[str] = ("png",), threshold: float = 0.5, batch_size: int = 4, num_workers: int | None = None,
            writer_threads: int = 4, bboxes: str | None = None, overwrite: bool = False, data_root: str = "",
            models: list | None = None, switches: dict | None = None) -> tuple[int, list[tuple[str, str]], bool]:
    """Predict the photos not yet written -> (photos predicted now, (name, error) of failed photos, is rank 0);
    `models`: the checkpoints (or ONNX files) already loaded; `switches`: model.channels_last / model.compile."""
    models = models or load_models(ckpts, switches)
    writer = MaskWriter(output_dir, list(write), threshold, writer_threads)
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[writer], logger=False)
    check_onnx_run(models, trainer.world_size)  # before anything is written
    wanted = settings(ckpts, tta, threshold, write, [m.geometry.key for m in models], data_root)
    prepare(output_dir, wanted, images, overwrite, trainer.is_global_zero)
    done = writer.skip = written_names(output_dir, write, images)
    todo = batches_to_do(images, done, batch_size)
    if not todo:
        return 0, [], True
    # the photos set the size (masks come out at the photo's size, whatever the model was trained at); one size
    # per run, as batches need it: the most common one, from the file headers
    size = pd.Series([photo_size(p) for p in progress(todo, "reading the photos' sizes", len(todo))]).mode()[0]
    stacked_dirs = {tuple(m.hparams.get("data", {}).get("stacked_dirs") or []) for m in models}
    if len(stacked_dirs) > 1:
        raise CarvanaError(f"the checkpoints were trained on different data.stacked_dirs ({sorted(stacked_dirs)}): "
                           f"ensemble checkpoints of one stage only")
    dirs = list(stacked_dirs.pop())
    stacked = find_stacked(todo, dirs) if dirs else None
    workers = default_workers(trainer.num_devices) if num_workers is None else num_workers
    dataset = PhotoDataset(todo, size, [m.geometry for m in models], stacked, car_boxes(models, bboxes, todo))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                        pin_memory=torch.cuda.is_available())
    trainer.predict(Ensemble(models, tta, size), dataloaders=loader, return_predictions=False)
    new = sum(p.name not in done for p in todo)
    return new - len(writer.errors), writer.errors, trainer.is_global_zero


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


def check_settings(cfg: dict) -> list[str]:
    """predict.py's keys checked before any model is read -> the outputs asked for (write as a list)."""
    write = [cfg["write"]] if isinstance(cfg["write"], str) else list(cfg["write"])
    if not write or any(w not in WRITES for w in write):
        raise CarvanaError(f"write={cfg['write']}: choose png, rle or [png, rle]")
    if cfg["tta"] not in TTAS:
        raise CarvanaError(f"unknown tta={cfg['tta']}: choose one of {', '.join(TTAS)}")
    check_threshold(cfg["threshold"])
    for key, least in (("batch_size", 1), ("writer_threads", 1), ("num_workers", 0)):
        value = cfg[key]
        if (value is not None or key != "num_workers") and (not isinstance(value, int) or value < least):
            raise CarvanaError(f"{key}={value} must be an integer >= {least}")
    return write


def run(cfg: dict) -> tuple[str, int]:
    """predict.py's job from its plain config -> (summary line for rank 0, exit status); see conf/predict.yaml."""
    check_allocation(cfg["trainer"])
    ckpts = find_checkpoints(cfg["ckpt"])
    write = check_settings(cfg)
    meta = read_checkpoint(ckpts[0], onnx=True)["hyper_parameters"].get("data") or {}
    models = load_models(ckpts, cfg.get("model"))  # every file whole and of this project, before any work
    root = Path(cfg["data"]["root"] or meta.get("root") or ".")
    output_dir = Path(cfg["output_dir"])
    if cfg["predict_on_val"]:
        if "png" not in write:
            raise CarvanaError("predict_on_val=true scores the written PNGs: use write=png or write=[png,rle]")
        fold = meta.get("fold") if cfg["fold"] is None else cfg["fold"]
        images = split(root, meta.get("image_dir", "train"), cfg["data"]["folds"] or meta.get("folds"), fold)[1]
        masks = find_masks(images, root / meta.get("val_mask_dir", "train_masks"))  # before the long run starts
    else:
        images = list_images(cfg["input_dir"] or root / "test")
    check_writable_dir(output_dir, "output_dir")
    count, errors, rank_zero = predict(
        images, ckpts, output_dir, trainer_kwargs(cfg["trainer"]), tta=cfg["tta"], write=write,
        threshold=cfg["threshold"], batch_size=cfg["batch_size"], num_workers=cfg["num_workers"],
        writer_threads=cfg["writer_threads"], bboxes=cfg["data"].get("bboxes"), overwrite=cfg["overwrite"],
        data_root=str(root), models=models)
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
