"""Shared fixtures: the real Carvana files in ../shared/data, a tiny synthetic Carvana-layout set, one training run."""

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tiny models: one torch thread per process, so that the two test processes (make test: -n 2) and the processes
# a test starts (DDP ranks, SLURM jobs) do not spin on each other's cores; set before torch is imported, inherited
# by every subprocess
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# non-square and divisible by 32: a swapped axis cannot pass, and the full photo needs no padding
TINY_SIZE = (64, 96)
RESULT_LINE = re.compile(r"^val_dice=(?P<dice>[0-9.]+|nan) checkpoint=(?P<ckpt>\S+)$")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: metadata.csv, sample_submission.csv and real/{train,train_masks,test} of one car each."""
    if not (SHARED_DATA / "metadata.csv").is_file() or not (SHARED_DATA / "real" / "train_masks").is_dir():
        pytest.skip(f"the real Carvana files are not at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def carvana_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Carvana-layout set (3 training cars x 16 photos of 64x96, 1 test car) with its folds.csv (3 folds)."""
    from carvana.data.kfold import write_folds
    from carvana.synthetic import make_dataset

    root = make_dataset(tmp_path_factory.mktemp("carvana") / "data", train_cars=3, test_cars=1, size=TINY_SIZE, seed=0)
    write_folds(root / "metadata.csv", root / "folds.csv", n_folds=3, seed=80, stratify=None)
    return root


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


@pytest.fixture(scope="session")
def trained_run(carvana_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real 1-epoch mobilenet training on the tiny set (fold 0): its run dir, stdout, val_dice and checkpoint."""
    out = tmp_path_factory.mktemp("trained") / "run"
    proc = run_train(train_args(carvana_root, out))
    dice, ckpt = result_of(proc)
    return {"out": out, "proc": proc, "dice": dice, "ckpt": ckpt}


def run_module(module: str, *words: str) -> subprocess.CompletedProcess:
    """python -m MODULE WORDS in the repository, as a user runs the small tools."""
    return subprocess.run([sys.executable, "-m", module, *words], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)


# the test files that cost most, dearest first (seconds of setup and calls, `pytest --durations=0` on 2 cores): make
# test hands whole files to its two processes in this order (--dist loadfile --no-loadscope-reorder), so that no long
# file starts last while the other process has nothing left; the files not named follow in collection order
DEAREST_FIRST = ["test_torture.py", "test_train.py", "test_slurm.py", "test_mission.py", "test_recipes.py",
                 "test_predict.py", "test_loggers.py", "test_export.py", "test_switches.py", "test_own_data.py",
                 "test_quality.py", "test_end_to_end.py", "test_export_smp.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(DEAREST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order kept


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say loudly when the SLURM tests did not run: a green run without them proves nothing about SLURM (a report's
    keywords hold its test's markers)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "slurm" in getattr(r, "keywords", {})]
    if skipped:
        reason = str(skipped[0].longrepr[-1]) if isinstance(skipped[0].longrepr, tuple) else str(skipped[0].longrepr)
        banner = f"{len(skipped)} SLURM TESTS SKIPPED, NOTHING ABOUT SLURM WAS CHECKED"
        terminalreporter.write_sep("!", banner, red=True, bold=True)
        terminalreporter.write_line(reason, red=True, bold=True)


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
