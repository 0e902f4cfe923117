"""Your own data (data=folder): photos and masks named as they are, of mixed sizes and formats, folds by a group regex;
training in each input mode, prediction at each photo's size, cut-outs, tiles, the report; each bad input refused in
one line before training."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import (
    GROUP,
    GROUPS,
    PHOTOS,
    compose_train,
    parse_result,
    predict_in_process,
    run_tool,
    write_photo_and_mask,
)
from PIL import Image

from carvana import CarvanaError
from carvana.data.io import read_image, read_probs8, write_png
from carvana.data.layout import find_masks, list_images
from carvana.predict.cutout import cutout


@pytest.fixture(scope="module")
def own_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own") / "my data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for seed, (name, size, photo, mask) in enumerate(PHOTOS):
        write_photo_and_mask(root, name, size, photo, mask, seed)
    return root


def folder_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["data=folder", f"data.root={root}", f"data.group='{GROUP}'", "data.n_folds=3", "trainer=cpu",
            "trainer.max_epochs=1", "data.num_workers=0", "data.batch_size=2", "model.encoder_weights=null",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={out}", *extra]


@pytest.fixture(scope="module")
def trained(own_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One epoch on the whole photos, padded (data.crop_size=null): the run folder and checkpoint."""
    out = tmp_path_factory.mktemp("own-run") / "run"
    proc = run_tool("train.py", folder_args(own_root, out, "data.crop_size=null"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    dice, ckpt = parse_result(proc.stdout.strip().splitlines()[-1])
    return {"out": out, "ckpt": ckpt, "dice": dice}


def test_folds_are_made_by_the_group_regex_and_written_to_the_run(trained: dict):
    folds = pd.read_csv(trained["out"] / "folds.csv")
    assert list(folds.columns) == ["group", "fold"] and set(folds.group) == GROUPS
    assert sorted(folds.fold.unique()) == [0, 1, 2] and 0 <= trained["dice"] <= 1


def train_in_process(root: Path, out: Path, *extra: str) -> tuple[float, Path]:
    """train.py's job through the library (the subprocess is `trained`'s): (val_dice, checkpoint)."""
    from carvana.training.run import train

    overrides = [a for a in folder_args(root, out, *extra) if not a.startswith("hydra.")]
    dice, ckpt, _ = train(compose_train(*overrides), out)
    return dice, Path(ckpt)


@pytest.mark.parametrize("mode", [["data.crop_size=[64,64]"], ["data.crop_size=null", "data.input_size=[64,64]"]])
def test_own_photos_train_in_every_input_mode(own_root: Path, tmp_path: Path, mode: list[str]):
    """Random crops at native resolution and a resize, on photos of three sizes (the padded mode: `trained`)."""
    dice, ckpt = train_in_process(own_root, tmp_path / "run", *mode)
    assert 0 <= dice <= 1 and ckpt.is_file()


def test_predict_writes_each_photo_at_its_size_with_cutouts(own_root: Path, trained: dict, tmp_path: Path):
    out = tmp_path / "out"
    args = [f"ckpt={trained['ckpt']}", f"input_dir={own_root / 'images'}", f"output_dir={out}", "write=[png,cutout]"]
    proc = run_tool("predict.py", [*args, "trainer=cpu", "num_workers=0", f"hydra.run.dir={tmp_path / 'h'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith(f"predicted={len(PHOTOS)} skipped=0")
    for name, size, _, _ in PHOTOS:
        stem = Path(name).stem
        probs8 = read_probs8(out / f"{stem}.png")
        assert probs8.shape == size, name
        rgba = cv2.cvtColor(cv2.imread(str(out / "cutouts" / f"{stem}.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
        assert rgba.shape == (*size, 4)
        assert (rgba == cutout(read_image(own_root / "images" / name), probs8, "probs", 127)).all()  # tests/test_cutout
    assert predict_in_process(*args).startswith(f"predicted=0 skipped={len(PHOTOS)}")
    # the thresholded alpha is other settings: refused in that folder, written in another
    with pytest.raises(CarvanaError, match="cutout_alpha"):
        predict_in_process(*args, "cutout_alpha=mask")
    with pytest.raises(CarvanaError, match='cutout_colour: "blur" -> "photo"'):  # another edge colour: not skipped
        predict_in_process(*args, "cutout_colour=photo")
    other = tmp_path / "mask-alpha"
    predict_in_process(*args[:2], f"output_dir={other}", "write=cutout", "cutout_alpha=mask")
    for name, size, _, _ in PHOTOS:
        stem = Path(name).stem
        alpha = cv2.imread(str(other / "cutouts" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)[..., 3]
        assert set(np.unique(alpha)) <= {0, 255}
        assert ((alpha == 255) == (read_probs8(out / f"{stem}.png") > 127)).all()
        assert not (other / f"{stem}.png").exists()  # write=cutout alone: no probability PNG


def test_tiled_prediction_of_own_photos(own_root: Path, trained: dict, tmp_path: Path):
    """tile=[32,32]: masks at each photo's size, recorded as tiled; a whole-photo run in that folder is refused."""
    out = tmp_path / "tiled"
    args = [f"ckpt={trained['ckpt']}", f"input_dir={own_root / 'images'}", f"output_dir={out}", "tta=none"]
    predict_in_process(*args, "tile=[32,32]", "tile_overlap=0.5", "batch_size=16")
    for name, size, _, _ in PHOTOS:
        assert read_probs8(out / f"{Path(name).stem}.png").shape == size
    recorded = json.loads((out / "predict.json").read_text())["entries"][0]["settings"]
    assert "tile=32x32 overlap=0.5" in recorded["geometry"]
    with pytest.raises(CarvanaError, match="geometry"):
        predict_in_process(*args)


def test_out_of_fold_report_of_own_photos(own_root: Path, trained: dict, tmp_path: Path,
                                          capsys: pytest.CaptureFixture):
    """predict_on_val then the report given probs_dir= alone: groups from the regex, no angle column."""
    from carvana.report.__main__ import main as report

    oof = tmp_path / "oof"
    predict_in_process(f"ckpt={trained['ckpt']}", "predict_on_val=true", f"output_dir={oof}")
    table = pd.read_csv(next(oof.glob("dice_fold*.csv")))
    assert list(table.columns) == ["image", "group", "dice"] and set(table.group) <= GROUPS
    report([f"probs_dir={oof}", "worst=2"])
    assert "report=" in capsys.readouterr().out
    per_image = pd.read_csv(oof / "report" / "per_image.csv")
    assert "angle" not in per_image.columns and set(per_image.group) <= GROUPS
    assert (oof / "report" / "per_group.csv").is_file() and (oof / "report" / "report.html").is_file()


def bad_set(root: Path, tmp: Path) -> Path:
    copy = tmp / "bad"
    shutil.copytree(root, copy)
    return copy


def build(root: Path, tmp: Path, *overrides: str) -> None:
    from carvana.training.run import build_datamodule

    cfg = compose_train("data=folder", f"data.root={root}", f"data.group='{GROUP}'", "data.n_folds=3",
                        "data.num_workers=0", *overrides)
    build_datamodule(cfg, tmp / "run")


@pytest.mark.parametrize(("spoil", "needle"), [
    (lambda r: (r / "masks" / "table-1.png").unlink(), "1 photo(s) have no mask in"),
    (lambda r: (r / "masks" / "table-1.png").unlink(),
     "(expected <name>_mask.gif, <name>_mask.png, <name>.png or <name>.gif for photo <name>.jpg), first: table-1.jpg"),
    (lambda r: shutil.copy(r / "masks" / "table-1.png", r / "masks" / "table-1_mask.gif"),
     "photo table-1.jpg has 2 masks in"),
    (lambda r: Image.fromarray(np.zeros((10, 10), np.uint8)).save(r / "masks" / "table-1.png"),
     "table-1.png is 10x10 (height x width)"),
    (lambda r: Image.fromarray(np.full((64, 96), 128, np.uint8)).save(r / "masks" / "table-1.png"),
     "table-1.png is not black and white"),
    (lambda r: shutil.copy(r / "images" / "table-1.jpg", r / "images" / "table-1.png"),
     "photos table-1.jpg and table-1.png in"),
])
def test_bad_own_data_is_refused_before_training(own_root: Path, tmp_path: Path, spoil, needle: str):
    root = bad_set(own_root, tmp_path)
    spoil(root)
    with pytest.raises(CarvanaError) as err:
        build(root, tmp_path)
    assert needle in str(err.value), err.value
    assert len(str(err.value).splitlines()) == 1


def test_a_fold_without_photos_is_refused(own_root: Path, tmp_path: Path):
    folds = tmp_path / "folds.csv"
    pd.DataFrame({"group": sorted(GROUPS), "fold": [0, 0, 1, 1, 1]}).to_csv(folds, index=False)
    with pytest.raises(CarvanaError, match="fold=2 is not in"):
        build(own_root, tmp_path, f"data.folds={folds}", "fold=2")
    pd.DataFrame({"group": sorted(GROUPS), "fold": [0] * 5}).to_csv(folds, index=False)
    with pytest.raises(CarvanaError, match="fold=0 leaves no training photos"):
        build(own_root, tmp_path, f"data.folds={folds}")


def test_folder_needs_its_root(tmp_path: Path):
    proc = run_tool("train.py", ["data=folder", f"hydra.run.dir={tmp_path / 'h'}"])
    assert proc.returncode == 2 and "data.root" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, \
        proc.stderr


def test_photo_formats_read_as_rgb(own_root: Path):
    for name, size, _, _ in PHOTOS:
        image = read_image(own_root / "images" / name)
        assert image.shape == (*size, 3) and image.dtype == np.uint8


def test_write_png_keeps_rgba(tmp_path: Path):
    rgba = np.random.default_rng(0).integers(0, 256, (8, 12, 4), dtype=np.uint8)
    write_png(tmp_path / "x.png", rgba)
    back = cv2.cvtColor(cv2.imread(str(tmp_path / "x.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    assert (back == rgba).all()


@pytest.mark.parametrize("names", [["a_mask.gif", "a.png"], ["a.png", "a.gif"], ["a_mask.png", "a_mask.gif", "a.gif"]])
def test_a_photo_with_two_masks_is_refused_naming_both(tmp_path: Path, names: list[str]):
    for name in ["a.jpg", *names]:
        (tmp_path / name).touch()
    with pytest.raises(CarvanaError) as err:
        find_masks([tmp_path / "a.jpg"], tmp_path)
    assert all(name in str(err.value) for name in names) and len(str(err.value).splitlines()) == 1, err.value
    assert f"photo a.jpg has {len(names)} masks in {tmp_path}" in str(err.value)


def test_files_that_are_not_photos_are_counted_and_named(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch):
    """One warning line, on the first process only (DDP's other ranks list the folder too); hidden files are not
    named, a subfolder is."""
    for name in ["b.jpg", "a.png", "c.webp", "notes.txt", ".DS_Store", "d.bmp", "e.gif", "f.heic", "g.jpg.part"]:
        (tmp_path / name).touch()
    (tmp_path / "more").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.jpg"]
    err = capsys.readouterr().err
    assert err == (f"warning: 7 file(s) in {tmp_path} left out, not photos (.jpg, .jpeg, .png, .tif, .tiff): c.webp, "
                   "d.bmp, e.gif, f.heic, g.jpg.part, more/, notes.txt\n"), err
    for i in range(10):
        (tmp_path / f"z{i}.txt").touch()
    list_images(tmp_path)
    assert capsys.readouterr().err.endswith(", notes.txt, z0.txt, z1.txt, z2.txt and 7 more\n")
    monkeypatch.setenv("LOCAL_RANK", "1")
    list_images(tmp_path)
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("LOCAL_RANK")
    only = tmp_path / "only"
    only.mkdir()
    (only / "a.jpg").touch()
    (only / ".DS_Store").touch()
    list_images(only)
    assert capsys.readouterr().err == ""  # only photos and a hidden file: no line


def test_training_names_the_files_it_leaves_out(own_root: Path, tmp_path: Path, capfd: pytest.CaptureFixture):
    root = bad_set(own_root, tmp_path)
    (root / "images" / "table-3.webp").touch()
    build(root, tmp_path)
    assert f"warning: 1 file(s) in {root / 'images'} left out, not photos" in capfd.readouterr().err


def test_training_reads_masks_whose_alpha_is_the_object(own_root: Path, tmp_path: Path):
    """Background-removal masks (white or black pixels, the object in the alpha) train on the alpha: the data module
    gives each photo the mask its alpha holds, not all object (white) or none (black)."""
    from carvana.data.io import read_mask
    from carvana.training.run import build_datamodule

    root = bad_set(own_root, tmp_path)
    truths = {}
    for stem, colour, mode in (("table-1", 255, "RGBA"), ("vase-b", 0, "RGBA"), ("table-2", 255, "LA")):
        truths[stem] = truth = read_mask(root / "masks" / f"{stem}.png")
        pixels = np.dstack([np.full((*truth.shape, 3), colour, np.uint8), truth * 255])
        image = Image.fromarray(pixels if mode == "RGBA" else pixels[..., [0, 3]], mode=mode)
        image.save(root / "masks" / f"{stem}.png")
    cfg = compose_train("data=folder", f"data.root={root}", f"data.group='{GROUP}'", "data.n_folds=3",
                        "data.num_workers=0")
    dm = build_datamodule(cfg, tmp_path / "run")
    seen = {}
    for dataset in (dm.train_set, dm.val_set):
        for i, image in enumerate(dataset.images):
            if image.stem in truths:
                seen[image.stem] = dataset.read(i)["mask"]
    assert seen.keys() == truths.keys()
    for stem, truth in truths.items():
        assert 0 < truth.sum() < truth.size and (seen[stem] == truth).all(), stem


def test_predicts_dice_table_scores_an_alpha_mask_by_its_alpha(tmp_path: Path):
    """predict_on_val's per-photo Dice reads masks as training does: white + alpha is the alpha, not all object."""
    from carvana.predict.run import Photos, score_fold

    truth = np.zeros((32, 48), np.uint8)
    truth[4:20, 6:30] = 1
    Image.fromarray(np.dstack([np.full((32, 48, 3), 255, np.uint8), truth * 255])).save(tmp_path / "a.png")
    (tmp_path / "probs").mkdir()
    write_png(tmp_path / "probs" / "a.png", truth * 255)
    photos = Photos([tmp_path / "a.jpg"], [tmp_path / "a.png"], {"group": r"^(.*)$"})
    table_path = tmp_path / "probs" / "dice_fold0.csv"
    assert score_fold(photos, tmp_path / "probs", 0.5, 0) == f" val_dice=1.0000 dice_table={table_path}"
    table = pd.read_csv(table_path)
    assert table.columns.tolist() == ["image", "group", "dice"] and table.dice.tolist() == [1.0]
