"""The seed's recipes end to end on the tiny synthetic set: stacked second stage, pseudo-labels, experiments."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import REPO, TINY_SIZE, predict_args, predict_here, run_train, tiny_module, train_args, train_here
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationToMissingValueError

from carvana import CarvanaError
from carvana.data.boxes import write_bboxes
from carvana.model.loading import read_checkpoint
from carvana.predict.ensemble import Ensemble, PredictDataset


def predict_into(out: Path, ckpt: Path, *extra: str) -> None:
    """predict.py in this process (the mechanics are tested here; the refusals below run as a user types them)."""
    run = predict_here(predict_args(ckpt, out, *extra))
    assert run.code == 0, run.out[-2000:] + run.err[-2000:]


@pytest.fixture(scope="module")
def first_stage(trained_run: dict, carvana_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A first stage's masks of every training and test photo. The seed made the training photos' masks out of fold,
    one fold model each; these tests check the mechanics, so one checkpoint predicts them all."""
    out = tmp_path_factory.mktemp("stage1") / "masks"
    for photos in ("train", "test"):
        predict_into(out, trained_run["ckpt"], f"input_dir={carvana_root / photos}")
    photos = [p.stem for d in ("train", "test") for p in (carvana_root / d).glob("*.jpg")]
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(photos)
    return out


def last_step(run: Path) -> int:
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    return int(metrics["step"].max())


@pytest.mark.slow
def test_stacked_second_stage_trains_and_predicts(carvana_root: Path, first_stage: Path, tmp_path: Path):
    run = tmp_path / "stage2"
    ckpt = train_here(train_args(carvana_root, run, "encoder=simple_unet", f"data.stacked_dirs=[{first_stage}]"))
    hparams = read_checkpoint(ckpt)["hyper_parameters"]
    assert hparams["in_channels"] == 4 and hparams["arch"] == "simple_unet"
    assert hparams["data"]["stacked_dirs"] == [str(first_stage)]
    out = tmp_path / "pred"
    predict_into(out, ckpt, f"input_dir={carvana_root / 'test'}")
    written = sorted(out.glob("*.png"))
    assert len(written) == len(list((carvana_root / "test").glob("*.jpg")))
    assert cv2.imread(str(written[0]), cv2.IMREAD_UNCHANGED).shape == TINY_SIZE


