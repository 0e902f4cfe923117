"""Loggers by config (logger=[csv,tensorboard,wandb,mlflow]) and the validation overlays logged to TensorBoard."""

import contextlib
import io
import runpy
import sqlite3
import sys
from pathlib import Path
from unittest import mock

import pytest
from helpers import REPO, TINY_SIZE, result_of, run_train, train_args
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def test_overlays_are_logged_each_validation(carvana_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    result_of(run_train(train_args(carvana_root, out, "logger.images=3", "trainer.max_epochs=2",
                                   "trainer.limit_train_batches=2")))
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = sorted(tag for tag in events.Tags()["images"] if tag.startswith("overlays/"))
    assert len(tags) == 3  # three photos, the same ones at both validations
    for tag in tags:
        images = events.Images(tag)
        assert len(images) == 2 and images[0].step < images[1].step
        assert (images[0].height, images[0].width) == TINY_SIZE  # the photo's size: 96 wide is under 480


def test_no_overlays_with_images_0(carvana_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    result_of(run_train(train_args(carvana_root, out, "logger.images=0", "trainer.limit_train_batches=1")))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert not [tag for tag in events.Tags()["images"] if tag.startswith("overlays/")]


@pytest.mark.slow
def test_wandb_offline_and_mlflow_local_need_no_server(carvana_root: Path, tmp_path: Path):
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    out = tmp_path / "run"
    proc = run_train(train_args(carvana_root, out, "logger=[csv,wandb,mlflow]", "trainer.limit_train_batches=1"))
    result_of(proc)
    assert list((out / "wandb").glob("offline-run-*"))  # wandb sync can send it later
    with sqlite3.connect(out / "mlflow" / "mlflow.db") as db:  # MLflow's local SQLite store
        assert ("val_dice",) in db.execute("SELECT DISTINCT key FROM metrics").fetchall()
    assert (out / "csv" / "metrics.csv").is_file() and not (out / "tensorboard").exists()


def in_process(args: list[str], hidden: str | None = None) -> tuple[int, str]:
    """train.py's main here, with a package hidden as if it were not installed -> (exit status, stderr)."""
    err = io.StringIO()
    modules = {hidden: None} if hidden else {}
    with (mock.patch.object(sys, "argv", [str(REPO / "train.py"), *args]), mock.patch.dict(sys.modules, modules),
          contextlib.chdir(REPO), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO())):
        try:
            runpy.run_path(str(REPO / "train.py"), run_name="__main__")
            return 0, err.getvalue()
        except SystemExit as exit_:
            return exit_.code, err.getvalue()


def test_a_logger_without_its_package_is_one_line(carvana_root: Path, tmp_path: Path):
    code, err = in_process([*train_args(carvana_root, tmp_path / "run", "logger=[csv,wandb]"),
                            "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"], hidden="wandb")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and 'pip install -e ".[wandb]"' in lines[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_unknown_logger_lists_the_valid_ones(carvana_root: Path, tmp_path: Path):
    # one name: Hydra lists the group's options (for a list, logger=[csv,neptune], it only says it could not load it)
    proc = run_train(train_args(carvana_root, tmp_path / "run", "logger=neptune"), timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    options = proc.stderr.split("Available options", 1)[-1]
    assert all(name in options for name in ("csv", "tensorboard", "wandb", "mlflow"))
