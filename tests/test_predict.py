"""predict.py: full-size PNGs named like the photos, TTA, ensembles, resume, RLE shards, DDP, the out-of-fold Dice
table and bad input, against hand computations on the same checkpoints (tiny 64x96 photos, CPU)."""

import os
import shutil
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    QUIET,
    REPO,
    TINY_SIZE,
    Run,
    max_diff,
    predict_args,
    predict_here,
    result_of,
    run_train,
    shard_rows,
    submission,
    train_args,
    train_here,
)

from carvana import CarvanaError
from carvana.data.io import read_image, read_mask, read_probs8, write_image, write_probs8
from carvana.data.layout import car_id
from carvana.data.rle import rle_decode
from carvana.hardware import default_workers
from carvana.model.loading import init_from, load_models, load_module
from carvana.model.losses import dice_per_image
from carvana.model.module import SegModule
from carvana.predict.ensemble import Ensemble
from carvana.predict.manifest import MANIFEST, sha256
from carvana.predict.writer import to_probs8

REAL_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "test"


def predict_process(args: list[str], timeout: float = 300) -> Run:
    """python predict.py ARGS in a new process, as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "predict.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every mask file of a directory (not its predict.json, which each run updates): name -> (mtime in ns, bytes)."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(directory.iterdir())
            if p.is_file() and p.name != MANIFEST}


def photo_tensor(path: Path) -> torch.Tensor:
    return torch.from_numpy(read_image(path).transpose(2, 0, 1).copy())[None]


def expected_pngs(models: list[SegModule], photos: list[Path], tta: bool) -> dict[str, np.ndarray]:
    """By hand: each model's input as its geometry makes it, the mean over models (and the flipped input, flipped
    back) of sigmoid(logits at full size) -> name: HxW uint8."""
    images = [read_image(p) for p in photos]
    size, probs = images[0].shape[:2], []
    with torch.no_grad():
        for model in models:
            x = torch.stack([torch.from_numpy(model.geometry.to_input(image)[0]).permute(2, 0, 1) for image in images])
            probs.append(model.geometry.to_full(model(x), size).sigmoid())
            if tta:
                probs.append(model.geometry.to_full(model(x.flip(-1)).flip(-1), size).sigmoid())
    pngs = (torch.stack(probs).mean(0)[:, 0] * 255).round().to(torch.uint8).numpy()
    return {p.name: png for p, png in zip(photos, pngs)}


@pytest.fixture(scope="module")
def ckpt_pad(carvana_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of python train.py on the tiny set, full size padded (fold 0, 2 training steps)."""
    out = tmp_path_factory.mktemp("pad") / "run"
    return result_of(run_train(train_args(carvana_root, out, "trainer.limit_train_batches=2")))[1]


