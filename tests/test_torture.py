"""Stopped anywhere, started again: the same result. kill -9 (the whole process group, DataLoader workers too) at
seeded random moments of train, predict (png, rle) and submit, then the same command again until it finishes, against
an uninterrupted run: the same bytes, no temporary files left, every photo exactly once. And every bad input: exit
status 2, one line on stderr naming the file or key, no traceback, nothing written."""

import contextlib
import importlib
import io
import os
import random
import runpy
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import REPO, TINY_SIZE, result_of, run_train, small_disk, train_args

from carvana import CarvanaError
from carvana.data.io import read_probs8, write_probs8
from carvana.files import is_temporary
from carvana.predict.shards import RleShardWriter, scan_shard

KILLS = 2  # kill points per command
RANDOM = random.Random(13)  # the kill moments: seeded, so a failure can be replayed
QUIET = ["hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


def timed_run(cmd: list[str], cwd: Path = REPO, timeout: float = 600) -> float:
    """Run a command to the end (it must succeed) -> its wall-clock seconds."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd[:3])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return time.perf_counter() - start


def killed_then_finished(cmd: list[str], duration: float, cwd: Path = REPO) -> list[str]:
    """Start `cmd`, kill -9 its process group at a random moment of its expected `duration`, KILLS times, then run it
    to the end. Returns what each kill met ('killed' or 'finished')."""
    outcomes = []
    for _ in range(KILLS):
        moment = RANDOM.uniform(0.3, 0.95) * duration
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            proc.wait(timeout=moment)
            outcomes.append("finished")
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            outcomes.append("killed")
    timed_run(cmd, cwd)
    return outcomes


def validated(metrics: Path, epoch: int) -> bool:
    """Whether a run's metrics.csv holds the validation row of `epoch` (False while it is missing or half written)."""
    try:
        rows = pd.read_csv(metrics)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return False
    return "val_dice" in rows and (rows.dropna(subset=["val_dice"]).epoch == epoch).any()


def files(directory: Path) -> dict[str, bytes]:
    """Every file under a directory, by relative path: its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def no_temporaries(directory: Path) -> None:
    left = [p for p in directory.rglob(".*") if is_temporary(p)]
    assert not left, left


def resumable_training(carvana_root: Path, out: Path) -> list[str]:
    """3 tiny epochs in `out`; started again in the same folder, the run resumes from its last.ckpt."""
    return [sys.executable, "train.py", *train_args(carvana_root, out, "trainer.max_epochs=3", "data.num_workers=2",
                                                    "trainer.log_every_n_steps=2")]


@pytest.fixture(scope="module")
def straight_metrics(carvana_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, float]:
    """The metrics.csv of resumable_training never stopped, and its wall-clock seconds."""
    out = tmp_path_factory.mktemp("straight") / "run"
    duration = timed_run(resumable_training(carvana_root, out))
    return (out / "csv" / "metrics.csv").read_bytes(), duration


@pytest.mark.slow
def test_training_killed_and_resumed_writes_the_metrics_of_an_uninterrupted_run(carvana_root: Path, tmp_path: Path,
                                                                                straight_metrics: tuple[bytes, float]):
    """kill -9 anywhere, start again in the same run folder: the same metrics.csv, byte for byte, as a run that was
    never stopped (every draw is a function of seed, epoch, photo)."""
    straight, duration = straight_metrics
    outcomes = killed_then_finished(resumable_training(carvana_root, tmp_path / "killed"), duration)
    killed = tmp_path / "killed" / "csv" / "metrics.csv"
    assert killed.read_bytes() == straight, (outcomes, killed.read_text(), straight.decode())
    assert sorted(pd.read_csv(killed)["epoch"].dropna().unique()) == [0, 1, 2]
    no_temporaries(tmp_path / "killed")


@pytest.mark.slow
def test_kill_after_epoch_1_of_3_resumes_exactly(carvana_root: Path, tmp_path: Path,
                                                 straight_metrics: tuple[bytes, float]):
    """The issue's own case: kill -9 as soon as epoch 1's validation is logged (its checkpoint being written or
    written), start again in the same folder: the same metrics.csv as a run never stopped."""
    out = tmp_path / "killed"
    proc = subprocess.Popen(resumable_training(carvana_root, out), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = out / "csv" / "metrics.csv"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not validated(metrics, epoch=1):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = subprocess.run(resumable_training(carvana_root, out), cwd=REPO, capture_output=True, text=True,
                           timeout=600, check=False)
    result_of(rerun)
    assert "resuming from" in rerun.stdout
    assert metrics.read_bytes() == straight_metrics[0]


@pytest.mark.slow
def test_a_kill_inside_the_first_epoch_resumes_from_a_timed_checkpoint(carvana_root: Path, tmp_path: Path):
    """checkpoint.every_minutes: last.ckpt within an epoch too, so a kill before the first epoch ends leaves one."""
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", *train_args(carvana_root, out, "checkpoint.every_minutes=0.002",
                                                    "trainer.max_epochs=1", "data.num_workers=0")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.is_file() and torch.load(last, map_location="cpu", weights_only=True)["global_step"] > 0:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] > 0
    rerun = run_train(train_args(carvana_root, out, "trainer.max_epochs=1", "data.num_workers=0"))
    result_of(rerun)
    assert f"resuming from {last}" in rerun.stdout
    no_temporaries(out)


@pytest.fixture(scope="module")
def model(carvana_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "run"
    return result_of(run_train(train_args(carvana_root, out, "trainer.limit_train_batches=2")))[1]


@pytest.mark.slow
@pytest.mark.parametrize("write", ["png", "rle"])
def test_prediction_killed_and_resumed_writes_the_same_bytes(model: Path, carvana_root: Path, tmp_path: Path,
                                                             write: str):
    def command(out: Path) -> list[str]:
        return [sys.executable, "predict.py", f"ckpt={model}", f"output_dir={out}", f"write={write}", "batch_size=2",
                "num_workers=1", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'hydra'}", *QUIET]

    duration = timed_run(command(tmp_path / "straight"))
    outcomes = killed_then_finished(command(tmp_path / "killed"), duration)
    straight, killed = files(tmp_path / "straight"), files(tmp_path / "killed")
    assert killed == straight, outcomes
    photos = sorted(p.name for p in (carvana_root / "test").glob("*.jpg"))
    if write == "rle":
        assert [row.name for row in scan_shard(tmp_path / "killed" / "rle-rank0.csv")[0]] == photos  # each once
    else:
        assert sorted(name for name in killed if name.endswith(".png")) == [f"{Path(p).stem}.png" for p in photos]


@pytest.mark.slow
def test_sigterm_to_the_process_group_stops_a_tiled_run_resumably(model: Path, carvana_root: Path, tmp_path: Path):
    """Issue 38.10: SIGTERM to predict.py and its DataLoader worker (as `timeout` sends it) once the first photo is
    written: exit 143 within a photo, a last line that says so, no traceback, what is written kept; the same command
    predicts only the rest."""
    photos = tmp_path / "in"
    photos.mkdir()
    for copy in range(3):  # 48 photos, each in 12 tiles: seconds of work after the first one is written
        for photo in sorted((carvana_root / "test").glob("*.jpg")):
            shutil.copy(photo, photos / f"{copy}{photo.name}")
    out = tmp_path / "pred"
    cmd = [sys.executable, "predict.py", f"ckpt={model}", f"input_dir={photos}", f"output_dir={out}", "tile=[32,32]",
           "batch_size=1", "num_workers=1", "tta=hflip", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={tmp_path / 'h'}", *QUIET]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("*.png")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout[-2000:] + stderr[-2000:]
    last = stderr.strip().splitlines()[-1]  # after Lightning's own notices
    assert last.startswith("stopped by SIGTERM: ") and "Traceback" not in stderr, stderr[-3000:]
    written = len(list(out.glob("*.png")))
    assert 0 < written < 48 and f"{written} of 48 photos are written" in last
    no_temporaries(out)
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.stdout.strip().splitlines()[-1].startswith(f"predicted={48 - written} skipped={written} ")


@pytest.mark.slow
def test_submission_killed_and_started_again_is_whole(tmp_path: Path, shared_data: Path):
    """Kaggle's 100,064 names, 20,000 predicted rows of a car's size: kill -9 while merging, then again."""
    names = pd.read_csv(shared_data / "sample_submission.csv")["img"].tolist()[:20_000]
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"img": names, "rle_mask": "1 1"}).to_csv(sample, index=False)
    rng = np.random.default_rng(0)
    with RleShardWriter(tmp_path / "rle", 0) as writer:
        for name in names:
            starts = np.sort(rng.choice(1280 * 1900 // 2, 400, replace=False)) * 2 + 1
            writer.write(name, " ".join(f"{s} 1" for s in starts))

    def command(output: Path) -> list[str]:
        return [sys.executable, "submit.py", f"rle_dir={tmp_path / 'rle'}", f"sample_csv={sample}", f"output={output}",
                f"hydra.run.dir={tmp_path / 'hydra'}"]

    duration = timed_run(command(tmp_path / "straight" / "sub.csv.gz"))
    killed_then_finished(command(tmp_path / "killed" / "sub.csv.gz"), duration)
    assert files(tmp_path / "killed") == files(tmp_path / "straight")
    no_temporaries(tmp_path / "killed")


# ---------------------------------------------------------------------------------------------------- bad input


def run_here(script: str, args: list[str], cwd: Path = REPO) -> tuple[int, str, str]:
    """An entry point's main in this process (a new interpreter costs ~8 s of imports) -> (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    argv = [str(REPO / script), *args, *QUIET]
    with (mock.patch.object(sys, "argv", argv), contextlib.chdir(cwd), contextlib.redirect_stdout(out),
          contextlib.redirect_stderr(err)):
        try:
            runpy.run_path(str(REPO / script), run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def tool(command: str, args: list[str]) -> tuple[int, str, str]:
    """python -m <command> ARGS (carvana.crops: the package's __main__.py), in this process."""
    out, err = io.StringIO(), io.StringIO()
    main = importlib.import_module(f"{command}.__main__").main
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def spoil(photo: Path, how: str) -> None:
    """A photo of train/ made unreadable: random bytes that still end like a JPEG, or its image data garbled."""
    data = bytearray(photo.read_bytes())
    rng = np.random.default_rng(1)
    if how == "random":
        data = bytearray(rng.integers(0, 256, len(data), dtype=np.uint8).tobytes()) + b"\xff\xd9"
    else:
        for i in rng.integers(len(data) // 3, len(data) * 2 // 3, 60):
            data[i] = rng.integers(0, 256)
    photo.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def setup(carvana_root: Path, model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What the bad inputs need: a copy of the data to spoil, a file in the way, an earlier prediction folder, a
    checkpoint whose weights do not fit its hyperparameters, and RLE shards cut at 0.3."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "afile").write_text("not a folder")
    earlier = tmp / "earlier"
    code, out, err = run_here("predict.py", [f"ckpt={model}", f"output_dir={earlier}", "write=[png,rle]",
                                             "threshold=0.3", "num_workers=0", "trainer.enable_progress_bar=false",
                                             f"hydra.run.dir={tmp / 'h'}"])
    assert code == 0, out + err
    ckpt = torch.load(model, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["decoder_channels"] = [128, 64, 32, 16, 8]
    torch.save(ckpt, tmp / "mismatch.ckpt")
    return {"tmp": tmp, "root": carvana_root, "model": model, "earlier": earlier}


def _data_copy(s: dict, spoilt: str) -> list[str]:
    copy = s["tmp"] / f"data-{spoilt}"
    if not copy.exists():
        shutil.copytree(s["root"], copy)
        spoil(copy / "train" / sorted(p.name for p in (copy / "train").iterdir())[5], spoilt)
    return [f"data.root={copy}", f"data.folds={copy / 'folds.csv'}"]


def _train(s: dict, *extra: str) -> list[str]:
    return [*train_args(s["root"], s["tmp"] / "run"), *extra]


def _predict(s: dict, *extra: str) -> list[str]:
    return [f"ckpt={s['model']}", f"output_dir={s['tmp'] / 'pred'}", "num_workers=0", f"hydra.run.dir={s['tmp'] / 'h'}",
            *extra]


def _submit(s: dict, *extra: str) -> list[str]:
    return [f"rle_dir={s['earlier']}", f"sample_csv={s['root'] / 'sample_submission.csv'}", f"height={TINY_SIZE[0]}",
            f"width={TINY_SIZE[1]}", f"output={s['tmp'] / 'sub' / 'x.csv.gz'}", f"hydra.run.dir={s['tmp'] / 'h'}",
            *extra]


def _non_utf8_name(s: dict) -> list[str]:
    folder = s["tmp"] / "non-utf8"
    if not folder.exists():
        folder.mkdir()
        photo = min((s["root"] / "test").glob("*.jpg"))
        with open(os.path.join(os.fsencode(folder), b"caf\xe9_01.jpg"), "wb") as f:  # latin-1, not UTF-8
            f.write(photo.read_bytes())
    return _predict(s, f"input_dir={folder}")


def _short_sample(s: dict) -> list[str]:
    sample = s["tmp"] / "short_sample.csv"
    lines = (s["root"] / "sample_submission.csv").read_text().splitlines()
    sample.write_text("\n".join(lines[:-2]) + "\n")  # two predicted photos it does not list
    return [*_submit(s), f"sample_csv={sample}"]


def _two_thresholds(s: dict) -> list[str]:
    """The earlier folder (PNGs at threshold 0.3) and a copy of it recorded at 0.5."""
    other = s["tmp"] / "earlier-0.5"
    if not other.exists():
        shutil.copytree(s["earlier"], other)
        manifest = other / "predict.json"
        manifest.write_text(manifest.read_text().replace('"threshold": 0.3', '"threshold": 0.5'))
        assert '"threshold": 0.5' in manifest.read_text()
    return [*_submit(s)[1:], f"probs_dir=[{s['earlier']},{other}]"]


def _damaged(s: dict) -> Path:
    """A copy of the model with 8 bytes of its largest weight changed (torch.load reads it without a word)."""
    copy = s["tmp"] / "damaged.ckpt"
    if not copy.exists():
        shutil.copy(s["model"], copy)
        with zipfile.ZipFile(copy) as archive:
            member = max(archive.infolist(), key=lambda info: info.file_size)
        with open(copy, "r+b") as f:
            f.seek(member.header_offset + 26)
            f.seek(member.header_offset + 30 + sum(struct.unpack("<HH", f.read(4))) + 64)
            f.write(b"\x7f" * 8)
    return copy


def _into_the_photos(s: dict) -> list[str]:
    """PNG photos (the earlier run's predictions, taken as photos) predicted into their own folder, overwrite=true."""
    return [f"input_dir={s['earlier']}", f"output_dir={s['earlier']}", "overwrite=true"]


BAD_INPUTS = {  # id: (entry point, its words, what the one line must name)
    "train: batch_size 0": ("train.py", lambda s: _train(s, "data.batch_size=0"), "data.batch_size=0"),
    "train: negative workers": ("train.py", lambda s: _train(s, "data.num_workers=-1"), "data.num_workers=-1"),
    "train: threshold 1.5": ("train.py", lambda s: _train(s, "model.threshold=1.5"), "model.threshold=1.5"),
    "train: every_minutes 0": ("train.py", lambda s: _train(s, "checkpoint.every_minutes=0"), "every_minutes"),
    "train: random bytes as a JPEG": ("train.py", lambda s: _train(s, *_data_copy(s, "random")), "train/"),
    "train: garbled JPEG data": ("train.py", lambda s: _train(s, *_data_copy(s, "garbled")), "train/"),
    "train: unknown architecture": ("train.py", lambda s: _train(s, "model.arch=unet3d"), "unet3d"),
    "train: max_epochs 0": ("train.py", lambda s: _train(s, "trainer.max_epochs=0"), "trainer.max_epochs=0"),
    "train: negative lr": ("train.py", lambda s: _train(s, "optim.lr=-1"), "optim.lr=-1"),
    **({} if torch.cuda.is_available() else {
        "train: gpu without a GPU": ("train.py", lambda s: _train(s, "trainer=gpu"), "no GPU"),
        "predict: gpu without a GPU": ("predict.py", lambda s: _predict(s, "trainer=gpu"), "no GPU")}),
    "predict: a file name that is not UTF-8": ("predict.py", _non_utf8_name, "UTF-8"),
    "submit: sample lacks predicted rows": ("submit.py", _short_sample, "allow_unlisted"),
    "predict: no ckpt": ("predict.py", lambda s: _predict(s)[1:], "ckpt="),
    "predict: threshold 2": ("predict.py", lambda s: _predict(s, "write=rle", "threshold=2"), "threshold=2"),
    "predict: threshold 0": ("predict.py", lambda s: _predict(s, "threshold=0"), "threshold=0"),
    "predict: batch_size 0": ("predict.py", lambda s: _predict(s, "batch_size=0"), "batch_size=0"),
    "predict: negative workers": ("predict.py", lambda s: _predict(s, "num_workers=-2")[:-1] + ["num_workers=-2"],
                                  "num_workers=-2"),
    "predict: unknown write": ("predict.py", lambda s: _predict(s, "write=jpg"), "write="),
    "predict: output under a file": ("predict.py", lambda s: _predict(s, f"output_dir={s['tmp'] / 'afile' / 'p'}"),
                                     "afile"),
    "predict: rle under a file": ("predict.py", lambda s: _predict(s, "write=rle", f"output_dir={s['tmp'] / 'afile'}"),
                                  "afile"),
    "predict: output not writable": ("predict.py", lambda s: _predict(s, "output_dir=/proc/carvana"), "/proc/carvana"),
    "predict: mismatched ensemble member": ("predict.py",
                                            lambda s: _predict(s, f"ckpt=[{s['model']},{s['tmp'] / 'mismatch.ckpt'}]"),
                                            "mismatch.ckpt"),
    "predict: other settings in the folder": ("predict.py",
                                              lambda s: _predict(s, f"output_dir={s['earlier']}", "write=[png,rle]",
                                                                 "tta=none", "threshold=0.3"), "tta"),
    "predict: output_dir is input_dir": ("predict.py", lambda s: _predict(s, *_into_the_photos(s)), "holds the photos"),
    "predict: damaged checkpoint": ("predict.py", lambda s: _predict(s, f"ckpt={_damaged(s)}"), "is damaged"),
    "submit: threshold 2": ("submit.py", lambda s: _submit(s, "threshold=2"), "threshold=2"),
    "submit: other threshold than the shards'": ("submit.py", lambda s: _submit(s, "threshold=0.5"), "0.3"),
    "submit: folders at two thresholds": ("submit.py", _two_thresholds, "give threshold="),
    "submit: output under a file": ("submit.py",
                                    lambda s: _submit(s, f"output={s['tmp'] / 'afile' / 'x.csv.gz'}"), "afile"),
    "submit: output not writable": ("submit.py", lambda s: _submit(s, "output=/proc/carvana/x.csv.gz"), "/proc"),
    "crops: threshold 2": ("carvana.crops", lambda s: [f"probs_dir={s['earlier']}", f"output={s['tmp'] / 'b.csv'}",
                                                       "threshold=2"], "threshold=2"),
    "folds: no metadata": ("carvana.folds",
                           lambda s: [f"data_root={s['tmp'] / 'none'}", f"output={s['tmp'] / 'f.csv'}"],
                           "metadata"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(case: str, setup: dict):
    script, words, needle = BAD_INPUTS[case]
    outputs = [setup["tmp"] / name for name in ("pred", "sub", "run/checkpoints", "b.csv", "f.csv")]
    before = {p: files(p) if p.is_dir() else p.exists() for p in [*outputs, setup["earlier"]]}
    args = words(setup)
    code, out, err = tool(script, args) if script.startswith("carvana.") else run_here(script, args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, out[-2000:], err[-3000:])
    assert needle in lines[0] and "Traceback" not in err + out, lines[0]
    assert {p: files(p) if p.is_dir() else p.exists() for p in before} == before  # nothing written


def one_error(code: int, out: str, err: str) -> str:
    """The one `error: ...` line of a refused run (exit 2, no traceback)."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, out[-2000:], err[-3000:])
    assert "Traceback" not in out + err
    return lines[0]


def test_submit_without_predictions_names_predict_output_dir(tmp_path: Path):
    """Run where no prediction was made: the line names predict.py's output folder, not a sample_submission."""
    line = one_error(*run_here("submit.py", [f"hydra.run.dir={tmp_path / 'h'}"], cwd=tmp_path))
    assert "output_dir=predictions/test does not exist" in line and "sample_submission" not in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h"]  # no submissions/ folder left behind


def test_predict_on_a_full_disk_says_so_before_and_during_the_work(setup: dict):
    """A disk full before the run: refused before any work, naming output_dir. A disk that fills during the run: the
    line names the disk and the photo; the PNGs written before it stay whole, no temporary is left."""
    with small_disk(setup["tmp"] / "full", "4k") as disk:
        with contextlib.suppress(OSError):
            (disk / "filler").write_bytes(b"\0" * 8192)  # fills the 4k disk
        line = one_error(*run_here("predict.py", _predict(setup, f"output_dir={disk / 'pred'}")))
        assert f"output_dir={disk / 'pred'}: the disk is full" in line, line
        assert not list((disk / "pred").iterdir())
    with small_disk(setup["tmp"] / "fills", "16k") as disk:  # 4 pages: predict.json and a few of the 16 PNGs
        line = one_error(*run_here("predict.py", _predict(setup, f"output_dir={disk / 'pred'}")))
        assert line.startswith("error: the disk is full: ") and ".png was not written" in line, line
        written = sorted((disk / "pred").glob("*.png"))
        assert 0 < len(written) < 16 and not [p for p in (disk / "pred").iterdir() if is_temporary(p)]
        earlier = setup["earlier"]
        for png in written:  # whole: the bytes a run on a free disk wrote (the same settings but threshold)
            assert read_probs8(png).shape == TINY_SIZE and png.read_bytes() == (earlier / png.name).read_bytes()


def test_submit_on_a_disk_that_fills_keeps_the_previous_submission(setup: dict, tmp_path: Path):
    """The output folder passes the check before the work, then fills while the submission is written: one line
    naming the disk and the file, the previous submission at that path stays as it was, no temporary left."""
    rng = np.random.default_rng(0)
    names = [f"noise{i}_01.jpg" for i in range(4)]
    for name in names:  # noise: long RLE rows, a submission of many pages
        write_probs8(tmp_path / name.replace(".jpg", ".png"), rng.integers(0, 256, TINY_SIZE, dtype=np.uint8))
    pd.DataFrame({"img": names, "rle_mask": "1 1"}).to_csv(tmp_path / "sample.csv", index=False)
    with small_disk(setup["tmp"] / "sub-fills", "8k") as disk:  # 2 pages: the previous submission and the check's
        (disk / "x.csv.gz").write_bytes(b"the previous submission")
        line = one_error(*run_here("submit.py", [f"probs_dir={tmp_path}", f"sample_csv={tmp_path / 'sample.csv'}",
                                                 f"height={TINY_SIZE[0]}", f"width={TINY_SIZE[1]}",
                                                 f"output={disk / 'x.csv.gz'}", f"hydra.run.dir={tmp_path / 'h'}"]))
        assert line.startswith(f"error: the disk is full: {disk / 'x.csv.gz'} was not written"), line
        assert [p.name for p in disk.iterdir()] == ["x.csv.gz"]
        assert (disk / "x.csv.gz").read_bytes() == b"the previous submission"


def test_stray_temporaries_of_dead_runs_are_removed_and_ignored(model: Path, carvana_root: Path, tmp_path: Path):
    """A killed writer's `.NAME.tmp-<host>-<pid>.png` (pid long gone): the next run removes it; readers skip it."""
    from carvana.data.boxes import write_bboxes
    from carvana.files import HOST

    out = tmp_path / "pred"
    out.mkdir()
    dead = out / f".{'a' * 12}_01.tmp-{HOST}-999999999.png"
    write_probs8(dead, np.zeros(TINY_SIZE, np.uint8))
    with pytest.raises(CarvanaError, match="holds no .png predictions"):  # a reader does not take it for a mask
        write_bboxes(out, tmp_path / "b.csv", threshold=0.5, margin=32, multiple=32, workers=2)
    code, _, err = run_here("predict.py", [f"ckpt={model}", f"output_dir={out}", "num_workers=0",
                                           f"hydra.run.dir={tmp_path / 'h'}", "trainer.enable_progress_bar=false"])
    assert code == 0, err
    assert not dead.exists()
    table = write_bboxes(out, tmp_path / "bboxes.csv", threshold=0.5, margin=32, multiple=32, workers=2)
    assert len(table) == 16 and not any(img.startswith(".") for img in table.img)
