"""What a training run keeps so that, stopped anywhere and started again, it ends as an uninterrupted run does:
checkpoints written whole or not at all, last.ckpt also every few minutes, and its metrics log carried in them."""

from datetime import timedelta
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO

from carvana.files import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary sibling and renamed: a kill leaves the previous last.ckpt whole. (Lightning's
    own save goes through the system's temporary folder, on a cluster often another file system: a plain copy.)"""

    def save_checkpoint(self, checkpoint: dict, path: str | Path, storage_options: object = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def checkpointing(directory: Path, best_name: str, every_minutes: float) -> list[ModelCheckpoint]:
    """The best checkpoint by val_dice (named `best_name`), last.ckpt at every epoch's end (Lightning's save_last
    writes it only when the best changed), and last.ckpt every `every_minutes` of training within an epoch too: a
    preempted job loses at most that much."""
    return [
        ModelCheckpoint(dirpath=directory, monitor="val_dice", mode="max", filename=best_name,
                        auto_insert_metric_name=False),
        ModelCheckpoint(dirpath=directory, filename="last", monitor=None, enable_version_counter=False),
        ModelCheckpoint(dirpath=directory, filename="last", monitor=None, enable_version_counter=False,
                        train_time_interval=timedelta(minutes=every_minutes)),
    ]


class MetricsHistory(pl.Callback):
    """csv/metrics.csv as an uninterrupted run writes it, across resumes: the rows logged up to a checkpoint travel in
    it, and a run resumed from it starts from those rows. (Lightning's CSVLogger deletes the log of a run folder it
    finds; rows a killed run logged after its last checkpoint would otherwise be logged twice.)"""

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
        writer = self.logger.experiment  # CSVLogger deletes the metrics.csv it finds when it creates its writer
        with atomic_path(writer.metrics_file_path) as tmp:
            tmp.write_bytes(self.rows.encode())
        # the writer appends under the header it knows: the restored one (it rewrites the file when a key is new)
        writer.metrics_keys = self.rows.splitlines()[0].split(",") if self.rows else []
