"""One training run from a composed Hydra config: data, model, callbacks, loggers, Lightning Trainer."""

import contextlib
import inspect
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import (
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    RichProgressBar,
    TQDMProgressBar,
)
from pytorch_lightning.loggers import CSVLogger

from carvana import CarvanaError
from carvana.checkpoints import AtomicCheckpointIO, MetricsHistory, checkpointing
from carvana.data import CarvanaDataModule
from carvana.folds import write_folds
from carvana.geometry import Geometry
from carvana.hardware import trainer_kwargs
from carvana.io import check_threshold, remove_dead_temporaries
from carvana.loggers import build_loggers, finish_loggers
from carvana.module import SegModule, read_checkpoint
from carvana.network import resolve_preprocessing
from carvana.overlays import ValidationOverlays
from carvana.slurm import check_allocation
from carvana.transforms import augmentations

KAGGLE = "kaggle competitions download -c carvana-image-masking-challenge"


def check_data(data: DictConfig) -> None:
    """The synthetic set (data=synthetic) is generated when missing; real data that is not there gets the one-line
    hint of where it goes and how to get it. Nothing is written into a folder the user named that is not empty."""
    root = Path(data.root)
    if "generate" in data:
        from carvana.synthetic import is_complete, make_dataset  # the renderer only when the demo asks for it

        if not is_complete(root):
            gen = data.generate
            print(f"generating the synthetic Carvana set in {root} ...", flush=True)
            make_dataset(root, gen.train_cars, gen.test_cars, (gen.height, gen.width), gen.seed)
        if not Path(data.folds).exists():
            # a few cars: any stratification class would hold fewer cars than folds
            write_folds(root / "metadata.csv", data.folds, stratify=None)
        return
    if not (root / data.image_dir).is_dir():
        raise CarvanaError(f"no Carvana data in {root} (data.root): get it with `{KAGGLE}` and unzip train.zip, "
                           f"train_masks.zip, test.zip and the csvs into {root}; or run the demo on the synthetic set: "
                           "python train.py data=synthetic (or make demo)")


def relaunch_job_not_sweep() -> None:
    """Make Lightning's DDP launcher re-run this job, not the whole multirun, in this job's own directory.

    Lightning starts ranks 1.. with sys.argv plus hydra.run.dir=<run.dir>: under -m that re-launches every job of
    the sweep, each in a new directory. Give it this job's overrides and output directory instead.
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    OmegaConf.set_readonly(hydra_cfg, False)
    with open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


@contextlib.contextmanager
def ddp_job_scope() -> Iterator[None]:
    """Leave no process group and no DDP variables behind, so the next job of a multirun launches its own ranks.

    Lightning's launcher sets LOCAL_RANK, WORLD_SIZE, ... in this process; left there, the next job would take
    them for an external launcher's and start no ranks.
    """
    keys = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
    before = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_settings(cfg: DictConfig) -> None:
    """Values refused when the config is read, before any data is touched."""
    check_threshold(cfg.model.threshold, "model.threshold")
    limits = (("data.batch_size", cfg.data.batch_size, 1, int), ("data.num_workers", cfg.data.num_workers, 0, int),
              ("checkpoint.every_minutes", cfg.checkpoint.every_minutes, 1e-3, (int, float)))
    known = inspect.signature(augmentations).parameters
    unknown = sorted(set(cfg.data.augment) - set(known))
    if unknown:
        raise CarvanaError(f"unknown data.augment key {unknown[0]}: choose among {', '.join(known)}")
    if cfg.optim.ema_decay is not None and not 0 < cfg.optim.ema_decay < 1:
        raise CarvanaError(f"optim.ema_decay={cfg.optim.ema_decay} must lie between 0 and 1 (e.g. 0.99), or null")
    for key, value, least, kind in limits:
        if value is None and key == "data.num_workers":  # null: the CPUs shared by the devices
            continue
        if isinstance(value, bool) or not isinstance(value, kind) or value < least:
            raise CarvanaError(f"{key}={value} must be a number >= {least}")


def geometry_of(data: DictConfig) -> Geometry:
    """The input mode of the data config (carvana.geometry)."""
    return Geometry(_list(data.crop_size), _list(data.input_size), boxes=data.bboxes is not None)


def build_module(cfg: DictConfig, image_size: list[int] | None = None) -> SegModule:
    """The SegModule of a config: plain values only, so its checkpoint rebuilds it without the config."""
    m, geometry = cfg.model, geometry_of(cfg.data)
    preprocessing = OmegaConf.to_container(cfg.preprocessing)
    module = SegModule(
        arch=m.arch, encoder_name=m.encoder_name, encoder_weights=m.encoder_weights,
        decoder_channels=list(m.decoder_channels), in_channels=3 + len(cfg.data.stacked_dirs or []),
        preprocessing=resolve_preprocessing(preprocessing, m.encoder_name, m.encoder_weights),
        crop_size=_list(geometry.crop_size), input_size=_list(geometry.input_size), boxes=geometry.boxes,
        loss=OmegaConf.to_container(cfg.loss),
        lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, scheduler=cfg.optim.scheduler, min_lr=cfg.optim.min_lr,
        plateau_patience=cfg.optim.plateau_patience, cyclic=OmegaConf.to_container(cfg.optim.cyclic),
        freeze_encoder_epochs=m.freeze_encoder_epochs, freeze_encoder_until=m.freeze_encoder_until,
        threshold=m.threshold, bn_recalibration_batches=m.bn_recalibration_batches,
        channels_last=m.channels_last, compile=m.compile, val_tta=m.val_tta,
        data={"root": str(cfg.data.root), "folds": str(cfg.data.folds), "fold": cfg.fold,
              "image_dir": cfg.data.image_dir, "val_mask_dir": cfg.data.val_mask_dir, "image_size": image_size,
              "stacked_dirs": [str(d) for d in cfg.data.stacked_dirs or []],
              "bboxes": None if cfg.data.bboxes is None else str(cfg.data.bboxes)},
    )
    if m.init_from:
        module.load_weights(m.init_from)
    return module


def build_datamodule(cfg: DictConfig) -> CarvanaDataModule:
    """The fold's data, every input checked now, before the Trainer starts other processes."""
    d = cfg.data
    dm = CarvanaDataModule(
        root=d.root, folds=d.folds, fold=cfg.fold, geometry=geometry_of(d), image_dir=d.image_dir,
        train_mask_dir=d.train_mask_dir, val_mask_dir=d.val_mask_dir, batch_size=d.batch_size,
        num_workers=d.num_workers,
        augment=OmegaConf.to_container(d.augment), stacked_dirs=list(d.stacked_dirs or []), bboxes=d.bboxes,
        pseudo={"dir": d.pseudo_dir, "image_dir": d.pseudo_image_dir, "ratio": d.pseudo_ratio,
                "min_confidence": d.pseudo_min_confidence},
        seed=cfg.seed,
    )
    dm.setup()
    return dm


