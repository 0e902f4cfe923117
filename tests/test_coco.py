"""Masks from COCO annotations (data=coco): a COCO file made from real Carvana masks (polygons, compressed and CVAT's
uncompressed RLE) reads back as those masks; a tiny set trains and predicts; each bad file is refused in one line."""

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import GROUP, GROUPS, PHOTOS, compose_train, predict_in_process, write_photo_and_mask
from PIL import Image
from pycocotools import mask as coco_mask

from carvana import CarvanaError
from carvana.data.coco import read_coco, read_mask_source
from carvana.data.io import read_mask

REAL = ("0cdf5b5d0ce1_01", "0cdf5b5d0ce1_04", "0cdf5b5d0ce1_09")  # _04's mask has holes at full size
SMALL = (240, 160)  # (width, height): 1/8 of Carvana's 1918x1280, to keep the test cheap


def polygons(mask: np.ndarray) -> list[list[float]]:
    """A mask's outer contours as COCO polygons (what a labelling tool draws; holes are lost)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """CVAT's RLE of a crowd object: counts a list of runs over the column-major pixels, starting with background."""
    flat = mask.flatten(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    counts = ([0] if flat[0] else []) + runs.tolist()
    return {"size": list(mask.shape), "counts": counts}


def segmentation(mask: np.ndarray, kind: str) -> list | dict:
    """One object's segmentation of `mask` as a labelling tool exports it."""
    if kind == "polygon":
        return polygons(mask)
    if kind == "rle":
        rle = coco_mask.encode(np.asfortranarray(mask))
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    return uncompressed_rle(mask)


def coco_file(path: Path, photos: dict[str, np.ndarray], kind: str, empty: tuple[str, ...] = ()) -> dict:
    """Write a COCO file of `photos` (file_name -> mask HxW {0,1}), one object each (none for `empty`)."""
    images, annotations = [], []
    for image_id, (name, mask) in enumerate(photos.items(), start=1):
        images.append({"id": image_id, "file_name": name, "height": mask.shape[0], "width": mask.shape[1]})
        if name not in empty:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "segmentation": segmentation(mask, kind), "iscrowd": int(kind == "cvat_rle")})
    content = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "car"},
                                                                             {"id": 2, "name": "wheel"}]}
    path.write_text(json.dumps(content))
    return content


