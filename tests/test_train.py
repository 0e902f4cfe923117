"""End to end: python train.py on a tiny Carvana-layout set, as a user runs it (1 epoch, CPU, 64x96 photos)."""

import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pandas as pd
import pytest
import torch
from helpers import REPO, TINY_SIZE, compose_train, parse_result, result_of, run_train, train_args
from omegaconf import OmegaConf

from carvana.data.io import read_image, read_mask, write_image
from carvana.data.layout import car_id
from carvana.model.loading import load_module
from carvana.model.losses import dice_per_image

CKPT_NAME = re.compile(r"^(?P<encoder>[\w-]+)-fold(?P<fold>\d+)-epoch(?P<epoch>\d{2})-dice(?P<dice>[01]\.\d{4})\.ckpt$")


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def val_metrics(out: Path) -> pd.DataFrame:
    """The validation rows of a run's metrics.csv."""
    metrics = pd.read_csv(out / "csv" / "metrics.csv")
    assert "val_dice" in metrics.columns, metrics.columns.tolist()
    return metrics[metrics["val_dice"].notna()]


def recompute_val_dice(root: Path, fold: int, ckpt: Path) -> tuple[float, int]:
    """Mean per-image Dice of a checkpoint over every validation photo of `fold` -> (dice, number of photos), as its
    model.val_tta says (hflip: the mean probability with the flipped photo's)."""
    module = load_module(ckpt)
    folds = pd.read_csv(root / "folds.csv", dtype={"id": str})
    cars = set(folds["id"][folds["fold"] == fold])
    photos = sorted(p for p in (root / "train").glob("*.jpg") if car_id(p) in cars)
    dices = []
    with torch.no_grad():
        for photo in photos:
            image = torch.from_numpy(read_image(photo)).permute(2, 0, 1)[None]
            mask = torch.from_numpy(read_mask(root / "train_masks" / f"{photo.stem}_mask.gif")).float()[None, None]
            probs = module(image).sigmoid()
            if module.hparams.val_tta == "hflip":
                probs = (probs + module(image.flip(-1)).sigmoid().flip(-1)) / 2
            pred = (probs > 0.5).float()
            dices.append(dice_per_image(pred, mask))
    return torch.cat(dices).mean().item(), len(photos)


def stray_runs(tmp_path: Path) -> list[Path]:
    """Run directories that Hydra made in the repository (outputs/, multirun/) for a run of this test."""
    found = []
    for base in (REPO / "outputs", REPO / "multirun"):
        for overrides in base.glob("**/.hydra/overrides.yaml") if base.is_dir() else []:
            if str(tmp_path) in overrides.read_text():
                found.append(overrides.parent.parent)
    return found


def check_run_dir(out: Path, ckpt: Path, encoder: str, fold: int, dice: float) -> None:
    """A finished 1-epoch run: best checkpoint named by encoder, fold, epoch and dice, last.ckpt, logs."""
    assert ckpt.is_file() and ckpt.parent == out / "checkpoints", ckpt
    name = CKPT_NAME.match(ckpt.name)
    assert name, ckpt.name
    assert (name["encoder"], int(name["fold"]), int(name["epoch"])) == (encoder, fold, 0)
    assert float(name["dice"]) == pytest.approx(dice, abs=1e-4)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted([ckpt.name, "last.ckpt"])
    metrics = val_metrics(out)
    assert metrics["epoch"].tolist() == [0]
    assert metrics["val_dice"].iloc[0] == pytest.approx(dice, abs=1e-4)
    assert 0.0 <= dice <= 1.0
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    hp = load_ckpt(ckpt)["hyper_parameters"]
    assert hp["data"]["fold"] == fold


