"""Lightning's internals that a training run leans on, checked against pytorch-lightning 2.6.6: each workaround names
the upstream issue; tests/test_framework_contracts.py fails when an upgrade changes what it relies on."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from carvana.files import atomic_path

# the path-valued keys of ModelCheckpoint.state_dict() (2.6.6), rewritten when the run folder moved
CHECKPOINT_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")
# what Lightning's DDP launcher writes into its own process's environment (_SubprocessScriptLauncher, 2.6.6)
DDP_ENVIRONMENT = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose bookkeeping follows its run folder when the folder is moved or copied.

    Lightning drops the best score and the top-k of a checkpoint written under another dirpath, with a warning only
    (PR #12045 and #12225, since 1.6; still so in 2.6.6; Lightning #11379 and #15705): a resumed copy would then take
    a worse epoch for its best and keep a second best file beside the first. The paths that were in the old folder
    are moved to this one before Lightning reads them.
    """

    def load_state_dict(self, state_dict: dict) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and Path(old) != Path(self.dirpath):
            def here(path: str) -> str:
                return str(Path(self.dirpath) / Path(path).name) if path and Path(path).parent == Path(old) else path

            state_dict = {**state_dict, "dirpath": self.dirpath,
                          **{key: here(state_dict.get(key, "")) for key in CHECKPOINT_PATH_KEYS},
                          "best_k_models": {here(k): v for k, v in state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)


def restore_csv_log(logger: CSVLogger, rows: str) -> None:
    """Give `logger` back the metrics.csv text `rows` (its header first), to be appended to as if never stopped.

    Lightning's CSV writer deletes the metrics.csv it finds when it is created (PR #19446, 2.2; still so in 2.6.6)
    and has no way to resume a log: the writer is created first, the file written after it, and the writer's own
    header (`metrics_keys`, a public attribute of its private class) set to the restored one, so that it appends
    under it (it rewrites the file itself when a key is new).
    """
    writer = logger.experiment
    with atomic_path(writer.metrics_file_path) as tmp:
        tmp.write_bytes(rows.encode())
    writer.metrics_keys = rows.splitlines()[0].split(",") if rows else []


@contextlib.contextmanager
def ddp_job_scope() -> Iterator[None]:
    """Leave no process group and no DDP variables behind, so that the next job of a multirun launches its own ranks.

    Lightning's launcher writes DDP_ENVIRONMENT into this process; left there, the next job's LightningEnvironment
    would take LOCAL_RANK for an external launcher's and start no ranks. Lightning destroys its process group only
    at exit (PR #19931, 2.3; still so in 2.6.6).
    """
    before = {k: os.environ.get(k) for k in DDP_ENVIRONMENT}
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
