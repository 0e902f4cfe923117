"""Shared fixtures: the real Carvana files in ../shared/data, a tiny synthetic Carvana-layout set, one training run;
and pytest's hooks. The plain helpers that test files import are in helpers.py."""

import os
from pathlib import Path

import pytest

# tiny models: one torch thread per process, so that the two test processes (make test: -n 2) and the processes
# a test starts (DDP ranks, SLURM jobs) do not spin on each other's cores; set before torch (and numpy: helpers,
# below) is imported, inherited by every subprocess
os.environ.setdefault("OMP_NUM_THREADS", "1")

from helpers import DEAREST_FIRST, SHARED_DATA, TINY_SIZE, result_of, run_train, train_args


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


@pytest.fixture(scope="session")
def trained_run(carvana_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real 1-epoch mobilenet training on the tiny set (fold 0): its run dir, stdout, val_dice and checkpoint."""
    out = tmp_path_factory.mktemp("trained") / "run"
    proc = run_train(train_args(carvana_root, out))
    dice, ckpt = result_of(proc)
    return {"out": out, "proc": proc, "dice": dice, "ckpt": ckpt}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The dearest test files first (helpers.DEAREST_FIRST)."""
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
