"""Helpers that several test files use (fixtures and pytest's hooks stay in conftest.py): the repository and train.py's
tiny runs, checkpoints and submissions without training, predict.py and train.py run in this process, a folder of the
user's own photos, the HTTP service run and asked."""

import contextlib
import io
import os
import re
import runpy
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import pytest
from PIL import Image

# the repository, its real files, train.py's tiny runs and what they print
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# non-square and divisible by 32: a swapped axis cannot pass, and the full photo needs no padding
TINY_SIZE = (64, 96)
RESULT_LINE = re.compile(r"^val_dice=(?P<dice>[0-9.]+|nan) checkpoint=(?P<ckpt>\S+)$")


def compose_train(*overrides: str) -> dict:
    """conf/config.yaml composed with `overrides` as train.py composes it (Hydra's compose API), made the plain
    settings its job takes as train.py makes them (carvana.training.run.settings_of)."""
    from hydra import compose, initialize_config_dir

    from carvana.training.run import settings_of

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return settings_of(compose(config_name="config", overrides=list(overrides)))


def augment(**probabilities: float) -> dict:
    """data.augment of conf/data/carvana.yaml, with `probabilities` changed (e.g. hflip=0, affine=0, color=0)."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "data" / "carvana.yaml").augment)
    return {**defaults, **probabilities}


def tiny_module(**hparams: object) -> "SegModule":  # noqa: F821
    """A SegModule of the real config's defaults (no pretrained weights), `hparams` overriding its arguments."""
    from carvana.model.module import SegModule
    from carvana.training.run import module_kwargs

    kwargs = module_kwargs(compose_train("model.encoder_weights=null", "data.crop_size=null"), {})
    return SegModule(**{**kwargs, **hparams})


