"""What a training run keeps so that, stopped anywhere and started again, it ends as an uninterrupted run does:
checkpoints written whole or not at all, last.ckpt also every few minutes, and its metrics log carried in them."""

import signal
from datetime import timedelta
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO

from carvana import CarvanaError
from carvana.files import atomic_path
from carvana.training.compat.lightning import RunCheckpoint, restore_csv_log


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary sibling and renamed: a kill leaves the previous last.ckpt whole. (Lightning's
    own save goes through the system's temporary folder, on a cluster often another file system: a plain copy.)"""

    def save_checkpoint(self, checkpoint: dict, path: str | Path, storage_options: object = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


# what a resumed run must share with the run it resumes: the hyperparameter, and the key users set it with
RESUMED_KEYS = {"arch": "model.arch", "encoder_name": "model.encoder_name (encoder=)",
                "decoder_channels": "model.decoder_channels", "in_channels": "data.stacked_dirs",
                "preprocessing": "preprocessing", "crop_size": "data.crop_size", "input_size": "data.input_size",
                "boxes": "data.bboxes", "loss": "loss", "lr": "optim.lr", "weight_decay": "optim.weight_decay",
                "scheduler": "optim.scheduler", "min_lr": "optim.min_lr", "plateau_patience": "optim.plateau_patience",
                "cyclic": "optim.cyclic", "freeze_encoder_epochs": "model.freeze_encoder_epochs",
                "freeze_encoder_until": "model.freeze_encoder_until", "threshold": "model.threshold",
                "bn_recalibration_batches": "model.bn_recalibration_batches", "val_tta": "model.val_tta"}


def check_resumed_settings(path: str | Path, saved: dict, now: dict) -> None:
    """Resuming restores the weights, the optimizer and the schedule of `path`: settings that differ from the ones it
    was trained with would be ignored or break the load. One line naming every such key."""
    differ = [f"{key} {saved[name]!r} -> {now[name]!r}" for name, key in RESUMED_KEYS.items()
              if name in saved and name in now and _plain(saved[name]) != _plain(now[name])]
    if differ:
        raise CarvanaError(f"cannot resume {path}: it was trained with other settings ({'; '.join(differ)}): "
                           "give them as they were, start a new run folder (hydra.run.dir=...), or fine-tune from its "
                           "weights with model.init_from=")


def _plain(value: object) -> object:
    """Lists and tuples alike (a checkpoint keeps lists, a Geometry tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def checkpointing(directory: Path, best_name: str, every_minutes: float) -> list[ModelCheckpoint]:
    """The best checkpoint by val_dice (named `best_name`), last.ckpt at every epoch's end (Lightning's save_last
    writes it only when the best changed), and last.ckpt every `every_minutes` of training within an epoch too: a
    preempted job loses at most that much."""
    return [
        RunCheckpoint(dirpath=directory, monitor="val_dice", mode="max", filename=best_name,
                      auto_insert_metric_name=False),
        RunCheckpoint(dirpath=directory, filename="last", monitor=None, enable_version_counter=False),
        RunCheckpoint(dirpath=directory, filename="last", monitor=None, enable_version_counter=False,
                      train_time_interval=timedelta(minutes=every_minutes)),
    ]


class MetricsHistory(pl.Callback):
    """csv/metrics.csv as an uninterrupted run writes it, across resumes: the rows logged up to a checkpoint travel in
    it, and a run resumed from it starts from those rows. (Lightning's CSVLogger deletes the log of a run folder it
    finds, compat.lightning.restore_csv_log; rows a killed run logged after its last checkpoint would otherwise be
    logged twice.)"""

    def __init__(self, logger: CSVLogger) -> None:
        self.logger, self.rows = logger, None

    def state_dict(self) -> dict:
        path = Path(self.logger.log_dir) / "metrics.csv"
        return {"metrics_csv": path.read_bytes().decode() if path.is_file() else ""}  # its \r\n line ends kept

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = state_dict.get("metrics_csv")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # right after the checkpoint is restored, before anything is logged: also when the run it resumes had already
        # ended (killed after its last checkpoint, or a finished run started again), where no training starts
        if self.rows is None or not trainer.is_global_zero:
            return
        restore_csv_log(self.logger, self.rows)


class Stopped(Exception):
    """train.py stopped by SIGTERM: what it saved and how to go on (main prints it, and exits 143)."""


class SaveOnSigterm(pl.Callback):
    """On SIGTERM (a container stop, `timeout`, scancel, SLURM's requeue) Lightning ends the current batch and raises
    SIGTERMException, which exits 0 (it is a SystemExit); DataLoader workers that got the signal too (`timeout`
    signals the process group) make the loader raise first. last.ckpt is written there, mid-epoch too, and the run
    ends as Stopped, so that a `train.py && predict.py` chain does not take it for a finished run."""

    def __init__(self, last: Path) -> None:
        self.last, self.saved = last, False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not trainer.received_sigterm or trainer.sanity_checking or trainer.global_step == 0:
            return
        if hasattr(signal, "SIGCHLD"):  # torch's handler raises for each dying worker, in the middle of the save
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        trainer.save_checkpoint(self.last)  # every rank takes part; rank 0 writes
        self.saved = True

    def stopped(self, trainer: pl.Trainer, run_dir: Path) -> Stopped:
        """The line that says where the run stopped, what holds it, and how to resume it."""
        where = f"stopped by SIGTERM at epoch {trainer.current_epoch}, step {trainer.global_step}"
        resume = f"resume with python train.py hydra.run.dir={run_dir}"
        if self.saved:
            return Stopped(f"{where}: saved {self.last}; {resume}")
        if self.last.is_file():
            return Stopped(f"{where}: not saved again; {self.last} holds the run up to its last save; {resume}")
        return Stopped(f"{where}: nothing saved yet; the same command starts the run again")
