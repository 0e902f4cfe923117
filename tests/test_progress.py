"""Progress of the long steps: a bar on a terminal; redirected to a file, a line at the start and one at the end."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from carvana.data.io import write_probs8
from carvana.progress import progress

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def predictions(tmp_path: Path) -> Path:
    for angle in (1, 2, 3):
        write_probs8(tmp_path / f"{'a' * 12}_{angle:02d}.png", np.full((64, 96), 255, np.uint8))
    return tmp_path


def crops(predictions: Path, terminal: bool) -> tuple[str, str]:
    """python -m carvana.crops with stdout and stderr redirected to files, as a terminal (rich told so) or not."""
    env = {**os.environ, "TTY_COMPATIBLE": "1" if terminal else "0", "COLUMNS": "100"}
    with open(predictions / "out.txt", "w") as out, open(predictions / "err.txt", "w") as err:
        proc = subprocess.run([sys.executable, "-m", "carvana.crops", f"probs_dir={predictions}",
                               f"output={predictions / 'b.csv'}"], cwd=REPO, env=env, stdout=out, stderr=err,
                              check=False)
    assert proc.returncode == 0, (predictions / "err.txt").read_text()
    return (predictions / "out.txt").read_text(), (predictions / "err.txt").read_text()


def test_redirected_to_a_file_a_line_at_the_start_and_at_the_end(predictions: Path):
    out, err = crops(predictions, terminal=False)
    lines = out.splitlines()
    assert lines[0] == "finding the car boxes (3) ..." and lines[1].startswith("finding the car boxes (3): done in ")
    assert lines[2:] == ["boxes=3 mean_box=64x96 max_box=64x96 (height x width)", str(predictions / "b.csv")]
    assert "\x1b" not in out and err == ""  # no terminal codes in a log, nothing on stderr


def test_a_terminal_gets_the_bar_and_the_results_still_come_last(predictions: Path):
    out, err = crops(predictions, terminal=True)
    assert "finding the car boxes" in out and "\x1b[" in out  # rich drew its bar
    assert out.splitlines()[-1].endswith(str(predictions / "b.csv")) and err == ""


def test_progress_yields_every_item_once(capsys: pytest.CaptureFixture):
    assert list(progress(iter(range(5)), "counting", 5)) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().out.splitlines()[0] == "counting (5) ..."