def train_args(root: Path, out: Path, *extra: str) -> list[str]:
    """train.py overrides for one tiny CPU epoch on `root`, run directory `out`."""
    return [
        "data=synthetic",
        "encoder=mobilenet",  # the tests' tiny model, from scratch; the demo's pretrained encoder is tested apart
        "model.encoder_weights=null",
        "trainer=cpu",
        f"data.root={root}",
        f"data.folds={root / 'folds.csv'}",
        "~data.generate",
        "data.input_size=null",
        "trainer.max_epochs=1",
        "data.num_workers=0",
        "data.batch_size=4",
        f"hydra.run.dir={out}",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


def run_train(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """python train.py ARGS in the repository, as a user runs it."""
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def result_of(proc: subprocess.CompletedProcess) -> tuple[float, Path]:
    """(val_dice, checkpoint) from the last line of a successful run's stdout."""
    assert proc.returncode == 0, f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return parse_result(proc.stdout.strip().splitlines()[-1])


def parse_result(line: str) -> tuple[float, Path]:
    """(val_dice, checkpoint) from train.py's result line."""
    match = RESULT_LINE.match(line)
    assert match, f"not a 'val_dice=<float> checkpoint=<path>' line: {line!r}"
    return float(match["dice"]), Path(match["ckpt"])


def run_module(module: str, *words: str) -> subprocess.CompletedProcess:
    """python -m MODULE WORDS in the repository, as a user runs the small tools."""
    return subprocess.run([sys.executable, "-m", module, *words], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)


def write_checkpoint(path: Path, seed: int = 0, **hparams: object) -> Path:
    """A checkpoint in the format train.py writes (state_dict + plain hyper_parameters) of tiny_module(**hparams),
    random weights from `seed`: for tests that need a model's file, not its training."""
    import pytorch_lightning as pl
    import torch

    torch.manual_seed(seed)
    module = tiny_module(**hparams)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    return path


def submission(sample_csv: Path, output: Path, **settings: object) -> Path:
    """make_submission with conf/submit.yaml's defaults and `settings` (e.g. probs_dir=, height=, width=)."""
    from carvana.cli import compose
    from carvana.submission import make_submission

    return make_submission(**{**compose("submit", []), "sample_csv": sample_csv, "output": output, **settings})


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "64k", read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` (or a read-only one) mounted on `folder` for the block: a disk that fills, or a folder that
    cannot be written even by root. Skips the test where this process may not mount (not root)."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                           capture_output=True, check=False).returncode != 0:
        pytest.skip("mounting a small tmpfs (a disk that fills, a read-only folder) needs root; CI runs as root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# the test files that cost most, dearest first (seconds of setup and calls, `pytest --durations=0` on 2 cores): make
# test hands whole files to its two processes in this order (--dist loadfile --no-loadscope-reorder), so that no long
# file starts last while the other process has nothing left; the files not named follow in collection order
DEAREST_FIRST = ["test_torture.py", "test_train.py", "test_slurm.py", "test_mission.py", "test_recipes.py",
                 "test_predict.py", "test_loggers.py", "test_export.py", "test_switches.py", "test_own_data.py",
                 "test_quality.py", "test_end_to_end.py", "test_export_smp.py"]


# predict.py and train.py, in this process; what they write
SUMMARY = re.compile(
    r"^predicted=(?P<predicted>-?\d+) skipped=(?P<skipped>-?\d+) output_dir=(?P<out>\S+)"
    r"(?: val_dice=(?P<dice>[0-9.]+|nan) dice_table=(?P<table>\S+))?$"
)
QUIET = ["hydra/job_logging=disabled", "hydra/hydra_logging=disabled", "hydra.output_subdir=null"]


@dataclass
class Run:
    code: int
    out: str
    err: str

    def summary(self) -> re.Match:
        """The last stdout line, predict.py's `predicted=N skipped=M output_dir=...` (and the Dice table's)."""
        lines = self.out.strip().splitlines()
        match = SUMMARY.match(lines[-1]) if lines else None
        assert match, f"no summary line (exit {self.code}):\n{self.out[-2000:]}\n{self.err[-2000:]}"
        return match

    def errors(self) -> list[str]:
        return [line for line in (self.out + self.err).splitlines() if line.startswith("error:")]


def predict_args(ckpt: Path | str | None, out: Path, *extra: str) -> list[str]:
    """predict.py overrides: one CPU process, no DataLoader workers, no progress bar, Hydra's files out of the repo."""
    return [
        *([f"ckpt={ckpt}"] if ckpt else []),
        f"output_dir={out}",
        "num_workers=0",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={out.parent / ('.hydra-' + out.name)}",
        "tta=none",  # one pass: the expected probabilities below are one model's (tests that want hflip say so)
        *extra,
    ]


def predict_here(args: list[str]) -> Run:
    """predict.py's main in this process (a new interpreter costs ~10 s of imports); an uncaught exception fails."""
    out, err = io.StringIO(), io.StringIO()
    argv = [str(REPO / "predict.py"), *args, *QUIET]
    with (
        mock.patch.object(sys, "argv", argv),
        contextlib.chdir(REPO),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            runpy.run_path(str(REPO / "predict.py"), run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return Run(code, out.getvalue(), err.getvalue())


def train_here(args: list[str]) -> Path:
    """train.py's main in this process -> the checkpoint it prints."""
    out = io.StringIO()
    with (
        mock.patch.object(sys, "argv", [str(REPO / "train.py"), *args, *QUIET[:2]]),
        contextlib.chdir(REPO),
        contextlib.redirect_stdout(out),
    ):
        runpy.run_path(str(REPO / "train.py"), run_name="__main__")
    return parse_result(out.getvalue().strip().splitlines()[-1])[1]


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def shard_rows(directory: Path) -> list[tuple[str, str, str]]:
    """(shard name, img, rle) of every row of every rle-rank*.csv, after checking each file's header and newline."""
    rows = []
    for shard in sorted(directory.glob("rle-rank*.csv")):
        text = shard.read_text()
        assert text.startswith("img,rle_mask\n") and text.endswith("\n"), (shard, text[-80:])
        rows += [(shard.name, *line.split(",", 1)) for line in text.splitlines()[1:]]
    return rows


# your own photos (data=folder): three sizes, one portrait and one that is no multiple of 32;
# group = the part before the first '-'
PHOTOS = [  # (name, (height, width), photo format, mask format)
    ("chair one-a.jpg", (64, 96), "jpg", "png255"),
    ("chair one-b.png", (96, 64), "rgb", "png01"),
    ("lämp.2-front.jpg", (72, 120), "jpg", "palette"),
    ("lämp.2-side.png", (64, 96), "grey", "png255"),
    ("sofa-x 1.jpeg", (96, 64), "jpg", "gif"),
    ("sofa-x 2.png", (72, 120), "rgba", "png255"),
    ("table-1.jpg", (64, 96), "jpg", "png255"),
    ("table-2.jpg", (96, 64), "jpg", "png01"),
    ("vase-a.tif", (72, 120), "tif", "png255"),
    ("vase-b.jpg", (64, 96), "jpg", "png255"),
]
GROUP = "^([^-]+)-"
GROUPS = {"chair one", "lämp.2", "sofa", "table", "vase"}


def write_photo_and_mask(root: Path, name: str, size: tuple[int, int], photo: str, mask: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = size
    image = np.empty((h, w, 3), np.uint8)
    image[:] = rng.integers(40, 120, 3)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((h, w), np.uint8)
    centre = (int(rng.integers(w // 3, 2 * w // 3)), int(rng.integers(h // 3, 2 * h // 3)))
    cv2.ellipse(truth, centre, (w // 4, h // 4), float(rng.integers(0, 180)), 0, 360, 1, -1)
    image[truth > 0] = rng.integers(170, 255, 3)
    path = root / "images" / name
    if photo in ("jpg", "tif"):
        Image.fromarray(image).save(path, format="JPEG" if photo == "jpg" else "TIFF")
    elif photo == "rgb":
        Image.fromarray(image).save(path)
    elif photo == "grey":
        Image.fromarray(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)).save(path)
    else:
        Image.fromarray(np.dstack([image, np.full((h, w), 255, np.uint8)])).save(path)  # RGBA, opaque
    stem = Path(name).stem
    if mask == "png255":
        Image.fromarray(truth * 255).save(root / "masks" / f"{stem}.png")
    elif mask == "png01":
        Image.fromarray(truth).save(root / "masks" / f"{stem}.png")
    else:
        img = Image.fromarray(truth, mode="P")
        img.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
        img.save(root / "masks" / f"{stem}.{'gif' if mask == 'gif' else 'png'}")


def run_tool(script: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)


def predict_in_process(*words: str) -> str:
    """predict.py's job through the library (its subprocess runs once, below): the summary line."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from carvana.predict.run import run

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="predict", overrides=["trainer=cpu", "num_workers=0", *words])
    return run(OmegaConf.to_container(cfg, resolve=True))


# the HTTP service (python -m carvana.serve), run and asked
MAX_PIXELS = 2_500_000  # a real Kaggle photo (2,455,040 pixels) passes, a 1000x2600 one does not


class Service:
    """python -m carvana.serve on a free port of 127.0.0.1 (port=0), its output in files (a full pipe would block)."""

    def __init__(self, folder: Path, ckpt: Path, *words: str):
        folder.mkdir()
        self.stdout, self.stderr = folder / "stdout.txt", folder / "stderr.txt"
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "carvana.serve", f"ckpt={ckpt}", "port=0",
                                          f"max_pixels={MAX_PIXELS}", *words], cwd=REPO, stdout=out, stderr=err)
        self.url = ""

    def ready(self, timeout: float = 180) -> "Service":
        """Wait for the address line, then for /health."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the service exited {self.proc.returncode}:\n{self.stderr.read_text()}"
            match = re.search(r" on (http://127\.0\.0\.1:\d+) ", self.stdout.read_text())
            if match:
                self.url = match[1]
                try:
                    if get(self.url + "/health")[0] == 200:
                        return self
                except OSError:
                    pass  # bound, not yet listening
            time.sleep(0.1)
        raise AssertionError(f"the service did not answer in {timeout} s:\n{self.stderr.read_text()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # the graceful stop is its own test
            self.proc.wait(timeout=60)


def get(url: str, timeout: float = 30) -> tuple[int, dict, bytes]:
    """GET -> (status, headers, body), also for 4xx/5xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def post(url: str, data: bytes, query: str = "", field: str = "image", filename: str = "photo.jpg",
         timeout: float = 60) -> tuple[int, dict, bytes]:
    """POST /predict with `data` as the multipart file `field` -> (status, headers, body)."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}/predict{query}", body,
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def decode(body: bytes) -> np.ndarray:
    """A PNG response's pixels as cv2 reads predict.py's files (grey, or BGRA)."""
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, body[:200]
    return image


@contextlib.contextmanager
def serving_here(cfg: dict, predictor: object) -> Iterator[str]:
    """The service's app around `predictor`, served by uvicorn in a thread of this process -> its URL."""
    import uvicorn

    from carvana.serve.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(cfg, predictor), log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