@pytest.fixture(scope="module")
def real_root(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """Three real photos and their GIF masks at 1/8 size under images/ (the masks resized nearest)."""
    root = tmp_path_factory.mktemp("coco-real")
    (root / "images").mkdir()
    masks = {}
    for stem in REAL:
        photo = cv2.imread(str(shared_data / "real" / "train" / f"{stem}.jpg"))
        cv2.imwrite(str(root / "images" / f"{stem}.jpg"), cv2.resize(photo, SMALL, interpolation=cv2.INTER_AREA))
        mask = read_mask(shared_data / "real" / "train_masks" / f"{stem}_mask.gif")
        masks[f"images/{stem}.jpg"] = cv2.resize(mask, SMALL, interpolation=cv2.INTER_NEAREST)
    return root, masks


@pytest.mark.parametrize("kind", ["rle", "cvat_rle"])
def test_rle_objects_read_back_as_the_real_masks(real_root: tuple, kind: str):
    root, masks = real_root
    coco_file(root / f"{kind}.json", masks, kind)
    coco = read_coco(f"{kind}.json", root)
    assert coco.images == sorted(root / name for name in masks)
    for name, truth in masks.items():
        drawn = read_mask_source(coco.masks[root / name])
        assert drawn.dtype == np.uint8 and drawn.shape == (160, 240) and truth.any()
        np.testing.assert_array_equal(drawn, truth)


def test_polygons_read_back_as_the_real_masks_within_a_pixel_of_the_edge(real_root: tuple):
    root, masks = real_root
    coco_file(root / "polygons.json", masks, "polygon")
    coco = read_coco(root / "polygons.json", root)  # an absolute path works too
    kernel = np.ones((3, 3), np.uint8)
    for name, truth in masks.items():
        drawn = read_mask_source(coco.masks[root / name])
        filled = np.zeros_like(truth)
        cv2.drawContours(filled, cv2.findContours(truth, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], -1, 1, -1)
        edge = cv2.dilate(filled, kernel) != cv2.erode(filled, kernel)
        wrong = drawn != filled  # a polygon has no holes: compared with the mask, holes filled
        assert not (wrong & ~edge).any(), name
        assert wrong.sum() < 0.05 * truth.sum(), (name, wrong.sum(), truth.sum())


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """test_own_data's ten photos of three sizes under images/, their objects in instances.json (polygons, RLE and
    CVAT's RLE in turn; 'table-2' labelled with no object) -> (root, the true masks' folder, outside root)."""
    base = tmp_path_factory.mktemp("coco-own")
    root, truths = base / "my data", base / "truths"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for seed, (name, size, photo, mask) in enumerate(PHOTOS):
        write_photo_and_mask(root, name, size, photo, mask, seed)
    (root / "masks").rename(truths)
    content = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "wheel"}]}
    for image_id, (name, *_rest) in enumerate(PHOTOS, start=1):
        mask = read_mask(next(truths.glob(f"{Path(name).stem}.*")))
        content["images"].append({"id": image_id, "file_name": f"images/{name}", "height": mask.shape[0],
                                  "width": mask.shape[1]})
        if not name.startswith("table-2"):
            kind = ("polygon", "rle", "cvat_rle")[image_id % 3]
            content["annotations"].append({"id": image_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                           "segmentation": segmentation(mask, kind)})
    (root / "instances.json").write_text(json.dumps(content))
    return root, truths


def coco_args(root: Path, *extra: str) -> list[str]:
    return ["data=coco", f"data.root={root}", "data.annotations=instances.json", f"data.group='{GROUP}'",
            "data.n_folds=3", "data.num_workers=0", "data.batch_size=2", "data.crop_size=null", *extra]


def build(root: Path, tmp: Path, *extra: str):
    from carvana.training.run import build_datamodule

    return build_datamodule(compose_train(*coco_args(root, *extra)), tmp / "run")


def test_the_data_module_reads_each_photo_with_its_coco_mask(coco_root: tuple, tmp_path: Path):
    """Training and validation photos of data=coco carry their objects' masks; a photo with no object, an empty one."""
    root, truths = coco_root
    dm = build(root, tmp_path)
    assert len(dm.train_set) + len(dm.val_set) == len(PHOTOS)
    for dataset in (dm.train_set, dm.val_set):
        for index, photo in enumerate(dataset.images):
            item = dataset.read(index)
            truth = read_mask(next(truths.glob(f"{photo.stem}.*")))
            expected = np.zeros_like(truth) if photo.stem == "table-2" else truth
            assert item["mask"].shape == item["image"].shape[:2] == truth.shape
            edge = cv2.dilate(truth, np.ones((3, 3), np.uint8)) != cv2.erode(truth, np.ones((3, 3), np.uint8))
            assert not ((item["mask"] != expected) & ~edge).any(), photo.name  # RLE exact, polygons at the edge
    assert {p.name for p in dm.train_set.images + dm.val_set.images} == {name for name, *_ in PHOTOS}


def test_cvat_file_names_start_under_data_image_dir(coco_root: tuple, tmp_path: Path):
    """CVAT's COCO 1.0 export names its photos under images/ without the folder: data.image_dir=images finds them;
    without it each is refused in one line naming data.image_dir."""
    root, _ = coco_root
    content = json.loads((root / "instances.json").read_text())
    for image in content["images"]:
        image["file_name"] = image["file_name"].removeprefix("images/")
    cvat = tmp_path / "instances_default.json"
    cvat.write_text(json.dumps(content))
    dm = build(root, tmp_path, f"data.annotations={cvat}", "data.image_dir=images")
    assert {p.parent for p in dm.train_set.images + dm.val_set.images} == {root / "images"}
    assert len(dm.train_set) + len(dm.val_set) == len(PHOTOS)
    with pytest.raises(CarvanaError, match=r"10 of its 10 images are not under data.root/data.image_dir=.+: set "
                                           r"data.image_dir"):
        build(root, tmp_path, f"data.annotations={cvat}")


