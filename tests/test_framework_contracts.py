"""What carvana.training.compat (and AugmentSampler) rely on in Lightning and Hydra, checked against the installed
versions: each test fails with what changed and what to do, when an upgrade moves the ground under a workaround or
does the job itself (then: use Lightning's or Hydra's, delete ours). Tiny objects, no training of the real model."""

import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning_fabric.plugins.environments import LightningEnvironment
from lightning_fabric.strategies.launchers import subprocess_script
from omegaconf import open_dict
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from carvana.data.dataset import AugmentSampler
from carvana.training.compat.hydra import relaunch_job_not_sweep
from carvana.training.compat.lightning import DDP_ENVIRONMENT, RunCheckpoint, ddp_job_scope, restore_csv_log

COMPAT = "carvana/training/compat/lightning.py"
# ModelCheckpoint.state_dict() in pytorch-lightning 2.6.6: RunCheckpoint moves the paths among them
CHECKPOINT_STATE = {"monitor", "best_model_score", "best_model_path", "current_score", "dirpath", "best_k_models",
                    "kth_best_model_path", "kth_value", "last_model_path"}


# --- RunCheckpoint: Lightning drops a moved run's best (PR #12045, #12225) -------------------------------------------

def moved_state(old: Path) -> dict:
    """The state of a best-by-val_dice checkpoint written in `old`, whose best scored 0.5."""
    best, last, score = str(old / "best.ckpt"), str(old / "last.ckpt"), torch.tensor(0.5)
    state = RunCheckpoint(dirpath=old, monitor="val_dice", mode="max").state_dict()
    state.update(best_model_score=score, best_model_path=best, kth_best_model_path=best, kth_value=score,
                 last_model_path=last, best_k_models={best: score})
    return state


def test_checkpoint_state_holds_the_keys_runcheckpoint_moves(tmp_path: Path):
    keys = set(ModelCheckpoint(dirpath=tmp_path).state_dict())
    assert keys == CHECKPOINT_STATE, (
        f"ModelCheckpoint.state_dict() changed: new keys {sorted(keys - CHECKPOINT_STATE)}, gone "
        f"{sorted(CHECKPOINT_STATE - keys)}. RunCheckpoint ({COMPAT}) moves the paths of CHECKPOINT_PATH_KEYS and "
        "best_k_models into a moved run folder: add any new key that holds a path there, then update this set")


def test_a_moved_run_folder_keeps_its_best_score_and_paths(tmp_path: Path):
    new = (tmp_path / "copy").resolve()
    checkpoint = RunCheckpoint(dirpath=new, monitor="val_dice", mode="max")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning's "dirpath has changed" would mean it dropped the state
        checkpoint.load_state_dict(moved_state((tmp_path / "run").resolve()))
    assert checkpoint.best_model_score == 0.5
    assert (checkpoint.best_model_path, checkpoint.kth_best_model_path) == (str(new / "best.ckpt"),) * 2
    assert checkpoint.last_model_path == str(new / "last.ckpt")
    assert checkpoint.best_k_models == {str(new / "best.ckpt"): 0.5}


def test_lightning_still_drops_the_best_of_a_moved_run_folder(tmp_path: Path):
    plain = ModelCheckpoint(dirpath=(tmp_path / "copy").resolve(), monitor="val_dice", mode="max")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain.load_state_dict(moved_state((tmp_path / "run").resolve()))
    assert plain.best_model_score is None and any("dirpath has changed" in str(w.message) for w in caught), (
        "Lightning's ModelCheckpoint now keeps the best score of a checkpoint written under another dirpath "
        f"(PR #12045 undone): check whether it also moves its paths, and if so delete RunCheckpoint ({COMPAT})")


# --- restore_csv_log: Lightning's CSV writer deletes the log it finds (PR #19446) ------------------------------------

def csv_file(root: Path) -> Path:
    return root / "csv" / "metrics.csv"


