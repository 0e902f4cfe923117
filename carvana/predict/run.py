"""predict.py's job (conf/predict.yaml): full-size masks of a folder of photos from checkpoints alone, resumable, with
the out-of-fold Dice table of a fold."""

import glob
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytorch_lightning as pl

from carvana import CarvanaError
from carvana.cli import check_at_least, check_threshold, expected_errors
from carvana.data.boxes import load_boxes
from carvana.data.coco import CocoMask, annotations_path, read_coco
from carvana.data.dataset import find_stacked
from carvana.data.kfold import read_folds, split
from carvana.data.layout import CAR_GROUP, EACH_PHOTO, IMAGE_SUFFIXES, find_masks, group_pattern, list_images
from carvana.data.photo_check import check_photos
from carvana.files import atomic_path, check_writable_dir
from carvana.hardware import check_accelerator, default_workers, trainer_kwargs
from carvana.model.loading import load_models
from carvana.model.tta import check_tta
from carvana.predict.ensemble import (
    Ensemble,
    PredictData,
    PredictDataset,
    batches_to_do,
    check_onnx_run,
    check_onnx_sizes,
)
from carvana.predict.manifest import CUTOUTS, prepare, redo_wrong_sizes, settings, written_names
from carvana.predict.scores import dice_table, histograms
from carvana.predict.shards import ROW_BREAKERS
from carvana.predict.tiles import check_tiling
from carvana.predict.writer import CUTOUT_ALPHAS, CUTOUT_COLOURS, MaskWriter, Stopped
from carvana.progress import progress, quiet_lightning
from carvana.slurm import check_allocation, use_allocated_cpus

WRITES = ("png", "rle", "cutout")


def find_checkpoints(ckpt: str | list[str] | None) -> list[Path]:
    """Checkpoint (or exported .onnx) paths from one path, a glob, or a list of either; a pattern matching nothing is
    an error."""
    if not ckpt:
        raise CarvanaError("ckpt= is required: a checkpoint, a glob of checkpoints, or a list [A, B]")
    paths = []
    for item in [ckpt] if isinstance(ckpt, str) else list(ckpt):
        found = sorted(glob.glob(str(item))) if glob.has_magic(str(item)) else [item]
        if not found:
            raise CarvanaError(f"ckpt={item} matches no checkpoint")
        paths += [Path(p) for p in found]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing:  # said here for an .onnx file too, which onnx would call unreadable
        raise CarvanaError(f"ckpt={missing}: no checkpoint at this path")
    return paths


def check_settings(cfg: dict) -> dict:
    """predict.py's keys checked before any model is read -> cfg with write as a list of the outputs asked for."""
    write = [cfg["write"]] if isinstance(cfg["write"], str) else list(cfg["write"])
    if not write or any(w not in WRITES for w in write):
        raise CarvanaError(f"write={cfg['write']}: choose png, rle, cutout, or a list of them (e.g. [png, cutout])")
    if cfg["cutout_alpha"] not in CUTOUT_ALPHAS:
        raise CarvanaError(f"cutout_alpha={cfg['cutout_alpha']}: choose {' or '.join(CUTOUT_ALPHAS)}")
    if cfg["cutout_colour"] not in CUTOUT_COLOURS:
        raise CarvanaError(f"cutout_colour={cfg['cutout_colour']}: choose {', '.join(CUTOUT_COLOURS)}")
    check_tta(cfg["tta"], "tta")
    check_threshold(cfg["threshold"])
    check_tiling(cfg["tile"], cfg["tile_overlap"], [])  # the tile's values now; whether the models take tiles later
    check_at_least(cfg, {"batch_size": 1, "writer_threads": 1, "num_workers": 0}, nullable=("num_workers",))
    check_accelerator(cfg["trainer"])
    return {**cfg, "write": write}


class Models(NamedTuple):
    """An ensemble's files (checkpoints or exported .onnx files) and their models, loaded in that order."""

    paths: list[Path]
    loaded: list


