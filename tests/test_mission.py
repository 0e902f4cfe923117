"""The mission's own commands, as written, on a real Carvana layout in data/carvana (only size/epoch keys added to fit
a CPU, and no download): one fold, five folds, their ensemble's full-size test masks, and Kaggle's submission."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, RESULT_LINE

from carvana.data.io import read_probs8
from carvana.data.rle import rle_decode

# what fits a CPU in a test: a tiny input and one short epoch; no network: encoder from scratch
FIT_A_CPU = ["model.encoder_weights=null", "data.crop_size=null", "data.input_size=[64,96]", "trainer.max_epochs=1",
             "trainer.enable_progress_bar=false"]
# cars of the repository's folds.csv for folds 0, 3 and 4, which the real photos at hand (folds 1 and 2) lack
STAND_INS = {"0789bed99cb8": range(1, 5), "0ce66b539f52": range(5, 9), "08a646be6b30": range(9, 13)}
REAL_CAR = "0cdf5b5d0ce1"  # fold 2, its angles 13..16 keep its own name


@pytest.fixture(scope="module")
def workdir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone's working folder: folds.csv, and data/carvana in Kaggle's layout from the real files of ../shared:
    real photos and GIF masks under Kaggle names (each fold holds a car), 16 real test photos, metadata.csv, and
    sample_submission.csv of those 16 in Kaggle's order."""
    work = tmp_path_factory.mktemp("clone")
    shutil.copy(REPO / "folds.csv", work)
    root, real = work / "data" / "carvana", shared_data / "real"
    for sub in ("train", "train_masks", "test"):
        (root / sub).mkdir(parents=True)
    names = {f"{REAL_CAR}_{a:02d}": f"{car}_{a:02d}" for car, angles in STAND_INS.items() for a in angles}
    for photo in sorted((real / "train").glob("*.jpg")):
        name = names.get(photo.stem, photo.stem)
        shutil.copy(photo, root / "train" / f"{name}.jpg")
        shutil.copy(real / "train_masks" / f"{photo.stem}_mask.gif", root / "train_masks" / f"{name}_mask.gif")
    for photo in sorted((real / "val" / "train").glob("*.jpg")):  # two more real cars, folds 1 and 2
        shutil.copy(photo, root / "train")
        shutil.copy(real / "val" / "train_masks" / f"{photo.stem}_mask.gif", root / "train_masks")
    for photo in (real / "test").glob("*.jpg"):
        shutil.copy(photo, root / "test")
    shutil.copy(shared_data / "metadata.csv", root)
    sample = pd.read_csv(shared_data / "sample_submission.csv")
    sample[sample.img.isin([p.name for p in (root / "test").iterdir()])].to_csv(root / "sample_submission.csv",
                                                                              index=False)
    return work


def run(work: Path, script: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """python SCRIPT ARGS in the clone's working folder, as a user types it."""
    proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=work, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"{script} {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_the_four_mission_commands_on_a_real_layout(workdir: Path):
    # python train.py encoder=resnet50 fold=1
    line = run(workdir, "train.py", "encoder=resnet50", "fold=1", *FIT_A_CPU).stdout.strip().splitlines()[-1]
    match = RESULT_LINE.match(line)
    assert match and Path(workdir / match["ckpt"]).is_file(), line
    assert "resnet50-fold1-" in match["ckpt"]

    # python train.py -m fold=0,1,2,3,4
    out = run(workdir, "train.py", "-m", "fold=0,1,2,3,4", *FIT_A_CPU).stdout
    results = [RESULT_LINE.match(line) for line in out.splitlines() if line.startswith("val_dice=")]
    assert len(results) == 5 and all(results)
    sweep = next((workdir / "multirun" / "train").iterdir())
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [f"fold{k}-job{k}" for k in range(5)]

    # python predict.py ckpt=<a glob of the five folds>
    pattern = f"{sweep.relative_to(workdir)}/fold*/checkpoints/*dice*.ckpt"
    summary = run(workdir, "predict.py", f"ckpt={pattern}", "trainer.enable_progress_bar=false").stdout
    assert summary.strip().splitlines()[-1] == "predicted=16 skipped=0 output_dir=predictions/test"
    masks = sorted((workdir / "predictions" / "test").glob("*.png"))
    assert len(masks) == 16 and all(read_probs8(m).shape == (1280, 1918) for m in masks)

    # python submit.py
    path = workdir / run(workdir, "submit.py").stdout.strip().splitlines()[-1]
    table = pd.read_csv(path, keep_default_na=False)
    sample = pd.read_csv(workdir / "data" / "carvana" / "sample_submission.csv")
    assert table.img.tolist() == sample.img.tolist()
    for img, rle in zip(table.img, table.rle_mask):
        probs8 = read_probs8(workdir / "predictions" / "test" / img.replace(".jpg", ".png"))
        np.testing.assert_array_equal(rle_decode(rle, (1280, 1918)), probs8 > 127)