def test_stacked_mask_missing_is_one_line(carvana_root: Path, first_stage: Path, tmp_path: Path):
    partial = tmp_path / "partial"
    partial.mkdir()
    pngs = sorted(first_stage.glob("*.png"))
    missing = next(p.name for p in pngs if (carvana_root / "train" / f"{p.stem}.jpg").exists())
    for png in pngs:
        if png.name != missing:
            (partial / png.name).write_bytes(png.read_bytes())
    args = train_args(carvana_root, tmp_path / "run", "encoder=simple_unet", f"data.stacked_dirs=[{partial}]")
    proc = run_train(args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert missing in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_pseudo_labels_join_training_only(trained_run: dict, carvana_root: Path, first_stage: Path, tmp_path: Path):
    plain = trained_run["out"]  # the same training without pseudo-labels
    pseudo = tmp_path / "pseudo"
    ckpt = train_here(train_args(carvana_root, pseudo, f"data.pseudo_dir={first_stage}", "data.pseudo_ratio=0.5"))
    n_test = len(list((carvana_root / "test").glob("*.jpg")))
    n_train = len(list((carvana_root / "train").glob("*.jpg"))) - 16  # fold 0 holds one of the 3 cars
    # ratio 0.5: as many pseudo-labelled photos as real ones, capped by the test photos there are
    assert last_step(pseudo) - last_step(plain) == -(-(n_train + min(n_test, n_train)) // 4) - n_train // 4
    assert ckpt.is_file()


def test_pseudo_mask_of_wrong_size_is_one_line(carvana_root: Path, first_stage: Path, tmp_path: Path):
    bad = tmp_path / "bad"
    bad.mkdir()
    pngs = sorted(first_stage.glob("*.png"))
    for png in pngs:
        (bad / png.name).write_bytes(png.read_bytes())
    test_png = next(p for p in sorted(bad.glob("*.png")) if (carvana_root / "test" / f"{p.stem}.jpg").exists())
    cv2.imwrite(str(test_png), np.zeros((32, 48), np.uint8))
    proc = run_train(train_args(carvana_root, tmp_path / "run", f"data.pseudo_dir={bad}", "data.pseudo_ratio=0.9"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert test_png.name in proc.stderr


@pytest.mark.parametrize("experiment", ["resnet50", "mobilenet", "stacked", "pseudo"])
def test_experiment_configs_compose(experiment: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"])
    assert cfg.seed == 80 and cfg.trainer.accelerator == "auto" and list(cfg.data.crop_size) == [1024, 1024]
    # the seed's Keras weights wanted caffe/tf; smp's ImageNet weights get their own preprocessing (auto)
    expected = {"resnet50": ("resnet50", "imagenet"), "mobilenet": ("mobilenet_v2", "imagenet"),
                "stacked": ("simple_unet", None), "pseudo": ("resnet50", "imagenet")}[experiment]
    assert (cfg.model.encoder_name, cfg.model.encoder_weights) == expected
    assert cfg.preprocessing.name == "auto" and cfg.data.root == "data/carvana"
    if experiment in ("stacked", "pseudo"):  # the folders to read are required, not guessed
        key = "stacked_dirs" if experiment == "stacked" else "pseudo_dir"
        assert OmegaConf.is_missing(cfg, key)
        with pytest.raises(InterpolationToMissingValueError):
            _ = cfg.data.stacked_dirs if experiment == "stacked" else cfg.data.pseudo_dir


def test_freeze_encoder_until_a_layer():
    module = tiny_module(encoder_name="resnet18", freeze_encoder_until="layer2")
    module.on_train_epoch_start()  # epoch 0, no freeze_encoder_epochs: only the layers up to layer2 stay frozen
    encoder = module.net.encoder
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert not any(name.startswith(("conv1", "bn1", "layer1", "layer2")) for name in trainable)
    assert {name for name, _ in encoder.named_parameters() if name.startswith(("layer3", "layer4"))} <= trainable
    with pytest.raises(CarvanaError, match="layer9"):
        tiny_module(encoder_name="resnet18", freeze_encoder_until="layer9")


def test_car_crops_train_and_paste_back(carvana_root: Path, first_stage: Path, tmp_path: Path):
    bboxes = tmp_path / "bboxes.csv"
    table = write_bboxes(first_stage, bboxes, threshold=0.5, margin=4, multiple=16, workers=2)
    assert set(table.columns) == {"img", "y_start", "y_end", "x_start", "x_end"}
    run = tmp_path / "crops"
    ckpt = train_here(train_args(carvana_root, run, f"data.bboxes={bboxes}", "data.input_size=[32,64]"))
    assert read_checkpoint(ckpt)["hyper_parameters"]["data"]["bboxes"] == str(bboxes)
    out = tmp_path / "pred"
    predict_into(out, ckpt, f"input_dir={carvana_root / 'test'}")
    boxes = table.set_index("img")
    for png in sorted(out.glob("*.png")):
        probs = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        assert probs.shape == TINY_SIZE
        y0, y1, x0, x1 = boxes.loc[f"{png.stem}.jpg"]
        outside = probs.copy()
        outside[y0:y1, x0:x1] = 0
        assert not outside.any()  # pasted back: nothing outside the car's box


def test_car_crop_without_its_row_is_one_line(carvana_root: Path, first_stage: Path, tmp_path: Path):
    bboxes = tmp_path / "bboxes.csv"
    table = write_bboxes(first_stage, bboxes, threshold=0.5, margin=4, multiple=16, workers=2)
    dropped = next(img for img in table.img if (carvana_root / "train" / img).exists())
    table[table.img != dropped].to_csv(bboxes, index=False)
    proc = run_train(train_args(carvana_root, tmp_path / "run", f"data.bboxes={bboxes}", "data.input_size=[32,64]"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert dropped in proc.stderr and str(bboxes) in proc.stderr


def test_crop_predictions_paste_into_full_carvana_size(shared_data: Path):
    photos = sorted((shared_data / "real" / "test").glob("*.jpg"))[:2]
    box = (256, 1024, 320, 1600)
    model = tiny_module(input_size=[64, 96], boxes=True).eval()
    dataset = PredictDataset(photos, [model.geometry], boxes={p.name: box for p in photos})
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    assert batch["inputs"]["box64x96"].shape == (2, 3, 64, 96)
    with torch.no_grad():
        probs = Ensemble([model], tta="none").predict_step(batch, 0).probs8  # HostProbs8 (issue 10)
    assert probs.shape == (2, 1280, 1918) and probs.dtype == torch.uint8
    assert (probs[:, box[0] : box[1], box[2] : box[3]] > 0).any()
    outside = probs.clone()
    outside[:, box[0] : box[1], box[2] : box[3]] = 0
    assert not outside.any()  # zero outside the car's box


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclic_lr_steps_per_batch(mode: str):
    module = tiny_module(scheduler="cyclic", cyclic={"base_lr": 1e-5, "max_lr": 1e-3, "step_size_up": 4, "mode": mode})
    config = module.configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.CyclicLR) and config["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(16):
        lrs.append(config["optimizer"].param_groups[0]["lr"])
        config["optimizer"].step()
        scheduler.step()
    peak = pytest.approx(1e-3, rel=0.05 if mode == "exp_range" else 1e-6)
    assert lrs[0] == pytest.approx(1e-5) and max(lrs[:8]) == peak
    if mode == "triangular2":  # the second cycle peaks at half the first
        assert max(lrs[8:]) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)


def test_inceptionresnetv2_encoder_builds_and_runs():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["encoder=inceptionresnetv2"])
    module = tiny_module(encoder_name=cfg.model.encoder_name, decoder_channels=list(cfg.model.decoder_channels),
                       input_size=[64, 96]).eval()
    photo = np.random.default_rng(0).integers(0, 255, (70, 100, 3), dtype=np.uint8)
    with torch.no_grad():
        image = torch.from_numpy(module.geometry.to_input(photo)[0]).permute(2, 0, 1)[None]
        logits = module.geometry.to_full(module(image), (70, 100))
    assert logits.shape == (1, 1, 70, 100)


def test_experiment_without_its_required_key_is_one_line():
    proc = subprocess.run([sys.executable, "train.py", "experiment=stacked", "trainer=cpu"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and "stacked_dirs" in proc.stderr