@pytest.fixture(scope="module")
def coco_trained(coco_root: tuple, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One epoch on data=coco, then predict.py predict_on_val=true of its validation fold: the folders and the Dice."""
    from carvana.training.run import train

    root, _ = coco_root
    base = tmp_path_factory.mktemp("coco-run")
    cfg = compose_train(*coco_args(root, "trainer=cpu", "trainer.max_epochs=1", "model.encoder_weights=null",
                                   "trainer.enable_progress_bar=false"))
    dice, ckpt, _ = train(cfg, base / "run")
    line = predict_in_process(f"ckpt={ckpt}", "predict_on_val=true", f"output_dir={base / 'pred'}")
    return {"run": base / "run", "pred": base / "pred", "dice": dice, "ckpt": Path(ckpt), "line": line}


def test_coco_photos_train_and_predict_on_their_validation_fold(coco_root: tuple, coco_trained: dict):
    """The folds follow data.group; predict_on_val scores each validation photo against its COCO mask."""
    _, truths = coco_root
    assert 0 <= coco_trained["dice"] <= 1 and coco_trained["ckpt"].is_file()
    folds = pd.read_csv(coco_trained["run"] / "folds.csv")
    assert set(folds.group) == GROUPS
    table = pd.read_csv(coco_trained["pred"] / "dice_fold0.csv")
    assert {name.split("-")[0] for name in table.image} == set(folds.group[folds.fold == 0])
    assert "val_dice=" in coco_trained["line"]
    for name, dice_of_photo in zip(table.image, table.dice):
        pred = np.asarray(Image.open(coco_trained["pred"] / f"{Path(name).stem}.png")) > 127
        truth = read_mask(next(truths.glob(f"{Path(name).stem}.*"))).astype(bool)
        truth = np.zeros_like(truth) if name.startswith("table-2") else truth
        total = pred.sum() + truth.sum()
        assert dice_of_photo == pytest.approx(2 * (pred & truth).sum() / total if total else 1.0, abs=0.02), name


def test_the_report_refuses_the_annotations_file_then_reads_the_masks_written_from_it(
        coco_root: tuple, coco_trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture):
    """The report of data=coco predictions: the recorded annotations file refused in one line naming the fix;
    python -m carvana.report.masks writes each photo's mask as drawn, and the report scores against them."""
    from carvana.report.__main__ import main as report_main
    from carvana.report.masks.__main__ import main as masks_main

    root, _ = coco_root
    with pytest.raises(SystemExit) as stop:
        report_main([f"probs_dir={coco_trained['pred']}", f"output_dir={tmp_path / 'r0'}"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and "python -m carvana.report.masks" in err, err
    masks_main([f"root={root}", "annotations=instances.json", f"output_dir={tmp_path / 'masks'}"])
    coco = read_coco("instances.json", root)
    for photo in coco.images:
        np.testing.assert_array_equal(read_mask(tmp_path / "masks" / f"{photo.stem}.png"), coco.masks[photo].read())
    report_main([f"probs_dir={coco_trained['pred']}", f"masks_dir={tmp_path / 'masks'}",
                 f"output_dir={tmp_path / 'r1'}"])
    per_image = pd.read_csv(tmp_path / "r1" / "per_image.csv")
    table = pd.read_csv(coco_trained["pred"] / "dice_fold0.csv")
    assert sorted(per_image.image) == sorted(table.image)
    assert per_image.dice.mean() == pytest.approx(table.dice.mean(), abs=1e-3)


def spoiled(root: Path, tmp: Path, spoil) -> Path:
    """A copy of root/instances.json changed in place by `spoil(content)`, or replaced by the text it returns."""
    content = json.loads((root / "instances.json").read_text())
    text = spoil(content)
    path = tmp / "spoiled.json"
    path.write_text(text if isinstance(text, str) else json.dumps(content))
    return path


def first_segmentation(content: dict, value: object) -> None:
    content["annotations"][0]["segmentation"] = value


@pytest.mark.parametrize(("spoil", "needle"), [
    (lambda c: "{not json", "is not a readable JSON file"),
    (lambda c: c.pop("images"), "is not COCO: it needs the lists 'images' and 'annotations'"),
    (lambda c: c["images"][0].pop("height"), "lacks one of id, file_name, width, height"),
    (lambda c: c["images"][1].update(id=c["images"][0]["id"]), "is listed twice"),
    (lambda c: c["images"][1].update(file_name="other/chair one-a.png"), "share the name 'chair one-a'"),
    (lambda c: c["images"][3].update(file_name="images/gone.jpg"),
     "1 of its 10 images are not under data.root/data.image_dir="),
    (lambda c: c["images"][0].update(height=65), "is 64x96 (height x width) but the JSON says 65x96"),
    (lambda c: c["annotations"][0].update(image_id=99), "is of image id 99, which 'images' does not list"),
    (lambda c: first_segmentation(c, []), "has no segmentation (a box only?)"),
    (lambda c: first_segmentation(c, [[1, 2, 3, 4]]), "has a polygon of 4 coordinates"),
    (lambda c: first_segmentation(c, {"size": [96, 64], "counts": "abc"}), "its RLE is of size [96, 64]"),
    (lambda c: first_segmentation(c, {"size": [64, 96], "counts": [5, 6]}), "its RLE counts cover 11 pixels"),
])
def test_a_bad_annotations_file_is_refused_in_one_line(coco_root: tuple, tmp_path: Path, spoil, needle: str):
    root, _ = coco_root
    path = spoiled(root, tmp_path, spoil)
    with pytest.raises(CarvanaError) as err:
        build(root, tmp_path, f"data.annotations={path}")
    assert needle in str(err.value) and str(path) in str(err.value), err.value
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize(("overrides", "needle"), [
    (["data.annotations=missing.json"], "data.annotations=missing.json: no such file"),
    (["data.categories=[door]"], "data.categories: 'door' is not a category of"),
    (["data.categories=[wheel]"], "none of the 10 photos of instances.json has an object (of data.categories)"),
])
def test_a_missing_file_or_category_is_refused_in_one_line(coco_root: tuple, tmp_path: Path, overrides: list[str],
                                                           needle: str):
    root, _ = coco_root
    with pytest.raises(CarvanaError) as err:
        build(root, tmp_path, *overrides)
    assert needle in str(err.value) and len(str(err.value).splitlines()) == 1, err.value


def test_categories_choose_the_objects_by_name_or_id(coco_root: tuple, tmp_path: Path):
    """data.categories=[thing] and [1] keep every object here; a photo's objects of other categories are left out."""
    root, _ = coco_root
    content = json.loads((root / "instances.json").read_text())
    wheel = {**content["annotations"][0], "id": 100, "category_id": 2,
             "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]}
    content["annotations"].append(wheel)
    (tmp_path / "two.json").write_text(json.dumps(content))
    photo = root / content["images"][0]["file_name"]
    every = read_coco(tmp_path / "two.json", root).masks[photo].read()
    for chosen in (["thing"], [1]):
        only = read_coco(tmp_path / "two.json", root, chosen).masks[photo].read()
        assert only[:5, :5].sum() == 0 and every[:5, :5].sum() == 25 and (only <= every).all()


def test_coco_needs_its_annotations(tmp_path: Path):
    from helpers import run_tool

    proc = run_tool("train.py", ["data=coco", f"data.root={tmp_path}", f"hydra.run.dir={tmp_path / 'h'}"])
    lines = proc.stderr.strip().splitlines()
    expected = "error: data.annotations has no value (???): give data.annotations=... on the command line"
    assert proc.returncode == 2 and lines == [expected], proc.stderr
