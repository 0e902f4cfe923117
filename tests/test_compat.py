"""Checkpoints users already have keep working: one written by release 0.1's code (tests/fixtures/release-0.1, made
before the package was split by concept) loads, predicts what release 0.1 predicted, and resumes training."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import REPO, result_of, run_train, train_args

from carvana.data.io import read_probs8
from carvana.model.loading import load_module

FIXTURE = REPO / "tests" / "fixtures" / "release-0.1"
PHOTO = "b8e8cd4ea93d_01"


def test_release_01_checkpoint_predicts_what_it_predicted(tmp_path: Path):
    module = load_module(FIXTURE / "last.ckpt")
    assert module.hparams["encoder_name"] == "tu-test_efficientnet"
    (tmp_path / "in").mkdir()
    shutil.copy(FIXTURE / f"{PHOTO}.jpg", tmp_path / "in")
    out = tmp_path / "pred"
    proc = subprocess.run([sys.executable, "predict.py", f"ckpt={FIXTURE / 'last.ckpt'}",
                           f"input_dir={tmp_path / 'in'}", f"output_dir={out}", "trainer=cpu", "num_workers=0",
                           "trainer.enable_progress_bar=false",
                           f"hydra.run.dir={tmp_path / 'h'}"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    noise = [line for line in (proc.stdout + proc.stderr).splitlines() if "Tip:" in line or "LeafSpec" in line]
    assert not noise, noise  # Lightning's tips and its own deprecations stay off predict.py's screen
    now, then = read_probs8(out / f"{PHOTO}.png").astype(int), read_probs8(FIXTURE / f"{PHOTO}.png").astype(int)
    assert now.shape == then.shape == (64, 96)
    assert np.abs(now - then).max() <= 1, np.abs(now - then).max()  # one grey level: float rounding, nothing more
    assert now.std() > 5 and now.max() > 127  # a real (1-epoch) prediction, not a blank


def test_release_01_checkpoint_resumes_training(tmp_path: Path):
    from carvana.data.kfold import write_folds
    from carvana.synthetic import make_dataset

    root = make_dataset(tmp_path / "data", train_cars=2, test_cars=1, size=(64, 96), seed=0)
    write_folds(root / "metadata.csv", root / "folds.csv", n_folds=2, seed=80, stratify=None)
    out = tmp_path / "run"
    proc = run_train(train_args(root, out, f"ckpt_path={FIXTURE / 'last.ckpt'}", "trainer.max_epochs=2",
                                "model.encoder_name=tu-test_efficientnet", "model.decoder_channels=[16,8,8,8,8]",
                                "model.encoder_weights=null"))
    dice, ckpt = result_of(proc)
    assert 0 < dice <= 1 and ckpt.is_file()
    import torch

    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 1  # the second epoch ran: the first came from release 0.1's checkpoint
