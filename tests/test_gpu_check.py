"""bench/gpu_check.py on a machine without CUDA: its one line and exit 0; its stages' time limits, failures and figures
(the GPU runs themselves wait for a GPU)."""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
from helpers import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    """bench/gpu_check.py as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_one_line_and_exit_0(tmp_path: Path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "g.json")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [proc.stdout.strip()] and proc.stdout.startswith("gpu_check: no CUDA device")
    assert not any(tmp_path.iterdir())


def test_a_stage_out_of_time_or_failing_is_reported(gpu_check, tmp_path: Path):
    """Killed with its whole process group at its limit; a failure keeps its last stderr line; figures are read."""
    sleeper = [sys.executable, "-c", ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
               "'import time; time.sleep(60)']); print('e2e_vs_forward=0.5', flush=True); time.sleep(60)")]
    failing = [sys.executable, "-c", "import sys; print('compile_vs_default=1.25 (x)'); sys.exit('error: it broke')"]
    with mock.patch.object(gpu_check, "commands", side_effect=[sleeper, failing]):
        start = time.perf_counter()
        slow = gpu_check.run_stage("predict_bench", 3, tmp_path, {})
        assert time.perf_counter() - start < 30
        bad = gpu_check.run_stage("train_bench", 60, tmp_path, {})
    assert slow["status"] == "timeout (3 s)" and slow["figures"] == {"e2e_vs_forward": 0.5}
    assert bad["status"] == "failed (1)" and bad["error"] == "error: it broke"
    assert bad["figures"] == {"compile_vs_default": 1.25}
    assert (tmp_path / "predict_bench.log").is_file() and (tmp_path / "train_bench.log").is_file()


def test_figures_of_the_benches_and_a_training(gpu_check, tmp_path: Path):
    lines = [
        "forward    41.20 photos/s  (0.78 s; rounds 0.78, 0.79)",
        "long run   30.50 photos/s: (32 - 8) photos / (1.10 - 0.31) s; a run's start costs 0.4 s once",
        "channels_last_vs_default=1.180", "compile_vs_default=1.410", "e2e_vs_forward=0.740",
        "lightning_images_per_s=22.10", "val_dice=0.0123 checkpoint=/x/run/checkpoints/a-dice0.0123.ckpt",
        "gpu_check_peak_gib=12.50",
    ]
    assert gpu_check.figures_of("train_bench", "\n".join(lines), tmp_path) == {
        "forward_photos_per_s": 41.2, "long_run_photos_per_s": 30.5, "channels_last_vs_default": 1.18,
        "compile_vs_default": 1.41, "e2e_vs_forward": 0.74, "lightning_images_per_s": 22.1, "val_dice": 0.0123,
        "checkpoint": "/x/run/checkpoints/a-dice0.0123.ckpt", "peak_gpu_gib": 12.5}
    table = gpu_check.table({"train_bench": {"status": "ok", "seconds": 3.0, "figures": {"e2e_vs_forward": 0.74},
                                             "error": ""}})
    assert "train_bench" in table and "e2e_vs_forward=0.74" in table
