"""The callbacks of a training run: checkpoints (carvana.training.resume), the CSV log carried in them, the learning
rate, early stopping, validation overlays in TensorBoard, the weights' moving average, a progress bar."""

import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import (
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    RichProgressBar,
    TQDMProgressBar,
)
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from carvana.data.io import read_image
from carvana.model.losses import dice_per_image
from carvana.report.overlays import overlay
from carvana.training.resume import MetricsHistory, checkpointing


def callbacks(cfg: dict, out_dir: Path, loggers: list) -> list[pl.Callback]:
    """The best checkpoint by val_dice and last.ckpt (also every checkpoint.every_minutes), the CSV log carried in
    them, the LR at the scheduler's interval, early stopping, validation overlays, the weights' moving average
    (optim.ema_decay), a bar; `cfg`: the run's plain settings."""
    found = [
        *checkpointing(out_dir / "checkpoints", f"{cfg['model']['encoder_name']}-fold{cfg['fold']}-" +
                       "epoch{epoch:02d}-dice{val_dice:.4f}", cfg["checkpoint"]["every_minutes"]),
        *[MetricsHistory(logger) for logger in loggers if isinstance(logger, CSVLogger)],
        LearningRateMonitor(),  # logging_interval=None: per step for the cyclic schedule, per epoch for cosine
        EarlyStopping(monitor="val_dice", mode="max", patience=cfg["early_stopping_patience"]),
        ValidationOverlays(cfg["logger"]["images"]),
    ]
    if cfg["optim"]["ema_decay"]:  # validate and checkpoint an exponential moving average of the weights
        found.append(EMAWeightAveraging(decay=cfg["optim"]["ema_decay"]))
    if cfg["trainer"].get("enable_progress_bar", True):
        found.append(RichProgressBar() if cfg["progress_bar"] == "rich" else TQDMProgressBar())
    return found


class ValidationOverlays(pl.Callback):
    """At each validation, `count` validation photos spread over the set (the same every epoch) logged to TensorBoard
    as overlays (tag overlays/<photo>), the photo's Dice in the caption. Rank 0, after the validation."""

    def __init__(self, count: int, width: int = 480) -> None:
        self.count, self.width, self.seconds = count, width, 0.0

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        board = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if self.count <= 0 or trainer.sanity_checking or not trainer.is_global_zero or board is None:
            return
        start = time.perf_counter()
        dataset = trainer.datamodule.val_set
        for index in np.unique(np.linspace(0, len(dataset) - 1, self.count).round().astype(int)):
            item = dataset[int(index)]
            boxes = item["bbox"][None].to(pl_module.device) if "bbox" in item else None
            with torch.no_grad():
                probs, _ = pl_module.val_probs(item["image"][None].to(pl_module.device), item["mask"].shape[-2:], boxes)
            pred = (probs > pl_module.hparams.threshold).float().cpu()
            dice = float(dice_per_image(pred, item["mask"][None])[0])
            pred, truth = pred[0, 0].numpy().astype(np.uint8), item["mask"][0].numpy().astype(np.uint8)
            caption = [f"{item['name']}  dice {dice:.4f}  epoch {trainer.current_epoch}"]
            photo = read_image(dataset.images[int(index)])
            tile = overlay(photo, pred, truth, min(self.width, photo.shape[1]), caption)
            board.experiment.add_image(f"overlays/{Path(item['name']).stem}", tile, trainer.global_step,
                                       dataformats="HWC")
        self.seconds += time.perf_counter() - start  # what the overlays cost, next to the validation's own time
