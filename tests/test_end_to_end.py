"""The whole mission for real, as a user runs it: python train.py -> predict.py -> submit.py on a tiny synthetic set."""

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, TINY_SIZE, result_of, run_train, train_args

from carvana.data.io import read_probs8
from carvana.data.rle import rle_decode


def run_together(*commands: list[str], timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """python SCRIPT ARGS for each command, started together (they do not depend on each other), in the repository."""
    procs = [
        subprocess.Popen([sys.executable, *cmd], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in commands
    ]
    done = []
    for cmd, proc in zip(commands, procs):
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
        assert proc.returncode == 0, f"{' '.join(cmd[:1])} failed ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}"
    return done


def read_csv_gz(path: Path) -> tuple[str, pd.DataFrame]:
    with gzip.open(path, "rt") as f:
        text = f.read()
    return text, pd.read_csv(path, keep_default_na=False)


@pytest.mark.slow
def test_train_predict_submit(carvana_root: Path, tmp_path: Path):
    _, ckpt = result_of(run_train(train_args(carvana_root, tmp_path / "run", "trainer.limit_train_batches=2")))

    # predict.py takes the photo folder (data.root/test) from the checkpoint; PNGs in one folder, RLE shards in another
    png_dir, rle_dir = tmp_path / "png", tmp_path / "rle"
    common = [f"ckpt={ckpt}", "num_workers=0", "trainer.enable_progress_bar=false", "tta=hflip"]
    predicted = run_together(
        ["predict.py", *common, f"output_dir={png_dir}", f"hydra.run.dir={tmp_path / 'hydra-png'}"],
        ["predict.py", *common, "write=rle", f"output_dir={rle_dir}", f"hydra.run.dir={tmp_path / 'hydra-rle'}"],
    )
    for proc, out in zip(predicted, (png_dir, rle_dir)):
        assert proc.stdout.strip().splitlines()[-1] == f"predicted=16 skipped=0 output_dir={out}"
    assert sorted(p.name for p in rle_dir.iterdir()) == ["predict.json", "rle-rank0.csv"]

    sample = carvana_root / "sample_submission.csv"
    size = [f"height={TINY_SIZE[0]}", f"width={TINY_SIZE[1]}", f"sample_csv={sample}"]
    from_png, from_rle = tmp_path / "sub.csv.gz", tmp_path / "sub-rle.csv.gz"
    submitted = run_together(
        ["submit.py", f"masks_dir={png_dir}", f"output={from_png}", *size, f"hydra.run.dir={tmp_path / 'h1'}"],
        ["submit.py", f"rle_dir={rle_dir}", f"output={from_rle}", *size, f"hydra.run.dir={tmp_path / 'h2'}"],
    )
    assert [proc.stdout.strip().splitlines()[-1] for proc in submitted] == [str(from_png), str(from_rle)]  # last line

    text, table = read_csv_gz(from_png)
    names = pd.read_csv(sample)["img"].tolist()
    assert len(names) == 16 and table.columns.tolist() == ["img", "rle_mask"]
    assert table["img"].tolist() == names  # the sample's rows, in its order
    car_pixels = 0
    for name, rle in zip(table["img"], table["rle_mask"]):
        probs = read_probs8(png_dir / f"{Path(name).stem}.png")
        assert probs.shape == TINY_SIZE
        np.testing.assert_array_equal(rle_decode(rle, TINY_SIZE), probs > 127.5)
        car_pixels += int((probs > 127.5).sum())
    assert 0 < car_pixels < len(names) * TINY_SIZE[0] * TINY_SIZE[1]
    # the streaming path (RLE rows written during prediction, merged by submit.py) gives the same submission
    assert read_csv_gz(from_rle)[0] == text