def test_a_restored_csv_log_is_appended_to_as_if_never_stopped(tmp_path: Path):
    rows = "epoch,step,train_loss,val_dice\r\n0,7,0.25,0.5\r\n"
    csv_file(tmp_path).parent.mkdir()
    csv_file(tmp_path).write_text("stale\n")  # what the stopped run logged after its checkpoint
    logger = CSVLogger(tmp_path, name="csv", version="")
    restore_csv_log(logger, rows)
    logger.log_metrics({"epoch": 1, "val_dice": 0.75}, step=15)  # not every column: appended under the header
    logger.save()
    why = (f"Lightning's CSV writer changed (metrics_file_path, metrics_keys, when it deletes or appends): "
           f"restore_csv_log ({COMPAT}) must give it back the restored log and header")
    assert csv_file(tmp_path).read_bytes().decode() == rows + "1,15,,0.75\r\n", why
    logger.log_metrics({"epoch": 1, "lr": 0.125}, step=16)  # a new key: the writer rewrites its header
    logger.save()
    expected = "epoch,lr,step,train_loss,val_dice\r\n0,,7,0.25,0.5\r\n1,,15,,0.75\r\n1,0.125,16,,\r\n"
    assert csv_file(tmp_path).read_bytes().decode() == expected, why


def test_lightning_still_deletes_the_csv_log_it_finds(tmp_path: Path):
    csv_file(tmp_path).parent.mkdir()
    csv_file(tmp_path).write_text("epoch,step\r\n0,7\r\n")
    CSVLogger(tmp_path, name="csv", version="").experiment  # noqa: B018 (creating the writer is the point)
    assert not csv_file(tmp_path).exists(), (
        "Lightning's CSVLogger now keeps the metrics.csv it finds (PR #19446 undone): if it appends to it under its "
        f"header, MetricsHistory (carvana/training/resume.py) may drop restore_csv_log ({COMPAT})")


# --- ddp_job_scope and relaunch_job_not_sweep: Lightning's DDP launcher (subprocess_script.py) -----------------------

def launch_rank_one(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], set[str]]:
    """Lightning's launcher starting rank 1 of 2 (the process not started) -> (its command, the variables it wrote
    into this process), inside ddp_job_scope."""
    for key in DDP_ENVIRONMENT:
        monkeypatch.delenv(key, raising=False)
    before = dict(os.environ)
    popen = mock.MagicMock()
    monkeypatch.setattr(subprocess_script.subprocess, "Popen", popen)
    with ddp_job_scope():
        subprocess_script._SubprocessScriptLauncher(LightningEnvironment(), num_processes=2,
                                                    num_nodes=1)._call_children_scripts()
        written = {key for key in os.environ if os.environ[key] != before.get(key)}
        assert LightningEnvironment().creates_processes_externally  # why the scope must take them away again
    assert dict(os.environ) == before, "ddp_job_scope left DDP variables behind"
    return list(popen.call_args.args[0]), written


def test_the_ddp_launcher_writes_only_what_the_job_scope_takes_back(monkeypatch: pytest.MonkeyPatch):
    _, written = launch_rank_one(monkeypatch)
    assert written and written <= set(DDP_ENVIRONMENT), (
        f"Lightning's DDP launcher now writes {sorted(written)} into its process: add the new ones to DDP_ENVIRONMENT "
        f"({COMPAT}), or the next job of a multirun may take them for an external launcher's")