def train(cfg: DictConfig, out_dir: str | Path) -> tuple[float, str, bool]:
    """Train one fold; return (best val_dice, best checkpoint path, whether this process is rank 0)."""
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # a key an experiment requires (???) first
    check_settings(cfg)
    check_allocation(cfg.trainer)
    check_data(cfg.data)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    out_dir = Path(out_dir)
    remove_dead_temporaries(out_dir / "checkpoints")
    # a run folder that holds a last.ckpt resumes from it: a requeued cluster job, a run started again by hand
    last = out_dir / "checkpoints" / "last.ckpt"
    ckpt_path = cfg.ckpt_path or (str(last) if last.is_file() else None)
    if ckpt_path:
        read_checkpoint(ckpt_path, key="ckpt_path")  # a missing or foreign file fails here, in one line
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm.image_size)
    relaunch_job_not_sweep()
    loggers = build_loggers(OmegaConf.to_container(cfg.logger), out_dir)
    trainer = pl.Trainer(**trainer_kwargs(OmegaConf.to_container(cfg.trainer)), logger=loggers,
                         callbacks=callbacks(cfg, out_dir, loggers), plugins=[AtomicCheckpointIO()],
                         default_root_dir=out_dir)
    if ckpt_path and trainer.is_global_zero:
        print(f"resuming from {ckpt_path}", flush=True)
    with ddp_job_scope():
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    finish_loggers(loggers)
    checkpoint = trainer.checkpoint_callback
    score = checkpoint.best_model_score
    return (float(score) if score is not None else float("nan")), checkpoint.best_model_path, trainer.is_global_zero


def callbacks(cfg: DictConfig, out_dir: Path, loggers: list) -> list[pl.Callback]:
    """The best checkpoint by val_dice and last.ckpt (also every checkpoint.every_minutes), the CSV log carried in
    them, the LR at the scheduler's interval, early stopping, validation overlays, the weights' moving average
    (optim.ema_decay), a bar."""
    found = [
        *checkpointing(out_dir / "checkpoints", f"{cfg.model.encoder_name}-fold{cfg.fold}-" +
                       "epoch{epoch:02d}-dice{val_dice:.4f}", cfg.checkpoint.every_minutes),
        *[MetricsHistory(logger) for logger in loggers if isinstance(logger, CSVLogger)],
        LearningRateMonitor(),  # logging_interval=None: per step for the cyclic schedule, per epoch for cosine
        EarlyStopping(monitor="val_dice", mode="max", patience=cfg.early_stopping_patience),
        ValidationOverlays(cfg.logger.images),
    ]
    if cfg.optim.ema_decay:  # validate and checkpoint an exponential moving average of the weights
        found.append(EMAWeightAveraging(decay=cfg.optim.ema_decay))
    if cfg.trainer.get("enable_progress_bar", True):
        found.append(RichProgressBar() if cfg.progress_bar == "rich" else TQDMProgressBar())
    return found


def _list(value: object) -> list | None:
    return None if value is None else list(value)