@pytest.fixture(scope="module")
def ckpt_resize(carvana_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another seed, resize mode (photos resized to 32x64 for the network), 1 training step; trained in this process."""
    out = tmp_path_factory.mktemp("resize") / "run"
    args = [a for a in train_args(carvana_root, out) if not a.startswith("data.input_size")]
    return train_here([*args, "data.input_size=[32,64]", "seed=1", "trainer.limit_train_batches=1"])


@pytest.fixture(scope="module")
def png_run(ckpt_pad: Path, carvana_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Path]:
    """python predict.py on the checkpoint's own test folder (no input_dir), in a real process with a worker."""
    out = tmp_path_factory.mktemp("png") / "pred"
    args = [a for a in predict_args(ckpt_pad, out) if a != "num_workers=0"]
    return predict_process([*args, "num_workers=1"]), out


def test_png_per_photo_named_like_it_full_size(png_run: tuple[Run, Path], carvana_root: Path, ckpt_pad: Path):
    run, out = png_run
    assert run.code == 0, run.err[-3000:]
    assert "Traceback" not in run.err
    photos = sorted((carvana_root / "test").glob("*.jpg"))
    assert len(photos) == 16
    summary = run.summary()
    assert (summary["predicted"], summary["skipped"], summary["out"]) == ("16", "0", str(out))
    assert run.out.count("predicted=") == 1
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, *(f"{p.stem}.png" for p in photos)])  # no other
    expected = expected_pngs([load_module(ckpt_pad)], photos, tta=False)
    for photo in photos:
        png = cv2.imread(str(out / f"{photo.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint8 and png.shape == TINY_SIZE  # 8-bit grey, the photo's height x width
        assert max_diff(png, expected[photo.name]) <= 1
    assert len({(out / f"{p.stem}.png").read_bytes() for p in photos}) > 1  # one mask per photo, not one copied


def test_to_probs8_rounds_like_torch_half_to_even():
    torch.manual_seed(0)
    probs = torch.rand(3, 1, 40, 56)
    ties = torch.arange(0, 256, dtype=torch.float32).add_(0.5).div_(255)  # p * 255 lands on k + 0.5 (or next to it)
    probs[0, 0, 0, : len(ties) // 5] = ties[: len(ties) // 5]
    probs[1, 0, :2, :2] = torch.tensor([[0.0, 1.0], [1e-9, 1 - 1e-9]])
    expected = probs.mul(255).round()[:, 0].to(torch.uint8)
    got = to_probs8(probs.clone())
    assert got.dtype == torch.uint8 and got.shape == (3, 40, 56)
    assert torch.equal(got, expected)


@pytest.mark.parametrize(("cpus", "devices", "workers"), [(16, 1, 8), (64, 8, 8), (16, 8, 2), (2, 1, 2), (2, 4, 1)])
def test_default_workers_share_the_cpus_between_devices(cpus: int, devices: int, workers: int):
    with mock.patch("os.sched_getaffinity", return_value=set(range(cpus)), create=True):
        assert default_workers(devices) == workers


def test_real_photos_come_back_at_1918x1280(ckpt_resize: Path, tmp_path: Path):
    if not REAL_TEST.is_dir():
        pytest.skip(f"the real test photos are not at {REAL_TEST}")
    photos = sorted(REAL_TEST.glob("*.jpg"))[:2]
    if len(photos) < 2:
        pytest.skip(f"fewer than 2 photos in {REAL_TEST}")
    (tmp_path / "in").mkdir()
    for photo in photos:
        shutil.copy(photo, tmp_path / "in")
    out = tmp_path / "pred"
    run = predict_here(predict_args(ckpt_resize, out, f"input_dir={tmp_path / 'in'}"))
    assert run.code == 0 and not run.errors(), run.out + run.err
    assert run.summary()["predicted"] == "2"
    for photo in photos:
        png = read_probs8(out / f"{photo.stem}.png")
        assert png.shape == (1280, 1918)  # height 1280, width 1918: Kaggle's size, whatever the network saw
    assert max_diff(png, expected_pngs([load_module(ckpt_resize)], photos[-1:], tta=False)[photo.name]) <= 1


def test_tta_hflip_is_the_mean_with_the_flipped_prediction(ckpt_pad: Path, carvana_root: Path, tmp_path: Path):
    out = tmp_path / "pred"
    run = predict_here(predict_args(ckpt_pad, out, "tta=hflip"))
    assert run.code == 0, run.out + run.err
    photos = sorted((carvana_root / "test").glob("*.jpg"))
    model = load_module(ckpt_pad)
    tta, plain = expected_pngs([model], photos, tta=True), expected_pngs([model], photos, tta=False)
    changed = 0
    for photo in photos:
        png = read_probs8(out / f"{photo.stem}.png")
        assert max_diff(png, tta[photo.name]) <= 1, photo.name
        changed += max_diff(png, plain[photo.name]) > 1
    assert changed > 0  # the flip matters for this model: the test could tell TTA from none


def test_ensemble_is_the_mean_of_two_checkpoints(ckpt_pad: Path, ckpt_resize: Path, carvana_root: Path, tmp_path: Path):
    out = tmp_path / "pred"
    run = predict_here(predict_args(f"['{ckpt_pad}','{ckpt_resize}']", out))
    assert run.code == 0, run.out + run.err
    photos = sorted((carvana_root / "test").glob("*.jpg"))
    models = [load_module(ckpt_pad), load_module(ckpt_resize)]
    both, first = expected_pngs(models, photos, tta=False), expected_pngs(models[:1], photos, tta=False)
    alone = 0
    for photo in photos:
        png = read_probs8(out / f"{photo.stem}.png")
        assert max_diff(png, both[photo.name]) <= 1, photo.name
        alone += max_diff(png, first[photo.name]) > 1
    assert alone > 0  # the second checkpoint changed the result


def test_resume_skips_what_is_written(png_run: tuple[Run, Path], ckpt_pad: Path, tmp_path: Path):
    out = shutil.copytree(png_run[1], tmp_path / "pred")
    before = snapshot(out)
    run = predict_here(predict_args(ckpt_pad, out))
    assert run.code == 0, run.out + run.err
    assert (run.summary()["predicted"], run.summary()["skipped"]) == ("0", "16")
    assert snapshot(out) == before  # same files, same bytes, not rewritten

    gone = sorted(before)[3:5]
    for name in gone:
        (out / name).unlink()
    run = predict_here(predict_args(ckpt_pad, out))
    assert run.code == 0, run.out + run.err
    assert (run.summary()["predicted"], run.summary()["skipped"]) == ("2", "14")
    after = snapshot(out)
    assert sorted(after) == sorted(before)
    assert {name: after[name] for name in after if name not in gone} == {n: before[n] for n in before if n not in gone}
    for name in gone:  # redone: the same mask (tolerance 1: other batches, other rounding)
        original = cv2.imdecode(np.frombuffer(before[name][1], np.uint8), cv2.IMREAD_UNCHANGED)
        assert max_diff(read_probs8(out / name), original) <= 1


@pytest.fixture(scope="module")
def rle_run(ckpt_pad: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Path]:
    out = tmp_path_factory.mktemp("rle") / "pred"
    return predict_here(predict_args(ckpt_pad, out, "write=rle")), out


def test_rle_rows_decode_to_the_thresholded_png(
    rle_run: tuple[Run, Path], png_run: tuple[Run, Path], carvana_root: Path
):
    run, out = rle_run
    assert run.code == 0, run.out + run.err
    assert run.summary()["predicted"] == "16"
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "rle-rank0.csv"]  # write=rle: no PNG
    rows = shard_rows(out)
    photos = sorted(p.name for p in (carvana_root / "test").glob("*.jpg"))
    assert sorted(img for _, img, _ in rows) == photos
    cars = 0
    for _, img, rle in rows:
        probs = read_probs8(png_run[1] / f"{Path(img).stem}.png")
        mask = rle_decode(rle, TINY_SIZE)
        # the PNG and the row come from two runs: a pixel may sit on the threshold after a rounding of 1
        borderline = np.abs(probs.astype(float) - 127.5) <= 1
        assert np.array_equal(mask[~borderline], (probs > 127.5)[~borderline]), img
        cars += mask.sum()
    assert 0 < cars < len(rows) * TINY_SIZE[0] * TINY_SIZE[1]  # neither all car nor all background


def test_rle_and_png_of_one_run_agree_exactly(ckpt_pad: Path, carvana_root: Path, tmp_path: Path):
    out = tmp_path / "pred"
    photos = sorted((carvana_root / "test").glob("*.jpg"))[:5]
    (tmp_path / "in").mkdir()
    for photo in photos:
        shutil.copy(photo, tmp_path / "in")
    run = predict_here(predict_args(ckpt_pad, out, f"input_dir={tmp_path / 'in'}", "write=[png,rle]", "threshold=0.3"))
    assert run.code == 0, run.out + run.err
    rows = shard_rows(out)
    assert sorted(img for _, img, _ in rows) == [p.name for p in photos]
    for _, img, rle in rows:
        probs = read_probs8(out / f"{Path(img).stem}.png")
        np.testing.assert_array_equal(rle_decode(rle, TINY_SIZE), probs > 0.3 * 255)


def test_half_written_rle_row_is_redone(rle_run: tuple[Run, Path], ckpt_pad: Path, tmp_path: Path):
    out = shutil.copytree(rle_run[1], tmp_path / "pred")
    shard = out / "rle-rank0.csv"
    text = shard.read_text()
    whole = text.splitlines()
    last_name, last_rle = whole[-1].split(",", 1)
    assert len(last_rle) > 4
    shard.write_text(text[: -len(last_rle) // 2 - 1])  # a run killed while writing its last row: no newline
    run = predict_here(predict_args(ckpt_pad, out, "write=rle"))
    assert run.code == 0, run.out + run.err
    assert (run.summary()["predicted"], run.summary()["skipped"]) == ("1", "15")
    rows = shard_rows(out)
    assert [img for _, img, _ in rows] == [line.split(",", 1)[0] for line in whole[1:]]  # once each, in order
    redone = rle_decode({img: rle for _, img, rle in rows}[last_name], TINY_SIZE)
    assert np.mean(redone != rle_decode(last_rle, TINY_SIZE)) < 1e-3  # the same mask (a batch of 1 may round apart)


@pytest.mark.slow
def test_ddp_two_processes_write_each_photo_once(ckpt_pad: Path, carvana_root: Path, tmp_path: Path):
    photos = sorted((carvana_root / "test").glob("*.jpg"))[:5]  # odd: a padding sampler would repeat one
    (tmp_path / "in").mkdir()
    for photo in photos:
        shutil.copy(photo, tmp_path / "in")
    out = tmp_path / "pred"
    run = predict_process(
        predict_args(
            ckpt_pad,
            out,
            f"input_dir={tmp_path / 'in'}",
            "write=[png,rle]",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            # ddp.yaml's 16-mixed is bf16 autocast on CPU: up to 75/255 from float32
            "trainer.precision=32",
            "trainer.enable_progress_bar=false",
            *QUIET,
        )
    )
    assert run.code == 0, run.out[-3000:] + run.err[-3000:]
    assert run.out.count("predicted=") == 1  # rank 0 only
    assert (run.summary()["predicted"], run.summary()["skipped"]) == ("5", "0")
    rows = shard_rows(out)
    assert sorted(img for _, img, _ in rows) == [p.name for p in photos]  # none twice, none missing
    assert {shard for shard, _, _ in rows} == {"rle-rank0.csv", "rle-rank1.csv"}  # both ranks worked
    assert sorted(p.name for p in out.glob("*.png")) == [f"{p.stem}.png" for p in photos]
    expected = expected_pngs([load_module(ckpt_pad)], photos, tta=False)
    for _, img, rle in rows:
        probs = read_probs8(out / f"{Path(img).stem}.png")
        assert max_diff(probs, expected[img]) <= 1
        np.testing.assert_array_equal(rle_decode(rle, TINY_SIZE), probs > 127.5)
    # both ranks' shards merge into one gzip CSV, in the sample's order
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"img": [p.name for p in reversed(photos)], "rle_mask": "1 1"}).to_csv(sample, index=False)
    sub = submission(sample, tmp_path / "sub.csv.gz", rle_dir=out, height=TINY_SIZE[0], width=TINY_SIZE[1])
    table = pd.read_csv(sub, keep_default_na=False)
    assert table.values.tolist() == sorted(([img, rle] for _, img, rle in rows), reverse=True)
    assert not list(out.glob(".*"))  # no temporary files left


def test_predict_on_val_writes_the_dice_table_of_the_fold(ckpt_pad: Path, carvana_root: Path, tmp_path: Path):
    fold = 1  # not the checkpoint's own fold 0: the override is used
    out = tmp_path / "pred"
    run = predict_here(predict_args(ckpt_pad, out, "predict_on_val=true", f"fold={fold}"))
    assert run.code == 0, run.out + run.err
    summary = run.summary()
    table_path = out / f"dice_fold{fold}.csv"
    assert summary["table"] == str(table_path)
    table = pd.read_csv(table_path, dtype={"car": str})
    assert table.columns.tolist() == ["image", "car", "angle", "dice"]
    folds = pd.read_csv(carvana_root / "folds.csv", dtype={"id": str})
    cars = set(folds["id"][folds["fold"] == fold])
    expected = sorted(p.name for p in (carvana_root / "train").glob("*.jpg") if car_id(p) in cars)
    assert len(expected) == 16 and sorted(table["image"]) == expected
    assert (table["car"] == table["image"].str.rsplit("_", n=1).str[0]).all()
    assert sorted(table["angle"]) == list(range(1, 17))
    assert float(summary["dice"]) == pytest.approx(table["dice"].mean(), abs=6e-5)
    assert sorted(p.name for p in out.glob("*.png")) == [f"{Path(n).stem}.png" for n in expected]
    # one photo by hand: the model's full-size probabilities > 0.5 against its GIF mask
    photo = carvana_root / "train" / expected[5]
    with torch.no_grad():
        model = load_module(ckpt_pad)
        pred = (model.geometry.to_full(model(photo_tensor(photo)), TINY_SIZE).sigmoid() > 0.5).float()
    truth = torch.from_numpy(read_mask(carvana_root / "train_masks" / f"{photo.stem}_mask.gif")).float()
    dice = 2 * (pred[0, 0] * truth).sum() / (pred.sum() + truth.sum())
    assert float(table.set_index("image").loc[photo.name, "dice"]) == pytest.approx(float(dice), abs=2e-3)
    assert float(dice_per_image(pred, truth[None, None])[0]) == pytest.approx(float(dice), abs=1e-6)
    assert table["dice"].nunique() > 1  # per photo, not one number copied


def test_predict_on_val_refuses_an_unreadable_photo_before_work(ckpt_pad: Path, carvana_root: Path, tmp_path: Path):
    root = shutil.copytree(carvana_root, tmp_path / "data")
    folds = pd.read_csv(root / "folds.csv", dtype={"id": str})
    bad = root / "train" / f"{folds['id'][folds['fold'] == 1].iloc[0]}_03.jpg"
    _truncate(bad)
    out = tmp_path / "pred"
    run = predict_here(
        predict_args(
            ckpt_pad, out, "predict_on_val=true", "fold=1", f"data.root={root}", f"data.folds={root / 'folds.csv'}"
        )
    )
    assert run.code == 2, run.out + run.err
    errors = run.errors()
    assert len(errors) == 1 and str(bad) in errors[0], errors
    assert not (out / "dice_fold1.csv").exists() and "predicted=" not in run.out


# ---------------------------------------------------------------------------------------------- bad input


def _no_ckpt_key(tmp_path: Path, good: Path) -> tuple[list[str], str]:
    return [], "ckpt= is required"


def _no_checkpoint(tmp_path: Path, good: Path) -> tuple[list[str], Path]:
    return [f"ckpt={tmp_path / 'nothere.ckpt'}"], tmp_path / "nothere.ckpt"


def _dict_of_another_project(tmp_path: Path, good: Path) -> tuple[list[str], Path]:
    torch.save({"a": 1}, tmp_path / "other.ckpt")
    return [f"ckpt={tmp_path / 'other.ckpt'}"], tmp_path / "other.ckpt"


def _text_file(tmp_path: Path, good: Path) -> tuple[list[str], Path]:
    (tmp_path / "notes.ckpt").write_text("not a checkpoint\n")
    return [f"ckpt={tmp_path / 'notes.ckpt'}"], tmp_path / "notes.ckpt"


def _second_of_an_ensemble_is_missing(tmp_path: Path, good: Path) -> tuple[list[str], Path]:
    return [f"ckpt=['{good}','{tmp_path / 'nothere.ckpt'}']"], tmp_path / "nothere.ckpt"


def _empty_input_dir(tmp_path: Path, good: Path) -> tuple[list[str], Path]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    return [f"ckpt={good}", f"input_dir={tmp_path / 'empty'}"], tmp_path / "empty"


def _missing_input_dir(tmp_path: Path, good: Path) -> tuple[list[str], Path]:
    return [f"ckpt={good}", f"input_dir={tmp_path / 'nothere'}"], tmp_path / "nothere"


def damage(ckpt: Path, copy: Path) -> Path:
    """A copy of a checkpoint with 8 KB of its largest weight overwritten (the zip's structure intact) -> the copy."""
    shutil.copy(ckpt, copy)
    with zipfile.ZipFile(copy) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    assert member.file_size > 12288, member
    with open(copy, "r+b") as f:
        f.seek(member.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
        f.seek(member.header_offset + 30 + name_length + extra_length + 4096)
        f.write(b"\x7f" * 8192)
    return copy


def _damaged_checkpoint(tmp_path: Path, good: Path) -> tuple[list[str], Path]:
    bad = damage(good, tmp_path / "copied.ckpt")
    torch.load(bad, map_location="cpu", weights_only=True, mmap=True)  # torch alone reads it without a word
    return [f"ckpt={bad}"], bad


def _photos(tmp_path: Path, names: list[str]) -> Path:
    """A folder of tiny photos (the same 64x96 picture) named `names` -> the folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    image = np.random.default_rng(0).integers(0, 255, (*TINY_SIZE, 3), np.uint8)
    for name in names:
        write_image(folder / name, image)
    return folder


def _comma_in_a_name_with_rle(tmp_path: Path, good: Path) -> tuple[list[str], Path]:
    folder = _photos(tmp_path, ["a.jpg", "b,c.jpg", "d.jpg"])
    return [f"ckpt={good}", f"input_dir={folder}", "write=[png,rle]"], folder / "b,c.jpg"


def _two_photos_one_name(tmp_path: Path, good: Path) -> tuple[list[str], str]:
    folder = _photos(tmp_path, ["a.jpg", "a.png", "b.jpg"])
    return [f"ckpt={good}", f"input_dir={folder}"], "photos a.jpg and a.png"


def _input_dir_a_text_file(tmp_path: Path, good: Path) -> tuple[list[str], Path]:
    (tmp_path / "car.txt").write_text("not a photo")
    return [f"ckpt={good}", f"input_dir={tmp_path / 'car.txt'}"], tmp_path / "car.txt"


STOPPING = [
    _no_ckpt_key,
    _no_checkpoint,
    _dict_of_another_project,
    _text_file,
    _second_of_an_ensemble_is_missing,
    _empty_input_dir,
    _missing_input_dir,
    _damaged_checkpoint,
    _comma_in_a_name_with_rle,
    _two_photos_one_name,
    _input_dir_a_text_file,
]


@pytest.mark.parametrize("case", STOPPING, ids=lambda case: case.__name__.strip("_"))
def test_bad_input_stops_with_one_line(case, ckpt_pad: Path, tmp_path: Path):
    """Exit status 2, one `error:` line on stderr naming the path, no traceback, the output folder untouched."""
    overrides, path = case(tmp_path, ckpt_pad)
    out = tmp_path / "pred"
    out.mkdir()
    write_probs8(out / "earlier_01.png", np.full(TINY_SIZE, 200, np.uint8))
    before = snapshot(out)
    run = predict_here(predict_args(None, out, *overrides))
    assert run.code == 2, run.out + run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], run.err
    assert "Traceback" not in run.err + run.out and "predicted=" not in run.out
    assert snapshot(out) == before


def test_a_damaged_checkpoint_is_refused_by_every_loader(ckpt_pad: Path, tmp_path: Path):
    """predict.py, the export (load_module), the service (load_models) and model.init_from share the CRC check."""
    bad = damage(ckpt_pad, tmp_path / "bad.ckpt")
    module = load_module(ckpt_pad)
    for load, key in ((lambda: load_module(bad), "ckpt"), (lambda: load_models([bad]), "ckpt"),
                      (lambda: init_from(module, bad), "model.init_from")):
        with pytest.raises(CarvanaError) as err:
            load()
        assert str(err.value).startswith(f"{key}={bad} is damaged: ") and "CRC-32" in str(err.value), err.value


def test_a_checkpoint_changed_since_its_predictions_is_named(ckpt_pad: Path, ckpt_resize: Path, tmp_path: Path):
    ckpt = Path(shutil.copy(ckpt_pad, tmp_path / "last.ckpt"))
    args = predict_args(ckpt, tmp_path / "pred", f"input_dir={_photos(tmp_path, ['a.jpg', 'b.jpg'])}")
    assert predict_here(args).code == 0
    before = snapshot(tmp_path / "pred")
    shutil.copy(ckpt_resize, ckpt)  # other bytes at the recorded path (retrained, replaced)
    run = predict_here(args)
    assert run.code == 2, run.out + run.err
    errors = run.errors()
    assert len(errors) == 1 and f"ckpt={ckpt} changed since: SHA-256 {sha256(ckpt_pad)[:12]}... on record, " \
        f"{sha256(ckpt_resize)[:12]}... now" in errors[0], errors
    assert snapshot(tmp_path / "pred") == before


def everything(folder: Path) -> dict[str, bytes]:
    """Every file under a folder (hidden ones too): relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("where", "overwrite"), [("same", "false"), ("same", "true"), ("through_dotdot", "true"),
                                                  ("its_cutouts", "true"), ("one_photo", "true")])
def test_an_output_dir_holding_the_photos_is_refused_before_anything_is_touched(where: str, overwrite: str,
                                                                                 ckpt_pad: Path, tmp_path: Path):
    """Issue 38.1: PNG photos with output_dir=input_dir were removed by overwrite=true as old predictions."""
    out = tmp_path / "pred"
    out.mkdir()
    photos = _photos(out if where == "its_cutouts" else tmp_path, ["car_01.png", "car_02.png"])
    photos = photos.rename(out / "cutouts") if where == "its_cutouts" else photos
    output_dir = {"same": photos, "through_dotdot": photos / ".." / photos.name, "its_cutouts": out}.get(where, photos)
    given = photos / "car_01.png" if where == "one_photo" else photos
    before = everything(tmp_path)
    run = predict_here(predict_args(ckpt_pad, output_dir, f"input_dir={given}", f"overwrite={overwrite}",
                                    "write=[png,cutout]"))
    assert run.code == 2, run.out + run.err
    errors = run.errors()
    assert len(errors) == 1 and f"output_dir={output_dir}" in errors[0] and f"input_dir={given}" in errors[0], errors
    assert everything(tmp_path) == before  # the photos as they were, nothing written


def test_an_output_dir_that_is_the_mask_folder_is_refused(ckpt_pad: Path, carvana_root: Path, tmp_path: Path):
    """Predictions <photo>.png in train_masks/ would be a second mask of each photo (and the Dice table's truth)."""
    root = shutil.copytree(carvana_root, tmp_path / "data")
    before = everything(root)
    run = predict_here(predict_args(ckpt_pad, root / "train_masks", "predict_on_val=true", f"data.root={root}",
                                    f"data.folds={root / 'folds.csv'}"))
    assert run.code == 2, run.out + run.err
    errors = run.errors()
    assert len(errors) == 1 and f"output_dir={root / 'train_masks'} is the checkpoint's mask" in errors[0], errors
    assert everything(root) == before


def test_an_output_dir_inside_the_photos_folder_is_not_read_as_photos(ckpt_pad: Path, tmp_path: Path):
    photos = _photos(tmp_path, ["car_01.png", "car_02.png"])
    (photos / "notes.txt").write_text("not a photo")
    out = photos / "pred"
    for _ in range(2):
        run = predict_here(predict_args(ckpt_pad, out, f"input_dir={photos}"))
        assert run.code == 0, run.out + run.err
    assert (run.summary()["predicted"], run.summary()["skipped"]) == ("0", "2")
    assert sorted(p.name for p in out.iterdir()) == [*(f"car_0{i}.png" for i in (1, 2)), MANIFEST]
    # what the listing leaves out is counted and named (issue 38.9)
    warnings = [line for line in run.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "2 file(s)" in warnings[0] and "notes.txt" in warnings[0] and "pred/" in warnings[0]


def test_overwrite_never_removes_a_file_predict_did_not_write(ckpt_pad: Path, tmp_path: Path):
    photos = _photos(tmp_path, ["car_01.jpg", "car_02.jpg"])
    out = tmp_path / "pred"
    out.mkdir()
    write_image(out / "car_01.png", np.zeros((*TINY_SIZE, 3), np.uint8))  # the user's, where a prediction would go
    before = everything(out)
    for overwrite in ("false", "true"):
        run = predict_here(predict_args(ckpt_pad, out, f"input_dir={photos}", f"overwrite={overwrite}"))
        assert run.code == 2, run.out + run.err
        errors = run.errors()
        assert len(errors) == 1 and str(out / "car_01.png") in errors[0] and "did not record" in errors[0], errors
        assert everything(out) == before
    # predictions it recorded are still predicted afresh under other settings with overwrite=true
    (out / "car_01.png").unlink()
    assert predict_here(predict_args(ckpt_pad, out, f"input_dir={photos}")).code == 0
    run = predict_here(predict_args(ckpt_pad, out, f"input_dir={photos}", "tta=hflip"))
    assert run.code == 2 and "tta" in run.errors()[0], run.out + run.err
    run = predict_here(predict_args(ckpt_pad, out, f"input_dir={photos}", "tta=hflip", "overwrite=true"))
    assert run.code == 0 and run.summary()["predicted"] == "2", run.out + run.err


def test_one_photo_as_input_dir_is_predicted_as_in_a_folder(ckpt_pad: Path, carvana_root: Path, tmp_path: Path):
    """Issue 37.7: input_dir=car.jpg said that the directory did not exist."""
    photo = sorted((carvana_root / "test").glob("*.jpg"))[3]
    out = tmp_path / "pred"
    run = predict_here(predict_args(ckpt_pad, out, f"input_dir={photo}"))
    assert run.code == 0, run.out + run.err
    assert (run.summary()["predicted"], run.summary()["skipped"]) == ("1", "0")
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, f"{photo.stem}.png"])
    expected = expected_pngs([load_module(ckpt_pad)], [photo], tta=False)[photo.name]
    assert max_diff(read_probs8(out / f"{photo.stem}.png"), expected) <= 1


def test_sigterm_stops_at_the_next_batch_keeping_what_is_written(ckpt_pad: Path, tmp_path: Path):
    """Issue 38.10: a SIGTERM after the 2nd of 8 batches stops the run there, exit 143, the 4 photos written kept
    (PNGs and RLE rows); the same command resumes with the other 12."""
    out = tmp_path / "pred"
    args = predict_args(ckpt_pad, out, "write=[png,rle]", "batch_size=2")
    predict_step = Ensemble.predict_step

    def signalled(self: Ensemble, batch: dict, batch_idx: int) -> object:
        result = predict_step(self, batch, batch_idx)
        if batch_idx == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` or a scheduler sends it
        return result

    with mock.patch.object(Ensemble, "predict_step", signalled):
        run = predict_here(args)
    assert run.code == 143, run.out + run.err
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM: 4 of 16 photos are written"), run.err
    assert "predicted=" not in run.out and "Traceback" not in run.out + run.err
    written = sorted(p.stem for p in out.glob("*.png"))
    assert len(written) == 4 and sorted(Path(img).stem for _, img, _ in shard_rows(out)) == written
    run = predict_here(args)
    assert run.code == 0, run.out + run.err
    assert (run.summary()["predicted"], run.summary()["skipped"]) == ("12", "4")
    assert len(list(out.glob("*.png"))) == 16 and len(shard_rows(out)) == 16


def _truncate(photo: Path) -> None:
    photo.write_bytes(photo.read_bytes()[: photo.stat().st_size // 2])


def _resize(photo: Path) -> None:
    write_image(photo, cv2.resize(read_image(photo), (96, 80)))  # 96x80 among 96x64 photos


def bad_photo_run(spoil, ckpt_pad: Path, carvana_root: Path, tmp: Path) -> dict:
    """Six photos, the 4th spoilt, two of the good ones already predicted by an earlier run into the same folder (they
    must stay as they are)."""
    (tmp / "in").mkdir()
    photos = [Path(shutil.copy(p, tmp / "in")) for p in sorted((carvana_root / "test").glob("*.jpg"))[:2]]
    out, args = tmp / "pred", [f"input_dir={tmp / 'in'}", "num_workers=1", "batch_size=2"]
    assert predict_here(predict_args(ckpt_pad, out, *args)).code == 0
    photos += [Path(shutil.copy(p, tmp / "in")) for p in sorted((carvana_root / "test").glob("*.jpg"))[2:6]]
    spoil(photos[3])
    before = snapshot(out)
    run = predict_here(predict_args(ckpt_pad, out, *args))
    return {"run": run, "photos": photos, "bad": photos[3], "out": out, "before": before}


def test_a_corrupt_photo_stops_the_run_before_work(ckpt_pad: Path, carvana_root: Path, tmp_path: Path):
    """A photo libjpeg cannot read whole is refused before any photo is predicted: one line naming it, exit 2, on
    stderr; the PNGs of the earlier run stay as they were and no new one is written."""
    case = bad_photo_run(_truncate, ckpt_pad, carvana_root, tmp_path)
    run, bad, out = case["run"], case["bad"], case["out"]
    assert run.code == 2, run.out + run.err
    assert "Traceback" not in run.out + run.err and "predicted=" not in run.out
    errors = [line for line in run.err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and str(bad) in errors[0], run.err
    assert snapshot(out) == case["before"]


def test_a_photo_of_another_size_is_predicted_at_its_own_size(ckpt_pad: Path, carvana_root: Path, tmp_path: Path):
    case = bad_photo_run(_resize, ckpt_pad, carvana_root, tmp_path)
    run, bad, out, photos = case["run"], case["bad"], case["out"], case["photos"]
    assert run.code == 0, run.out + run.err
    assert (run.summary()["predicted"], run.summary()["skipped"]) == ("4", "2")
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, *(f"{p.stem}.png" for p in photos)])
    after = snapshot(out)
    assert {n: after[n] for n in case["before"]} == case["before"]  # earlier PNGs untouched
    assert read_probs8(out / f"{bad.stem}.png").shape == (80, 96)
    for photo in photos:
        if photo != bad:
            assert read_probs8(out / f"{photo.stem}.png").shape == TINY_SIZE


@pytest.mark.parametrize(("script", "own", "foreign"),
                         [("predict.py", "ckpt=", "encoder"), ("submit.py", "rle_dir=", "trainer")])
def test_each_entry_point_shows_only_its_own_keys(script: str, own: str, foreign: str):
    proc = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0 and own in proc.stdout
    assert proc.stdout.startswith("usage: ") and f"python {script}" in proc.stdout.splitlines()[0]
    assert foreign not in proc.stdout
    assert "data: carvana" not in proc.stdout and "experiment" not in proc.stdout