@pytest.fixture
def multirun_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """HydraConfig as Hydra sets it for job 1 of `train.py -m fold=0,1 lr=0.2` -> the job's output folder."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("fold: 0\nlr: 0.1\n")
    with initialize_config_dir(config_dir=str(tmp_path / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["fold=1", "lr=0.2"], return_hydra_config=True)
    job = tmp_path / "multirun" / "fold1"
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.runtime.output_dir, cfg.hydra.runtime.cwd = str(job), str(tmp_path)
        cfg.hydra.run.dir = str(tmp_path / "outputs" / "now")
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "fold=0,1", "lr=0.2"])
    instance = HydraConfig.instance()
    saved = instance.cfg
    instance.set_config(cfg)
    try:
        yield job
    finally:
        instance.cfg = saved


def test_a_ddp_rank_of_a_multirun_job_reruns_that_job_in_its_folder(multirun_job: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    relaunch_job_not_sweep()
    command, _ = launch_rank_one(monkeypatch)
    assert len(command) - 5 in (2, 3) and command[-5:] == [  # python train.py, or python -m <module>
        "fold=1", "lr=0.2", f'hydra.run.dir="{multirun_job}"', "hydra.job.name=train_ddp_process_1",
        "hydra.output_subdir=null"], (
        f"Lightning's DDP launcher now builds rank 1's command otherwise: {command}. relaunch_job_not_sweep "
        "(carvana/training/compat/hydra.py) gives it sys.argv and HydraConfig's run.dir: see what it reads now")


def test_lightning_still_relaunches_the_whole_sweep(multirun_job: Path, monkeypatch: pytest.MonkeyPatch):
    command, _ = launch_rank_one(monkeypatch)
    assert "fold=0,1" in command and f'hydra.run.dir="{multirun_job}"' not in command, (
        f"Lightning's DDP launcher now re-runs only this job of a multirun, in its folder ({command}: PR #18175 "
        "merged?): delete relaunch_job_not_sweep (carvana/training/compat/hydra.py)")


# --- AugmentSampler: Lightning sets a resumed run's sampler epoch after its first batch (#21938) --------------------

class Keys(Dataset):
    """The (index, seed) keys the sampler gives, as the batch."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        return torch.tensor(key)


class Tiny(pl.LightningModule):
    """A 1-weight model that never moves; its loader records what Lightning did before each pass and what it drew."""

    def __init__(self, calls: list, drawn: list) -> None:
        super().__init__()
        self.weight, self.calls, self.drawn = torch.nn.Parameter(torch.zeros(1)), calls, drawn

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.drawn.append((self.current_epoch, batch.tolist()))
        return (self.weight * 0).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self) -> DataLoader:
        calls, trainer = self.calls, self.trainer

        class Recording(AugmentSampler):
            def set_epoch(self, epoch: int) -> None:
                calls.append(("set_epoch", epoch))
                super().set_epoch(epoch)

            def __iter__(self) -> Iterator[tuple[int, int]]:
                calls.append(("first batch at step", trainer.global_step))
                yield from super().__iter__()

        # a worker, as train.py's loaders have: Lightning's too-late set_epoch is only then (#21938)
        return DataLoader(Keys(), batch_size=2, sampler=Recording(Keys(), 1, 0, 80, lambda: trainer.global_step),
                          num_workers=1)


def fit(epochs: int, ckpt: Path | None = None, save: Path | None = None) -> tuple[list, list]:
    """A Tiny run of `epochs` epochs (2 steps each), resumed from `ckpt` -> (its loader's calls, its draws)."""
    calls, drawn = [], []
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few workers, a tiny epoch
        trainer.fit(Tiny(calls, drawn), ckpt_path=ckpt)
    if save:
        trainer.save_checkpoint(save)
    return calls, drawn


def test_a_resumed_run_restores_the_step_before_its_first_batch(tmp_path: Path):
    _, straight = fit(2)
    fit(1, save=tmp_path / "epoch0.ckpt")
    calls, resumed = fit(2, ckpt=tmp_path / "epoch0.ckpt")
    assert calls[0] == ("first batch at step", 2), (
        f"Lightning's resumed run drew its first batch before restoring the global step ({calls}): AugmentSampler "
        "(carvana/data/dataset.py) seeds each pass from the step, and would repeat the first pass's draws")
    passes = [[batch for epoch, batch in straight if epoch == e] for e in (0, 1)]
    assert passes[0] != passes[1]  # each pass its own order and draws
    assert [batch for _, batch in resumed] == passes[1]  # the resumed pass draws what an uninterrupted run draws


def test_lightning_still_sets_a_resumed_run_sampler_epoch_after_its_first_batch(tmp_path: Path):
    fit(1, save=tmp_path / "epoch0.ckpt")
    calls, _ = fit(2, ckpt=tmp_path / "epoch0.ckpt")
    assert calls.index(("set_epoch", 1)) > 0, (
        f"Lightning now sets a resumed run's sampler epoch before its first batch ({calls}: #21938 fixed): "
        "AugmentSampler (carvana/data/dataset.py) can follow set_epoch instead of the global step")