class Photos(NamedTuple):
    """The photos a run predicts, their true masks (predict_on_val; else None), and where they come from: predict.json's
    provenance (data_root, group: the regex of the photos' groups, images_dir, masks_dir), which the report reads."""

    images: list[Path]
    masks: list[Path | CocoMask] | None
    provenance: dict


def score_fold(photos: Photos, output_dir: Path, threshold: float, fold: int | None) -> str:
    """predict_on_val's per-photo Dice of the written predictions against the photos' masks, written as
    dice_fold<fold>.csv into output_dir (carvana.predict.scores.dice_table) -> the summary line's words about it."""
    images = photos.images
    hists = histograms([output_dir / f"{p.stem}.png" for p in images], photos.masks, default_workers(1),
                       "scoring the predictions")
    table = dice_table(images, [p.name for p in images], hists, threshold, photos.provenance["group"])
    table_path = output_dir / f"dice_fold{fold}.csv"
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False)
    return f" val_dice={table.dice.mean():.4f} dice_table={table_path}"


def predict(cfg: dict, models: Models, photos: Photos, trainer: pl.Trainer, writer: MaskWriter) -> int:
    """Predict the photos not yet written into cfg's output_dir -> how many were predicted now."""
    loaded, images, output_dir, write = models.loaded, photos.images, Path(cfg["output_dir"]), cfg["write"]
    check_onnx_run(loaded, trainer.world_size)  # before anything is written
    tile = check_tiling(cfg["tile"], cfg["tile_overlap"], [m.geometry for m in loaded])
    geometry = [m.geometry.key for m in loaded]
    if tile:  # tiled outputs differ from whole ones at the tiles' borders: a folder keeps one or the other
        geometry.append(f"tile={tile[0]}x{tile[1]} overlap={cfg['tile_overlap']}")
    wanted = settings(cfg, models.paths, geometry, photos.provenance)
    # the photos are checked as training checks them (a corrupt one, or a size an ONNX file cannot take, stops the
    # run before anything is written), and give their sizes: masks come out at each photo's own size, batches hold
    # photos of one size
    sizes = [c.size for c in progress(check_photos(images, default_workers(1)), "checking the photos", len(images))]
    check_onnx_sizes(loaded, images, sizes, tile)
    prepare(output_dir, wanted, images, cfg["overwrite"], trainer.is_global_zero)
    done = writer.skip = written_names(output_dir, write, images)
    done = writer.skip = redo_wrong_sizes(output_dir, write, images, sizes, done, trainer.is_global_zero)
    todo = batches_to_do(images, sizes, done, 1 if tile else cfg["batch_size"])
    if not todo:
        return 0
    data = predict_data(cfg, loaded, [images[i] for i in todo], [sizes[i] for i in todo], tile, trainer.num_devices)
    ensemble = Ensemble(loaded, cfg["tta"], tile, cfg["tile_overlap"], cfg["batch_size"])
    predict_or_stop(trainer, ensemble, data, output_dir, lambda: len(written_names(output_dir, write, images)),
                    len(images))
    return sum(images[i].name not in done for i in todo)


def predict_data(cfg: dict, models: list, photos: list[Path], sizes: list[tuple[int, int]],
                 tile: tuple[int, int] | None, devices: int) -> PredictData:
    """The photos to predict now, of these (h, w) sizes, as the models' inputs (with the stacked masks and car boxes
    the models were trained on) in batches of one size."""
    stacked_dirs = {tuple(m.hparams.get("data", {}).get("stacked_dirs") or []) for m in models}
    if len(stacked_dirs) > 1:
        raise CarvanaError(f"the checkpoints were trained on different data.stacked_dirs ({sorted(stacked_dirs)}): "
                           f"ensemble checkpoints of one stage only")
    dirs = list(stacked_dirs.pop())
    dataset = PredictDataset(photos, [m.geometry for m in models], find_stacked(photos, dirs) if dirs else None,
                             car_boxes(models, cfg["data"]["bboxes"], photos))
    workers = default_workers(devices) if cfg["num_workers"] is None else cfg["num_workers"]
    # tiled: one photo at a time, batch_size tiles a forward
    return PredictData(dataset, sizes, 1 if tile else cfg["batch_size"], workers)


