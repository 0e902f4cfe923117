"""The out-of-fold report: per-photo, per-group (Carvana's car) and per-angle Dice, a threshold sweep, the worst
photos drawn, as CSVs and report.html (python -m carvana.report, conf/report.yaml)."""

import os
from pathlib import Path

import numpy as np
import pandas as pd

from carvana import CarvanaError
from carvana.cli import conf_value
from carvana.data.io import image_size, read_image, read_mask, read_probs8, write_png
from carvana.data.layout import CAR_GROUP, IMAGE_SUFFIXES, find_masks, note_left_out
from carvana.files import atomic_path
from carvana.predict.manifest import find_predictions, recorded_settings
from carvana.predict.scores import dice_curve, dice_table, histograms, unit_of
from carvana.report.html import oof_page, write_page
from carvana.report.overlays import FN_COLOUR, FP_COLOUR, OUTLINE_COLOUR, draw_errors, draw_outline, label

THRESHOLDS = np.round(np.arange(1, 20) * 0.05, 2)  # 0.05 .. 0.95
TILE_WIDTH, COLUMNS = 384, 4  # a 1918x1280 photo becomes a 384x256 tile


def find_truths(preds: list[Path], masks_dir: Path) -> list[Path]:
    """The true mask of each prediction in `masks_dir`, with its size checked from the file headers."""
    if masks_dir.is_file():  # predict_on_val of a data=coco run records its annotations file
        raise CarvanaError(f"masks_dir={masks_dir} is a file (a data=coco run's annotations?): the report reads one "
                           "mask file per photo: write them with python -m carvana.report.masks root=<data.root> "
                           f"annotations={masks_dir} output_dir=<DIR>, then give masks_dir=<DIR>")
    truths = find_masks(preds, masks_dir, "masks_dir")
    for pred, truth in zip(preds, truths):
        if image_size(pred) != image_size(truth):
            raise CarvanaError(
                f"prediction {pred} is {'x'.join(map(str, image_size(pred)))} but its mask {truth} is "
                f"{'x'.join(map(str, image_size(truth)))} (height x width): predict at the photos' own size"
            )
    return truths


def tables(preds: list[Path], names: list[str], hists: np.ndarray, threshold: float, group: str
           ) -> dict[str, pd.DataFrame]:
    """per_image (predict_on_val's Dice table: each photo by `names`), per_car (Carvana's cars; per_group for other
    groups), per_angle (Carvana's cars only) and thresholds tables from the photos' histograms, hardest first."""
    per_image = dice_table(preds, names, hists, threshold, group, "group")
    unit = unit_of(per_image)

    def mean_by(key: str) -> pd.DataFrame:
        table = per_image.groupby(key).dice.agg(["mean", "size"]).rename(columns={"mean": "dice", "size": "n"})
        return table.reset_index().sort_values(["dice", key], kind="stable").reset_index(drop=True)

    sweep = pd.DataFrame({"threshold": THRESHOLDS, "dice": dice_curve(hists, THRESHOLDS).mean(0)})
    result = {"per_image": per_image, f"per_{unit}": mean_by(unit), "thresholds": sweep}
    return {**result, "per_angle": mean_by("angle")} if unit == "car" else result


def photos_by_name(images_dir: Path, wanted: set[str]) -> dict[str, Path]:
    """The photos of `images_dir` by their name without suffix; its other files are named in one warning line, and
    two photos of one wanted name (`a.jpg`, `a.png`: the prediction `a.png` could be either's) are a CarvanaError."""
    names = sorted(n for n in os.listdir(images_dir) if not n.startswith(".")) if images_dir.is_dir() else []
    others = [n + "/" * (images_dir / n).is_dir() for n in names if Path(n).suffix.lower() not in IMAGE_SUFFIXES]
    note_left_out(images_dir, others, f"not photos ({', '.join(IMAGE_SUFFIXES)})")
    present: dict[str, Path] = {}
    for name in names:
        stem = Path(name).stem
        if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if stem in present and stem in wanted:
            raise CarvanaError(f"photos {present[stem].name} and {name} in images_dir={images_dir} share the name "
                               f"{stem!r}: the prediction {stem}.png could be either's; rename one, or set images_dir=")
        present[stem] = images_dir / name
    return present


def find_photos(images_dir: Path, preds: list[Path], required: bool) -> list[Path | None]:
    """The photo of each prediction (`<stem>.jpg` or another photo suffix) in `images_dir`; a missing one is None,
    or, when `required` (the worst photos are drawn), a CarvanaError."""
    present = photos_by_name(images_dir, {p.stem for p in preds})
    photos = [present.get(p.stem) for p in preds]
    if required and not images_dir.is_dir():
        raise CarvanaError(f"images_dir={images_dir} does not exist: set images_dir= or data_root=, or worst=0")
    missing = [p.stem for p, photo in zip(preds, photos) if photo is None]
    if required and missing:
        raise CarvanaError(f"photo {missing[0]} is not in images_dir={images_dir}: set images_dir= or worst=0")
    return photos