def test_mobilenet_run(trained_run: dict, carvana_root: Path):
    out, ckpt = trained_run["out"], trained_run["ckpt"]
    check_run_dir(out, ckpt, "mobilenet_v2", 0, trained_run["dice"])
    assert trained_run["proc"].stdout.count("val_dice=") == 1
    said = trained_run["proc"].stdout + trained_run["proc"].stderr
    assert "fold 0: 32 training photos (2 groups), 16 validation photos (1 group)" in said
    for noise in ("Tip:", "log_every_n_steps", "deprecated", "limit_train_batches=1.0"):  # Lightning's, not the run's
        assert noise not in said, noise
    last = load_ckpt(out / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (0, 8)  # 2 training cars x 16 photos / batch 4
    hp = last["hyper_parameters"]
    assert hp["encoder_name"] == "mobilenet_v2"
    assert hp["preprocessing"]["name"] == "imagenet"
    assert hp["input_size"] is None and hp["crop_size"] is None
    assert hp["data"]["image_size"] == list(TINY_SIZE)


def test_val_dice_is_the_mean_over_every_validation_photo(trained_run: dict, carvana_root: Path):
    dice, n = recompute_val_dice(carvana_root, 0, trained_run["ckpt"])
    assert n == 16
    assert val_metrics(trained_run["out"])["val_dice"].iloc[0] == pytest.approx(dice, abs=1e-3)


@pytest.mark.slow
def test_resnet50_run_records_caffe_preprocessing(carvana_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc = run_train(
        train_args(
            carvana_root,
            out,
            "encoder=resnet50",
            "preprocessing=caffe",
            "fold=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=2",
        )
    )
    try:
        dice, ckpt = result_of(proc)
        check_run_dir(out, ckpt, "resnet50", 1, dice)
        hp = load_ckpt(out / "checkpoints" / "last.ckpt")["hyper_parameters"]
        assert hp["encoder_name"] == "resnet50"
        assert list(hp["decoder_channels"]) == [256, 192, 128, 64, 32]
        assert hp["preprocessing"] == {
            "name": "caffe",
            "input_space": "BGR",
            "mean": [103.939, 116.779, 123.68],
            "std": [1.0, 1.0, 1.0],
        }
    finally:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # 2 x 400 MB


@pytest.mark.slow
def test_multirun_over_two_folds(carvana_root: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    args = [a for a in train_args(carvana_root, tmp_path / "unused") if not a.startswith("hydra.run.dir")]
    proc = run_train(["-m", "fold=0,1", *args, "trainer.limit_train_batches=2", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("val_dice=")]
    assert len(lines) == 2, lines
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["fold0-job0", "fold1-job1"]
    for fold, line in enumerate(lines):
        dice, ckpt = parse_result(line)
        check_run_dir(sweep / f"fold{fold}-job{fold}", ckpt, "mobilenet_v2", fold, dice)
    assert not (tmp_path / "unused").exists()
    assert not stray_runs(tmp_path)


def test_a_sweep_that_keeps_the_fold_gives_each_job_its_own_folder(carvana_root: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    args = [a for a in train_args(carvana_root, tmp_path / "unused") if not a.startswith("hydra.run.dir")]
    proc = run_train(["-m", "optim.lr=1e-3,3e-4", *args, "trainer.limit_train_batches=1",
                      "trainer.limit_val_batches=1", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["fold0-job0", "fold0-job1"]
    lrs = [OmegaConf.load(sweep / job / ".hydra" / "config.yaml").optim.lr for job in ("fold0-job0", "fold0-job1")]
    assert lrs == [1e-3, 3e-4]
    for job in ("fold0-job0", "fold0-job1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        assert len(val_metrics(sweep / job)) == 1


def test_without_data_the_real_recipe_says_where_it_goes(tmp_path: Path):
    """python train.py with no key, in a folder without data/carvana: one line with the download and the demo."""
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "hydra/job_logging=disabled",
                           "hydra/hydra_logging=disabled"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)
    kaggle = "kaggle competitions download -c carvana-image-masking-challenge"
    check_user_error(proc.returncode, proc.stderr, ["data/carvana", kaggle, "data=synthetic"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]  # Hydra's folder, and nothing generated
    assert not list(tmp_path.glob("outputs/train/*"))  # the refused run leaves no run folder


@pytest.mark.slow
def test_ddp_two_cpu_processes(carvana_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc = run_train(
        train_args(
            carvana_root, out, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32"
        )
    )
    dice, ckpt = result_of(proc)
    assert proc.stdout.count("val_dice=") == 1  # rank 0 only
    check_run_dir(out, ckpt, "mobilenet_v2", 0, dice)
    assert (out / "train_ddp_process_1.log").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert not stray_runs(tmp_path)
    # each rank trained on half the photos: 2 cars x 16 photos / 2 ranks / batch 4
    assert load_ckpt(out / "checkpoints" / "last.ckpt")["global_step"] == 4
    # the metric is reduced over both ranks: every one of the 16 validation photos counts, not rank 0's half
    recomputed, n = recompute_val_dice(carvana_root, 0, ckpt)
    assert n == 16
    assert val_metrics(out)["val_dice"].iloc[0] == pytest.approx(recomputed, abs=1e-3)


def test_init_from_starts_from_the_checkpoint_weights(trained_run: dict, carvana_root: Path, tmp_path: Path):
    """model.init_from: the weights of another run, but a new optimizer, epoch and step (lr 0: weights stay put)."""
    out = tmp_path / "run"
    proc = run_train(
        train_args(
            carvana_root,
            out,
            f"model.init_from={trained_run['ckpt']}",
            "optim.lr=0",
            "optim.scheduler=none",
            "trainer.limit_train_batches=2",
        )
    )
    result_of(proc)
    init = load_ckpt(trained_run["ckpt"])
    new = load_ckpt(out / "checkpoints" / "last.ckpt")
    assert (new["epoch"], new["global_step"]) == (0, 2)  # started afresh, not resumed at step 8
    params = [k for k in init["state_dict"] if "running_" not in k and "num_batches_tracked" not in k]
    assert len(params) > 100
    for key in params:
        assert torch.equal(new["state_dict"][key], init["state_dict"][key]), key


def test_a_finished_run_started_again_keeps_its_metrics(trained_run: dict, carvana_root: Path, tmp_path: Path):
    """A run folder whose last.ckpt is its last epoch: started again, it has nothing to train, and its metrics.csv
    stays as it was (Lightning's CSVLogger would delete it; MetricsHistory writes back the rows the checkpoint
    holds)."""
    out = shutil.copytree(trained_run["out"], tmp_path / "run")
    before = (out / "csv" / "metrics.csv").read_bytes()
    proc = run_train(train_args(carvana_root, out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from" in proc.stdout
    assert (out / "csv" / "metrics.csv").read_bytes() == before


def test_ckpt_path_resumes_the_run(trained_run: dict, carvana_root: Path, tmp_path: Path):
    """ckpt_path=last.ckpt of a 1-epoch run with max_epochs=2 trains epoch 1 only, continuing the global step."""
    out = tmp_path / "run"
    last = trained_run["out"] / "checkpoints" / "last.ckpt"
    proc = run_train(
        train_args(carvana_root, out, f"ckpt_path={last}", "trainer.max_epochs=2", "trainer.limit_train_batches=2")
    )
    dice, ckpt = result_of(proc)
    metrics = val_metrics(out)
    assert metrics["epoch"].tolist() == [0, 1]  # epoch 0's row travels in the checkpoint (MetricsHistory)
    first = val_metrics(trained_run["out"]).iloc[0]
    pd.testing.assert_series_equal(metrics.iloc[0][first.index], first)
    assert metrics["step"].iloc[1] >= 8
    resumed = load_ckpt(out / "checkpoints" / "last.ckpt")
    assert (resumed["epoch"], resumed["global_step"]) == (1, 10)  # 8 steps of epoch 0, then 2
    check_best_of(out, dice, ckpt)
    # started again in its folder: from its own last.ckpt, not from the ckpt_path= its record holds
    proc = run_train([f"hydra.run.dir={out}"])
    assert result_of(proc) == (dice, ckpt) and f"resuming from {out / 'checkpoints' / 'last.ckpt'}" in proc.stdout
    assert load_ckpt(out / "checkpoints" / "last.ckpt")["global_step"] == 10


def check_best_of(out: Path, dice: float, ckpt: Path) -> None:
    """The reported checkpoint is the better of the run's epochs, whichever that is (the two epochs' Dice can differ
    in the third decimal, and rank differently on another CPU): its name's epoch scored the best val_dice logged."""
    metrics = val_metrics(out).set_index("epoch")["val_dice"]
    assert dice == pytest.approx(metrics.max(), abs=1e-4)
    name = CKPT_NAME.match(ckpt.name)
    assert name and ckpt.parent == out / "checkpoints" and ckpt.is_file(), ckpt
    assert metrics[int(name["epoch"])] == pytest.approx(metrics.max(), abs=1e-4)
    assert [p.name for p in ckpt.parent.glob("*dice*.ckpt")] == [ckpt.name]  # one best file


def test_a_moved_run_folder_resumes_with_its_best_score(trained_run: dict, carvana_root: Path, tmp_path: Path):
    """Lightning drops best_model_score and the top-k of a checkpoint written under another folder: a moved run would
    take its next (worse) epoch for its best and keep two best files, which a *dice* glob makes an ensemble of. The
    epoch-0 best is marked 0.999 here, so the resumed epoch 1 cannot beat it."""
    copy = shutil.copytree(trained_run["out"], tmp_path / "copy")
    last = copy / "checkpoints" / "last.ckpt"
    state = load_ckpt(last)
    for key, callback in state["callbacks"].items():
        if "Checkpoint" in key and "val_dice" in key:
            callback["best_model_score"] = callback["kth_value"] = torch.tensor(0.999)
            callback["best_k_models"] = {k: torch.tensor(0.999) for k in callback["best_k_models"]}
    torch.save(state, last)
    out = shutil.move(copy, tmp_path / "moved")  # the folder it was written in is gone
    proc = run_train(train_args(carvana_root, out, "trainer.max_epochs=2", "trainer.limit_train_batches=2"))
    dice, ckpt = result_of(proc)
    assert "resuming from" in proc.stdout
    assert dice == pytest.approx(0.999) and ckpt.parent == Path(out) / "checkpoints" and ckpt.is_file()
    best = [p.name for p in (Path(out) / "checkpoints").glob("*dice*.ckpt")]
    assert best == [ckpt.name], best  # one best checkpoint per run
    assert CKPT_NAME.match(ckpt.name)["epoch"] == "00"
    assert val_metrics(Path(out))["epoch"].tolist() == [0, 1]


def test_resuming_with_other_settings_names_the_keys(trained_run: dict, carvana_root: Path, tmp_path: Path):
    out = shutil.copytree(trained_run["out"], tmp_path / "run")
    before = sorted((out / "checkpoints").iterdir())
    proc = run_train(train_args(carvana_root, out, "optim.lr=0.5", "model.decoder_channels=[32,16,16,8,8]"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: cannot resume"), proc.stderr[-2000:]
    assert "optim.lr 0.001 -> 0.5" in lines[0] and "model.decoder_channels" in lines[0], lines[0]
    assert "model.init_from" in lines[0] and "Traceback" not in proc.stderr
    assert sorted((out / "checkpoints").iterdir()) == before


@pytest.mark.slow
def test_demo_generates_the_synthetic_set_when_missing(tmp_path: Path):
    """The demo's data=synthetic: data.root missing -> the set (same seed, tiny photos) and its folds are made."""
    root, out = tmp_path / "synthetic", tmp_path / "run"
    proc = run_train(
        [
            "data=synthetic",
            "trainer=cpu",
            f"data.root={root}",
            "data.generate.height=64",
            "data.generate.width=96",
            "data.input_size=null",
            "data.num_workers=0",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=2",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={out}",
        ]
    )
    _, ckpt = result_of(proc)
    assert len(list((root / "train").glob("*.jpg"))) == 10 * 16
    folds = pd.read_csv(root / "folds.csv", dtype={"id": str})
    assert len(folds) == 10 and sorted(set(folds["fold"])) == [0, 1, 2, 3, 4]
    assert ckpt.parent == out / "checkpoints"


def _missing_root(root: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    return [f"data.root={tmp_path / 'nothere'}"], [str(tmp_path / "nothere")]


def _photo_without_mask(root: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    copy = shutil.copytree(root, tmp_path / "data")
    car = pd.read_csv(copy / "folds.csv", dtype={"id": str})["id"][0]
    (copy / "train_masks" / f"{car}_03_mask.gif").unlink()
    return [f"data.root={copy}", f"data.folds={copy / 'folds.csv'}"], [f"{car}_03.jpg", "mask"]


def _photo_of_another_size(root: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    copy = shutil.copytree(root, tmp_path / "data")
    car = pd.read_csv(copy / "folds.csv", dtype={"id": str})["id"][0]
    photo = copy / "train" / f"{car}_05.jpg"
    write_image(photo, cv2.resize(read_image(photo), (96, 80)))
    return [f"data.root={copy}", f"data.folds={copy / 'folds.csv'}"], [f"{car}_05.jpg", "80x96", "64x96"]


def _fold_not_in_folds(root: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    return ["fold=7"], ["fold=7", "folds.csv"]


def _unknown_encoder_name(root: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    return ["model.encoder_name=nosuchnet"], ["nosuchnet", "encoder"]


def _missing_init_from(root: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    return [f"model.init_from={tmp_path / 'nothere.ckpt'}"], [str(tmp_path / "nothere.ckpt")]


def _missing_ckpt_path(root: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    return [f"ckpt_path={tmp_path / 'nothere.ckpt'}"], [str(tmp_path / "nothere.ckpt"), "ckpt_path"]


def _missing_folds_file(root: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    return [f"data.folds={tmp_path / 'nofolds.csv'}"], [str(tmp_path / "nofolds.csv")]


def _car_not_in_folds(root: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    folds = pd.read_csv(root / "folds.csv", dtype={"id": str})
    folds.iloc[1:].to_csv(tmp_path / "folds.csv", index=False)
    return [f"data.folds={tmp_path / 'folds.csv'}"], [folds["id"][0], "folds.csv"]


def _ckpt_path_not_a_checkpoint(root: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    return [f"ckpt_path={tmp_path / 'notes.ckpt'}"], ["notes.ckpt"]


def _init_from_another_model(root: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    """A checkpoint of this project, but of another encoder (its weights do not fit a mobilenet_v2 U-Net)."""
    torch.save({"hyper_parameters": {"encoder_name": "resnet18"}, "state_dict": {}}, tmp_path / "resnet18.ckpt")
    return [f"model.init_from={tmp_path / 'resnet18.ckpt'}"], ["resnet18.ckpt"]


BAD_INPUTS = [
    _missing_root,
    _photo_without_mask,
    _photo_of_another_size,
    _fold_not_in_folds,
    _unknown_encoder_name,
    _missing_init_from,
    _missing_ckpt_path,
    _missing_folds_file,
    _car_not_in_folds,
    _ckpt_path_not_a_checkpoint,
    _init_from_another_model,
]


def check_user_error(code: int, stderr: str, names: list[str]) -> None:
    """Exit status 2 and exactly one line on stderr, 'error: ...', naming each of `names`; no traceback."""
    assert code == 2, f"exit status {code}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda case: case.__name__.strip("_"))
def test_bad_input_is_one_line_error(
    case, carvana_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    """train.py's main in this process (a new interpreter per case would cost ~7 s of imports each)."""
    overrides, names = case(carvana_root, tmp_path)
    out = tmp_path / "run"
    args = train_args(carvana_root, out, *overrides, "hydra/job_logging=disabled", "hydra/hydra_logging=disabled")
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", [str(REPO / "train.py"), *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "train.py"), run_name="__main__")
    captured = capsys.readouterr()
    check_user_error(exit_info.value.code, captured.err, names)
    assert "val_dice=" not in captured.out
    assert not (out / "checkpoints").exists()


def test_bad_input_in_a_real_process(carvana_root: Path, tmp_path: Path):
    """The same as a user sees it: a photo without its mask stops python train.py with one line, status 2."""
    overrides, names = _photo_without_mask(carvana_root, tmp_path)
    out = tmp_path / "run"
    proc = run_train(train_args(carvana_root, out, *overrides), timeout=120)
    check_user_error(proc.returncode, proc.stderr, names)
    assert "val_dice=" not in proc.stdout
    assert not (out / "checkpoints").exists()


def test_truncated_photo_is_found_before_training(carvana_root: Path, tmp_path: Path):
    copy = shutil.copytree(carvana_root, tmp_path / "data")
    folds = pd.read_csv(copy / "folds.csv", dtype={"id": str})
    car = folds["id"][folds["fold"] == 0].iloc[0]  # a validation photo: today's failure comes at the sanity check
    photo = copy / "train" / f"{car}_02.jpg"
    photo.write_bytes(photo.read_bytes()[: photo.stat().st_size // 2])
    out = tmp_path / "run"
    args = train_args(copy, out, "data.num_workers=1")
    proc = run_train(args, timeout=120)
    check_user_error(proc.returncode, proc.stderr, [str(photo)])
    assert not (out / "checkpoints").exists()


def test_unknown_encoder_group_lists_the_options(carvana_root: Path, tmp_path: Path):
    """encoder=nosuch is Hydra's own error: no run starts, and the message lists the encoder files."""
    out = tmp_path / "run"
    proc = run_train(train_args(carvana_root, out, "encoder=nosuch"), timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "nosuch" in proc.stderr
    options = proc.stderr.split("Available options", 1)[-1]
    assert "mobilenet" in options and "resnet50" in options
    assert not out.exists()


VALIDATE = """
import sys
import time
from pathlib import Path
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from carvana.model.loading import load_module
from carvana.training.run import build_datamodule, settings_of

repo, root, ckpt, devices = sys.argv[4], sys.argv[1], sys.argv[2], int(sys.argv[3])
module = load_module(ckpt)
with initialize_config_dir(config_dir=f"{repo}/conf", version_base="1.3"):
    cfg = compose(config_name="config", overrides=[f"data.root={root}", f"data.folds={root}/folds.csv", "fold=0",
                                                  "data.batch_size=2", "data.num_workers=0", "data.crop_size=null",
                                                  "data.input_size=null"])
data = build_datamodule(settings_of(cfg), Path(root))
trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                     enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
result = trainer.validate(module, datamodule=data, verbose=False)
if trainer.is_global_zero:
    print(f"val_dice={result[0]['val_dice']:.7f}")
"""


@pytest.mark.slow
def test_validation_on_two_ranks_scores_each_photo_once(trained_run: dict, carvana_root: Path, tmp_path: Path):
    """13 validation photos on 2 ranks: a padded sampler would score one twice (Lightning #5060); the Kaggle mean Dice
    must be the 1-rank one."""
    root = shutil.copytree(carvana_root, tmp_path / "data")
    folds = pd.read_csv(root / "folds.csv", dtype={"id": str})
    car = folds["id"][folds["fold"] == 0].iloc[0]
    for angle in (2, 9, 15):
        (root / "train" / f"{car}_{angle:02d}.jpg").unlink()
    (tmp_path / "validate.py").write_text(VALIDATE)
    dice = []
    for devices in (1, 2):
        proc = subprocess.run([sys.executable, str(tmp_path / "validate.py"), str(root), str(trained_run["ckpt"]),
                               str(devices), str(REPO)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        dice.append(float(proc.stdout.strip().splitlines()[-1].split("=")[1]))
    assert dice[0] == pytest.approx(dice[1], abs=1e-6), dice


def test_the_datamodule_reads_its_inputs_once(carvana_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Lightning calls setup() again inside fit: the photos are checked (and pseudo-labels read) once."""
    import carvana.data.datamodule
    from carvana.training.run import build_datamodule

    cfg = compose_train(f"data.root={carvana_root}", f"data.folds={carvana_root / 'folds.csv'}", "fold=0",
                        "data.num_workers=0")
    dm = build_datamodule(cfg, tmp_path)  # calls setup()
    monkeypatch.setattr(carvana.data.datamodule, "check_photos",
                        lambda *a, **k: pytest.fail("setup read the inputs twice"))
    monkeypatch.setattr(carvana.data.datamodule, "find_masks",
                        lambda *a, **k: pytest.fail("setup read the inputs twice"))
    dm.setup("fit")
    assert len(dm.train_set) == 32 and len(dm.val_set) == 16


def _plain(value: object) -> bool:
    """Only dicts, lists, strings, numbers, booleans and None, all the way down."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def test_the_job_takes_plain_settings_and_makes_one_geometry(carvana_root: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    """Hydra's config is made plain once (settings_of); the job makes one Geometry for the data and the model, and
    the model's hyperparameters are plain copies, not the settings' own lists and dicts."""
    from carvana.training import run as training

    made = []
    monkeypatch.setattr(training, "geometry_of", lambda data, real=training.geometry_of: made.append(1) or real(data))
    cfg = compose_train(f"data.root={carvana_root}", f"data.folds={carvana_root / 'folds.csv'}", "fold=1",
                        "data.num_workers=0", "encoder=mobilenet", "model.encoder_weights=null", "trainer=cpu",
                        "data.crop_size=[32,64]")
    assert type(cfg) is dict and _plain(cfg)
    module, dm, ckpt_path = training.prepare(cfg, tmp_path / "run")
    assert len(made) == 1 and ckpt_path is None
    assert dm.geometry == module.geometry and module.geometry.crop_size == (32, 64)
    assert _plain(dict(module.hparams)) and module.hparams["loss"] == cfg["loss"]
    assert module.hparams["loss"] is not cfg["loss"] and module.hparams["cyclic"] is not cfg["optim"]["cyclic"]
    assert module.hparams["data"]["fold"] == 1 and module.hparams["data"]["root"] == str(carvana_root)


def test_the_cyclic_schedule_is_logged_at_every_step(carvana_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    result_of(run_train(train_args(carvana_root, out, "optim.scheduler=cyclic", "optim.cyclic.step_size_up=2",
                                   "trainer.limit_train_batches=4", "trainer.log_every_n_steps=1")))
    metrics = pd.read_csv(out / "csv" / "metrics.csv")
    lrs = metrics.dropna(subset=["lr-Adam"])
    assert len(lrs) >= 4 and lrs["lr-Adam"].nunique() >= 3  # one per step, moving with the cycle


def test_batches_split_by_rank_refuse_a_second_split():
    """A Trainer left at use_distributed_sampler=True re-creates the batch sampler over its DistributedSampler: each
    rank would see a quarter of the photos, one padded in twice. Refused in one line naming the fix."""
    from torch.utils.data import DistributedSampler

    from carvana import CarvanaError
    from carvana.data.dataset import SizeBatchSampler

    sizes = [(64, 96)] * 13
    shares = [[i for batch in SizeBatchSampler(range(13), sizes, 2, num_replicas=2, rank=r) for i in batch]
              for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == list(range(13))  # each photo once, on one rank
    with pytest.raises(CarvanaError, match="use_distributed_sampler=False"):
        SizeBatchSampler(DistributedSampler(range(13), num_replicas=2, rank=0), sizes, 2, num_replicas=2, rank=0)


def test_a_run_started_again_in_its_folder_takes_its_own_settings(trained_run: dict, tmp_path: Path):
    """python train.py hydra.run.dir=<run> alone: the run's saved overrides (data=synthetic, its data.root, ...), not
    Carvana's defaults, and its .hydra record unchanged byte for byte; an override that changes the model is refused
    in one line and overwrites nothing."""
    out = shutil.copytree(trained_run["out"], tmp_path / "run")
    record = {p.name: p.read_bytes() for p in (out / ".hydra").iterdir()}
    proc = run_train([f"hydra.run.dir={out}"])
    dice, ckpt = result_of(proc)
    assert f"resuming from {out / 'checkpoints' / 'last.ckpt'}" in proc.stdout
    assert ckpt.parent == out / "checkpoints" and dice == pytest.approx(trained_run["dice"], abs=1e-4)
    assert {p.name: p.read_bytes() for p in (out / ".hydra").iterdir()} == record
    proc = run_train([f"hydra.run.dir={out}", "model.encoder_name=resnet18"])
    check_user_error(proc.returncode, proc.stderr, ["cannot resume", "model.encoder_name", "resnet18"])
    assert {p.name: p.read_bytes() for p in (out / ".hydra").iterdir()} == record


@pytest.mark.parametrize("to_group", [False, True], ids=["process", "process_group"])
def test_sigterm_saves_the_run_and_exits_non_zero(to_group: bool, carvana_root: Path, tmp_path: Path):
    """A container stop (the process) or `timeout` (the process group: DataLoader workers too) mid-epoch: last.ckpt of
    the step reached, one error line saying how to resume, exit 143 (Lightning's own SIGTERM handling exits 0);
    started again, the run ends where an unstopped one does."""
    out = tmp_path / "run"
    args = train_args(carvana_root, out, "data.batch_size=1", "trainer.max_epochs=20", "logger=[csv]",
                      "trainer.limit_train_batches=16", f"data.num_workers={int(to_group)}")
    train = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    last = out / "checkpoints" / "last.ckpt"
    try:
        for _ in range(600):  # the end of epoch 0: Lightning's SIGTERM handler is in place, epoch 1 training
            if last.is_file() or train.poll() is not None:
                break
            time.sleep(0.5)
        os.killpg(train.pid, signal.SIGTERM) if to_group else train.send_signal(signal.SIGTERM)
        stdout, stderr = train.communicate(timeout=120)
    finally:
        train.kill()
    assert train.returncode == 143, (train.returncode, stderr[-3000:])
    assert "val_dice=" not in stdout and "Traceback" not in stderr
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("error: stopped by SIGTERM") and str(last) in error and f"hydra.run.dir={out}" in error
    assert load_ckpt(last)["global_step"] >= 16  # epoch 0: 16 batches of 1 photo
    dice, ckpt = result_of(run_train([f"hydra.run.dir={out}", "trainer.max_epochs=2"]))
    assert (load_ckpt(last)["epoch"], load_ckpt(last)["global_step"]) == (1, 32)
    assert val_metrics(out)["epoch"].tolist() == [0, 1]
    check_best_of(out, dice, ckpt)


def test_a_resumed_run_keeps_its_folds(carvana_root: Path, tmp_path: Path):
    """Folds made by group (data.folds=null), then a car added to data.root: the run started again in its folder, or
    resumed into another from its checkpoint, keeps the folds it began with and says what it leaves out."""
    root = shutil.copytree(carvana_root, tmp_path / "data")
    out = tmp_path / "run"
    quick = ["data.folds=null", "data.n_folds=3", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
             "logger=[csv]"]
    result_of(run_train(train_args(root, out, *quick)))
    folds = (out / "folds.csv").read_bytes()
    car = pd.read_csv(out / "folds.csv", dtype=str)["group"][0]
    for photo in (root / "train").glob(f"{car}_*.jpg"):  # a new car: 16 photos and their masks
        shutil.copy(photo, root / "train" / photo.name.replace(car, "newcar000001"))
        mask = root / "train_masks" / f"{photo.stem}_mask.gif"
        shutil.copy(mask, root / "train_masks" / mask.name.replace(car, "newcar000001"))
    proc = run_train([f"hydra.run.dir={out}", "trainer.max_epochs=2"])
    result_of(proc)
    assert (out / "folds.csv").read_bytes() == folds
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning: 16 photo(s)")]
    assert warning and "newcar000001_" in warning[0] and "left out" in warning[0], proc.stderr[-2000:]
    other = tmp_path / "other"
    result_of(run_train(train_args(root, other, *quick, f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
                                   "trainer.max_epochs=3")))
    assert (other / "folds.csv").read_bytes() == folds


def test_a_tiny_fold_and_a_large_cpu_run_are_warned_about(capsys: pytest.CaptureFixture, tmp_path: Path):
    """1 validation photo: val_dice is that photo's Dice, said; Carvana's defaults on a machine without a GPU: hours,
    said at the start, with the few-photo recipe named; the demo's size: nothing said."""
    from carvana.training.messages import say_cpu, say_photos

    say_photos(2, [Path("a_01.jpg"), Path("a_02.jpg"), Path("b_01.jpg")], [Path("c_01.jpg")], r"^(.+)_\d+$")
    out, err = capsys.readouterr()
    assert out.strip() == "fold 2: 3 training photos (2 groups), 1 validation photo (1 group)"
    assert err.startswith("warning: fold 2 validates on 1 photo:") and "data.n_folds" in err, err
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the CPU warning is for machines without one")
    for i in range(200):  # counted, not read: the crops give the size
        (tmp_path / "train" / f"car{i:03d}_01.jpg").parent.mkdir(exist_ok=True)
        (tmp_path / "train" / f"car{i:03d}_01.jpg").touch()
    say_cpu(compose_train(f"data.root={tmp_path}"))
    err = capsys.readouterr().err
    assert err.startswith("warning: no GPU: 200 photos x 60 epochs at 1024x1024") and "experiment=few_photos" in err
    say_cpu(compose_train(f"data.root={tmp_path}", "data=synthetic", "data.input_size=[192,288]"))
    assert capsys.readouterr().err == ""


def test_help_lists_the_chosen_data_files_keys():
    """train.py data=folder --help: the folder's defaults (data.root=???, images/, masks/), then Carvana's other keys
    it inherits, each once."""
    proc = subprocess.run([sys.executable, "train.py", "data=folder", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    keys = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  data.")]
    assert "data.root=???" in keys and "data.image_dir=images" in keys and "data.folds=null" in keys, keys
    assert "data.crop_size=[1024," in keys and len(keys) == len({k.split("=")[0] for k in keys})
    assert "data.root=data/carvana" not in keys