def predict_or_stop(trainer: pl.Trainer, ensemble: Ensemble, data: PredictData, output_dir: Path,
                    written: Callable[[], int], total: int) -> None:
    """trainer.predict; after a SIGTERM (the writer stops at the next batch), Stopped saying how many of the `total`
    photos are written in output_dir (`written()`)."""
    try:
        trainer.predict(ensemble, datamodule=data, return_predictions=False)
    except Exception:  # DataLoader workers killed by the same SIGTERM (timeout signals the process group) raise here
        if not trainer.received_sigterm:
            raise
    if trainer.received_sigterm:  # also when it came during the last batch: a signal is never reported as success
        done = written()
        raise Stopped(f"stopped by SIGTERM: {done} of {total} photos are written and kept in output_dir={output_dir}; "
                      f"the same command resumes with the other {total - done}")


def car_boxes(models: list, bboxes: str | None, images: list[Path]) -> dict | None:
    """The photos' car boxes when a model was trained on them: from `bboxes`, else the checkpoint's data.bboxes."""
    if not any(m.geometry.boxes for m in models):
        return None
    path = bboxes or next((m.hparams.get("data") or {}).get("bboxes") for m in models if m.geometry.boxes)
    return load_boxes(path, images)


def find_photos(path: str | Path, key: str) -> list[Path]:
    """The photos of a folder (carvana.data.layout.list_images), or one photo file itself: [path]."""
    path = Path(path)
    if not path.is_file():
        return list_images(path, key)
    if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
        raise CarvanaError(f"{key}={path} is a file but not a photo ({', '.join(IMAGE_SUFFIXES)}): give a photo or a "
                           "folder of photos")
    return [path]


def same_folder(a: Path, b: Path) -> bool:
    """Whether two paths name one folder (relative, through links, or another mount of it)."""
    if a.is_dir() and b.is_dir():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_apart(cfg: dict, meta: dict, root: Path) -> None:
    """Refuse an output_dir that is the photos' folder, or whose cutouts/ is (the predictions, <photo>.png, would be
    written over photos, removed as old predictions by overwrite=true, and listed as photos by the next run), or the
    checkpoint's mask folder."""
    output_dir = Path(cfg["output_dir"])
    if cfg["predict_on_val"]:
        photos_dir = root / meta.get("image_dir", "train")
        where = f"{photos_dir}, of data.root={root}"
    else:
        given = Path(cfg["input_dir"] or root / "test")
        photos_dir, where = given.parent if given.is_file() else given, f"input_dir={given}"
    for folder in (output_dir, output_dir / CUTOUTS):
        if same_folder(folder, photos_dir):
            raise CarvanaError(f"output_dir={output_dir}: its {'' if folder == output_dir else CUTOUTS + '/ '}folder "
                               f"holds the photos ({where}): predictions go into a folder of their own, "
                               f"e.g. output_dir={photos_dir.parent / (photos_dir.name + '_predictions')}")
    for key in ("train_mask_dir", "val_mask_dir"):  # <photo>.png there is a mask to training and the Dice table
        if meta.get(key) and same_folder(output_dir, root / meta[key]):
            raise CarvanaError(f"output_dir={output_dir} is the checkpoint's mask folder (data.{key}={meta[key]} "
                               f"under data.root={root}): predictions named <photo>.png would be read as masks; "
                               f"choose another output_dir")


def check_row_names(images: list[Path]) -> None:
    """Refuse photos whose names would break a row `img,rle_mask` of write=rle (a comma or a line break), before the
    run: the names are known, the rows would be written last."""
    bad = [p for p in images if any(c in p.name for c in ROW_BREAKERS)]
    if bad:
        raise CarvanaError(f"photo {bad[0]} has a comma or a line break in its name ({len(bad)} such photos): "
                           "write=rle writes rows 'img,rle_mask' that Kaggle's CSV reader splits there; rename them, "
                           "or predict with write=png")