def worst_tiles(names: list[str], files: dict[str, tuple[Path, Path, Path]], threshold: float) -> list[np.ndarray]:
    """Photo names and their (prediction, mask, photo) files -> RGB tiles TILE_WIDTH wide: errors and outline drawn."""
    tiles = []
    for name in names:
        pred_path, truth_path, photo_path = files[name]
        image, truth = read_image(photo_path), read_mask(truth_path)
        height, width = truth.shape
        size = (round(TILE_WIDTH * height / width), TILE_WIDTH)
        if image.shape[:2] != truth.shape:
            raise CarvanaError(
                f"photo {photo_path} is {image.shape[0]}x{image.shape[1]} but its mask is "
                f"{truth.shape[0]}x{truth.shape[1]} (height x width): images_dir= is not the masks' photos"
            )
        pred = (read_probs8(pred_path) > threshold * 255).astype(np.uint8)
        tile = draw_errors(image, pred, truth, size)
        draw_outline(tile, pred)
        tiles.append(tile)
    return tiles


def gallery(tiles: list[np.ndarray], captions: list[list[str]]) -> np.ndarray:
    """Equal-size RGB tiles and their caption lines -> one RGB board of labelled tiles, COLUMNS wide."""
    h, w = max(t.shape[0] for t in tiles), TILE_WIDTH  # photos of several sizes: a row as high as its tallest
    columns = min(COLUMNS, len(tiles))
    board = np.zeros((-(-len(tiles) // columns) * h, columns * w, 3), np.uint8)
    for i, (tile, lines) in enumerate(zip(tiles, captions)):
        r, c = divmod(i, columns)
        cell = board[r * h : r * h + tile.shape[0], c * w : (c + 1) * w]
        cell[:] = tile
        label(cell, lines)
    return board


def write_report(probs_dir: str, output_dir: str, masks_dir: str, images_dir: str, threshold: float, worst: int,
                 workers: int, group: str) -> dict[str, pd.DataFrame]:
    """Write per_image/per_car/per_angle/thresholds.csv, worst.png and report.html into output_dir -> the tables."""
    if not 0 <= threshold < 1:
        raise CarvanaError(f"threshold={threshold}: choose a probability in [0, 1)")
    if worst < 0:
        raise CarvanaError(f"worst={worst}: choose a number of photos >= 0")
    preds = find_predictions(probs_dir).pngs
    if not preds:
        raise CarvanaError(f"probs_dir={probs_dir} holds no <photo>.png predictions: run predict.py with write=png")
    truths = find_truths(preds, Path(masks_dir))
    # any photo may be among the worst: check them all before the long pass
    photos = find_photos(Path(images_dir), preds, required=worst > 0)
    hists = histograms(preds, truths, workers, "scoring the photos")
    names = [photo.name if photo else pred.stem for pred, photo in zip(preds, photos)]
    result = tables(preds, names, hists, threshold, group)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in result.items():
        with atomic_path(out / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
    overlays = []
    if worst:
        rows = result["per_image"].sort_values(["dice", "image"], kind="stable").head(worst)
        files = dict(zip(result["per_image"].image, zip(preds, truths, photos)))
        tiles = worst_tiles(list(rows.image), files, threshold)
        board = gallery(tiles, [[name, f"dice {dice:.4f}"] for name, dice in zip(rows.image, rows.dice)])
        write_png(out / "worst.png", board)
        overlays = list(zip(rows.image, rows.dice, tiles))
    colours = {"false positive": FP_COLOUR, "false negative": FN_COLOUR, "predicted outline": OUTLINE_COLOUR}
    write_page(out / "report.html", oof_page(result, overlays, probs_dir, threshold, colours))
    return result


def oof_settings(cfg: dict) -> dict:
    """A probs_dir= report's data root, group, masks and photos: each as given, else as predict.py recorded them in
    probs_dir (its folders moved along when the data root is given anew), else Kaggle's layout under the default data
    root and Carvana's cars."""
    probs_dir = cfg["probs_dir"]
    settings = recorded_settings([probs_dir])
    recorded = {key: values[0] for key, values in settings.items() if len(values) == 1 and values[0]}
    root = Path(cfg.pop("data_root") or recorded.get("data_root") or conf_value("data/carvana", "root"))
    cfg["group"] = cfg["group"] or recorded.get("group", CAR_GROUP)
    for key, default in (("masks_dir", "train_masks"), ("images_dir", "train")):
        folder = Path(recorded[key]) if key in recorded else root / default
        if key in recorded and "data_root" in recorded and folder.is_relative_to(recorded["data_root"]):
            folder = root / folder.relative_to(recorded["data_root"])
        if key == "masks_dir" and not cfg[key]:
            refuse_photos_without_masks(probs_dir, settings, folder)
        cfg[key] = cfg[key] or str(folder)
    return cfg


def refuse_photos_without_masks(probs_dir: str, settings: dict[str, list], masks_dir: Path) -> None:
    """A CarvanaError when predict.py recorded the predictions (`settings`) as of photos without masks (input_dir=)
    and the default mask folder read instead does not exist: the photos have no masks, so say that, not that a folder
    is missing."""
    if masks_dir.is_dir() or settings.get("masks_dir") != [None]:
        return
    photos = sorted(str(p) for p in settings.get("images_dir", []))
    raise CarvanaError(f"probs_dir={probs_dir} holds predictions of photos without masks (input_dir={', '.join(photos)}"
                       "; predict.json records no masks_dir), and the report scores them against true masks: give "
                       "masks_dir=<the folder of their masks>, or predict with predict_on_val=true")