def choose_photos(cfg: dict, meta: dict, fold: int | None) -> Photos:
    """The photos to predict, where they come from, and their masks (predict_on_val), each checked before the long
    run; `meta` is the data the first checkpoint was trained on."""
    root = Path(cfg["data"]["root"] or meta.get("root") or ".")
    # the regex of the photos' groups: Carvana's cars for checkpoints that do not say, each photo alone for null
    group = meta.get("group", CAR_GROUP)
    group = EACH_PHOTO if group is None else group
    check_apart(cfg, meta, root)  # before the photos are listed and anything in output_dir is touched
    images, masks, masks_dir = photos_and_masks(cfg, meta, root, group, fold)
    if "rle" in cfg["write"]:
        check_row_names(images)
    provenance = {"data_root": str(root), "group": group, "images_dir": str(images[0].parent),
                  "masks_dir": None if masks_dir is None else str(masks_dir)}
    return Photos(images, masks, provenance)


def photos_and_masks(cfg: dict, meta: dict, root: Path, group: str, fold: int | None
                     ) -> tuple[list[Path], list[Path | CocoMask] | None, Path | None]:
    """The photos to predict -> (photos, their masks, the masks' folder): the validation photos of `fold` with their
    masks (predict_on_val), else input_dir's photos (a folder or one photo) without masks."""
    if not cfg["predict_on_val"]:
        return find_photos(cfg["input_dir"] or root / "test", "input_dir"), None, None
    folds = read_folds(cfg["data"]["folds"] or meta.get("folds"))
    if meta.get("annotations"):  # data=coco: the photos its file lists, their masks drawn from their objects
        coco = read_coco(meta["annotations"], root, meta.get("categories"))
        images = split(coco.images, folds, fold, group_pattern(group))[1]
        return images, coco.masks_of(images), annotations_path(meta["annotations"], root)
    photos = list_images(root / meta.get("image_dir", "train"), "data.root")
    images = split(photos, folds, fold, group_pattern(group))[1]
    masks_dir = root / meta.get("val_mask_dir", "train_masks")
    return images, find_masks(images, masks_dir), masks_dir  # the masks before the long run starts


def run(cfg: dict) -> str:
    """predict.py's job from its plain config (conf/predict.yaml) -> the summary line, empty on ranks other than 0."""
    check_allocation(cfg["trainer"])
    use_allocated_cpus()
    cfg = check_settings(cfg)  # the keys first, then the files they name
    ckpts = find_checkpoints(cfg["ckpt"])
    models = Models(ckpts, load_models(ckpts, cfg["model"]))  # every file whole and of this project, before any work
    meta = models.loaded[0].hparams.get("data") or {}  # the first checkpoint's data: predict.py's defaults
    if cfg["predict_on_val"] and "png" not in cfg["write"]:
        raise CarvanaError("predict_on_val=true scores the written PNGs: use write=png or write=[png,rle]")
    fold = meta.get("fold") if cfg["fold"] is None else cfg["fold"]
    photos = choose_photos(cfg, meta, fold)
    output_dir = Path(cfg["output_dir"])
    check_writable_dir(output_dir, "output_dir")
    writer = MaskWriter(output_dir, cfg["write"], cfg["threshold"], cfg["writer_threads"],
                        {p.name: p for p in photos.images}, cfg["cutout_alpha"], cfg["cutout_colour"])
    trainer = pl.Trainer(**trainer_kwargs(cfg["trainer"]), callbacks=[writer], logger=False,
                         use_distributed_sampler=False)
    count = predict(cfg, models, photos, trainer, writer)
    if not trainer.is_global_zero:
        return ""
    line = f"predicted={count} skipped={len(photos.images) - count} output_dir={output_dir}"
    return line + (score_fold(photos, output_dir, cfg["threshold"], fold) if cfg["predict_on_val"] else "")


def main(cfg: dict) -> None:
    """predict.py: run, print rank 0's summary line; expected errors: one line, exit status 2."""
    quiet_lightning()
    with expected_errors(stopped=(Stopped,)):  # stopped: the line says what is written and how to go on
        line = run(cfg)
    if line:
        print(line, flush=True)
