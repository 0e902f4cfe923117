"""Out-of-fold report: per-photo, per-car and per-angle Dice, a threshold sweep, the worst photos, and report.html.

python -m carvana.report oof_dir=predictions/oof [data_root=data/carvana] [masks_dir=...] [images_dir=...]
                         [out_dir=...] [threshold=0.5] [worst=12] [workers=4]
python -m carvana.report run_dir=outputs/train/<run> [out_dir=...]    (a training run's learning curves and config)
"""

import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from carvana import CarvanaError
from carvana.cli import parse_words, run_or_exit
from carvana.io import (
    IMAGE_SUFFIXES,
    MASK_PATTERNS,
    atomic_path,
    car_id,
    is_temporary,
    read_image,
    read_mask,
    read_probs8,
)
from carvana.overlays import FN_COLOUR, FP_COLOUR, OUTLINE_COLOUR, draw_errors, draw_outline, label
from carvana.progress import progress
from carvana.report_html import oof_page, write_page
from carvana.run_report import best_epoch, write_run_report

DEFAULTS = {
    "oof_dir": None,  # predict.py predict_on_val=true output_dir: <photo stem>.png probabilities 0..255
    "run_dir": None,  # instead of oof_dir: a train.py run folder (csv/metrics.csv, .hydra/config.yaml)
    "data_root": "data/synthetic",  # conf/config.yaml's default data; real data: data_root=data/carvana
    "masks_dir": None,  # null = <data_root>/train_masks
    "images_dir": None,  # null = <data_root>/train (only the worst photos are read)
    "out_dir": None,  # null = <oof_dir>/report or <run_dir>/report
    "threshold": 0.5,  # car where probability > threshold, as predict.py's Dice table
    "worst": 12,  # photos in worst.png (0: no gallery)
    "workers": 4,  # threads decoding PNG/GIF pairs (the decoders release the GIL)
}
THRESHOLDS = np.round(np.arange(1, 20) * 0.05, 2)  # 0.05 .. 0.95
PREDICTION_NAME = re.compile(r"^.+_\d+$")  # <car>_<NN>: anything else in oof_dir (a report, a csv) is not a photo
TILE_WIDTH, COLUMNS = 384, 4  # a 1918x1280 photo becomes a 384x256 tile


def find_predictions(oof_dir: Path) -> list[Path]:
    """The `<car>_<NN>.png` predictions of `oof_dir`, sorted; a missing directory or none in it is a CarvanaError."""
    if not oof_dir.is_dir():
        raise CarvanaError(f"oof_dir={oof_dir} does not exist: point it at predict.py's predict_on_val output_dir")
    preds = sorted(p for p in oof_dir.glob("*.png") if PREDICTION_NAME.match(p.stem) and not is_temporary(p))
    if not preds:
        raise CarvanaError(f"oof_dir={oof_dir} holds no <car>_<NN>.png predictions: run predict.py predict_on_val=true")
    return preds


def find_truths(preds: list[Path], masks_dir: Path) -> list[Path]:
    """The ground-truth mask of each prediction in `masks_dir`, with its size checked from the file headers."""
    if not masks_dir.is_dir():
        raise CarvanaError(f"masks_dir={masks_dir} does not exist: set masks_dir= or data_root=")
    truths = [
        next((m for p in MASK_PATTERNS if (m := masks_dir / p.format(pred.stem)).exists()), None) for pred in preds
    ]
    missing = [pred.name for pred, truth in zip(preds, truths) if truth is None]
    if missing:
        raise CarvanaError(
            f"{len(missing)} prediction(s) have no mask in {masks_dir} (expected "
            f"{MASK_PATTERNS[0].format('<name>')}), first: {', '.join(missing[:5])}; check masks_dir="
        )
    for pred, truth in zip(preds, truths):
        if image_size(pred) != image_size(truth):
            raise CarvanaError(
                f"prediction {pred} is {'x'.join(map(str, image_size(pred)))} but its mask {truth} is "
                f"{'x'.join(map(str, image_size(truth)))}: predict at the photos' full size"
            )
    return truths


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header."""
    try:
        with Image.open(path) as img:
            return img.size
    except OSError as err:
        raise CarvanaError(f"{path} is not a readable image ({err}): replace or remove it") from None


def histogram(pred_path: Path, truth_path: Path) -> np.ndarray:
    """2x256 int64 pixel counts by predicted value 0..255: row 0 background pixels, row 1 car pixels."""
    probs, truth = read_probs8(pred_path), read_mask(truth_path)
    assert probs.shape == truth.shape and probs.size < 2**24, (pred_path, probs.shape, truth.shape)
    every = cv2.calcHist([probs], [0], None, [256], [0, 256]).ravel()
    car = cv2.calcHist([probs], [0], truth, [256], [0, 256]).ravel()
    return np.stack([every - car, car]).astype(np.int64)  # float32 counts are exact below 2**24 pixels


def dice_curve(hists: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Nx2x256 histograms -> NxT Dice of `probs > t * 255` per photo and threshold; two empty masks give 1."""
    # tail[..., k]: pixels with value >= k, i.e. predicted car by every threshold with k-1 <= t * 255 < k
    tail = np.concatenate([np.cumsum(hists[..., ::-1], axis=-1)[..., ::-1], np.zeros((*hists.shape[:2], 1), int)], -1)
    first = np.array([(np.arange(256) <= t * 255).sum() for t in thresholds])  # smallest value above t * 255
    tp, fp = tail[:, 1, first], tail[:, 0, first]
    fn = hists[:, 1].sum(-1, keepdims=True) - tp
    total = 2 * tp + fp + fn
    return np.where(total > 0, 2 * tp / np.maximum(total, 1), 1.0)


def tables(preds: list[Path], hists: np.ndarray, threshold: float) -> dict[str, pd.DataFrame]:
    """per_image, per_car, per_angle (hardest first) and thresholds tables from the photos' histograms."""
    per_image = pd.DataFrame(
        {
            "image": [f"{p.stem}.jpg" for p in preds],
            "car": [car_id(p) for p in preds],
            "angle": [int(p.stem.rsplit("_", 1)[1]) for p in preds],
            "dice": dice_curve(hists, np.array([threshold]))[:, 0],
        }
    )

    def mean_by(key: str) -> pd.DataFrame:
        table = per_image.groupby(key).dice.agg(["mean", "size"]).rename(columns={"mean": "dice", "size": "n"})
        return table.reset_index().sort_values(["dice", key], kind="stable").reset_index(drop=True)

    sweep = pd.DataFrame({"threshold": THRESHOLDS, "dice": dice_curve(hists, THRESHOLDS).mean(0)})
    return {"per_image": per_image, "per_car": mean_by("car"), "per_angle": mean_by("angle"), "thresholds": sweep}


def find_photo(images_dir: Path, stem: str) -> Path:
    """The photo `<stem>.jpg` (or another image suffix) in `images_dir`."""
    if not images_dir.is_dir():
        raise CarvanaError(f"images_dir={images_dir} does not exist: set images_dir= or data_root=, or worst=0")
    found = [images_dir / f"{stem}{s}" for s in IMAGE_SUFFIXES if (images_dir / f"{stem}{s}").exists()]
    if not found:
        raise CarvanaError(f"photo {stem}.jpg is not in images_dir={images_dir}: set images_dir= or worst=0")
    return found[0]


def worst_tiles(names: list[str], files: dict[str, tuple[Path, Path, Path]], threshold: float) -> list[np.ndarray]:
    """Photo names and their (prediction, mask, photo) files -> RGB tiles TILE_WIDTH wide: errors and outline drawn."""
    width, height = image_size(files[names[0]][1])
    size = (round(TILE_WIDTH * height / width), TILE_WIDTH)
    tiles = []
    for name in names:
        pred_path, truth_path, photo_path = files[name]
        image, truth = read_image(photo_path), read_mask(truth_path)
        if image.shape[:2] != truth.shape:
            raise CarvanaError(
                f"photo {photo_path} is {image.shape[1]}x{image.shape[0]} but its mask is "
                f"{truth.shape[1]}x{truth.shape[0]}: images_dir= is not the masks' photos"
            )
        pred = (read_probs8(pred_path) > threshold * 255).astype(np.uint8)
        tile = draw_errors(image, pred, truth, size)
        draw_outline(tile, pred)
        tiles.append(tile)
    return tiles


def gallery(tiles: list[np.ndarray], captions: list[list[str]]) -> np.ndarray:
    """Equal-size RGB tiles and their caption lines -> one RGB board of labelled tiles, COLUMNS wide."""
    (h, w), columns = tiles[0].shape[:2], min(COLUMNS, len(tiles))
    board = np.zeros((-(-len(tiles) // columns) * h, columns * w, 3), np.uint8)
    for i, (tile, lines) in enumerate(zip(tiles, captions)):
        r, c = divmod(i, columns)
        board[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
        label(board[r * h : (r + 1) * h, c * w : (c + 1) * w], lines)
    return board


def write_report(
    oof_dir: str,
    out_dir: str,
    masks_dir: str,
    images_dir: str,
    threshold: float = 0.5,
    worst: int = 12,
    workers: int = 4,
) -> dict[str, pd.DataFrame]:
    """Write per_image/per_car/per_angle/thresholds.csv, worst.png and report.html into out_dir -> the tables."""
    if not 0 <= threshold < 1:
        raise CarvanaError(f"threshold={threshold}: choose a probability in [0, 1)")
    if worst < 0:
        raise CarvanaError(f"worst={worst}: choose a number of photos >= 0")
    preds = find_predictions(Path(oof_dir))
    truths = find_truths(preds, Path(masks_dir))
    # any photo may be among the worst: check them all before the long pass
    photos = [find_photo(Path(images_dir), p.stem) for p in preds] if worst else []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        hists = np.stack(list(progress(pool.map(histogram, preds, truths), "scoring the photos", len(preds))))
    result = tables(preds, hists, threshold)
    out = Path(out_dir)
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
        with atomic_path(out / "worst.png") as tmp:
            if not cv2.imwrite(str(tmp), cv2.cvtColor(board, cv2.COLOR_RGB2BGR)):
                raise CarvanaError(f"cannot write {out / 'worst.png'}: check the directory is writable")
        overlays = list(zip(rows.image, rows.dice, tiles))
    colours = {"false positive": FP_COLOUR, "false negative": FN_COLOUR, "predicted outline": OUTLINE_COLOUR}
    write_page(out / "report.html", oof_page(result, overlays, oof_dir, threshold, colours))
    return result


def parse_args(argv: list[str]) -> dict:
    """`key=value` words -> write_report's or write_run_report's arguments, paths resolved; bad words: CarvanaError."""
    cfg = parse_words(argv, DEFAULTS, "oof_dir=predictions/oof",
                      {"threshold": (int, float), "worst": int, "workers": int})
    run_dir = cfg.pop("run_dir")
    if run_dir:
        if cfg["oof_dir"]:
            raise CarvanaError("give oof_dir= or run_dir=, not both: each writes its own report.html")
        unused = [key for key in DEFAULTS if key not in ("run_dir", "out_dir") and cfg[key] != DEFAULTS[key]]
        if unused:
            raise CarvanaError(f"{unused[0]}= is for oof_dir= reports: a run_dir= report takes only out_dir=")
        return {"run_dir": run_dir, "out_dir": cfg["out_dir"] or str(Path(run_dir) / "report")}
    if not cfg["oof_dir"]:
        raise CarvanaError("oof_dir= (predict.py predict_on_val=true output) or run_dir= (a train.py run) is required")
    root = Path(cfg.pop("data_root"))
    cfg["masks_dir"] = cfg["masks_dir"] or str(root / "train_masks")
    cfg["images_dir"] = cfg["images_dir"] or str(root / "train")
    cfg["out_dir"] = cfg["out_dir"] or str(Path(cfg["oof_dir"]) / "report")
    return cfg


def print_summary(cfg: dict, result: dict[str, pd.DataFrame]) -> None:
    """The out-of-fold report's summary lines: mean and best-threshold Dice, hardest angles, the gallery."""
    per_image, sweep, angles = result["per_image"], result["thresholds"], result["per_angle"]
    best = sweep.loc[sweep.dice.idxmax()]
    print(
        f"images={len(per_image)} cars={per_image.car.nunique()} mean_dice={per_image.dice.mean():.5f} "
        f"threshold={cfg['threshold']}"
    )
    print(f"best_threshold={best.threshold:.2f} mean_dice={best.dice:.5f}")
    print("hardest_angles=" + " ".join(f"{a:02d}:{d:.5f}" for a, d in zip(angles.angle[:3], angles.dice[:3])))
    if cfg["worst"]:
        print(
            f"worst.png: {min(cfg['worst'], len(per_image))} lowest-Dice photos, red = false positive, "
            "blue = false negative, green = predicted outline"
        )


def main(argv: list[str] | None = None) -> None:
    """Parse key=value words, write the report, print its summary; expected errors: one line, exit status 2."""
    def work(words: list[str]) -> tuple[dict, dict | pd.DataFrame]:
        cfg = parse_args(words)
        return cfg, (write_run_report(**cfg) if "run_dir" in cfg else write_report(**cfg))

    cfg, result = run_or_exit(sys.argv[1:] if argv is None else argv, __doc__, work)
    if "run_dir" in cfg:
        best = best_epoch(result)
        print(f"epochs={len(result)} " + ("no val_dice logged" if best is None else
              f"best_epoch={result.epoch[best]} val_dice={result.val_dice[best]:.5f}"))
    else:
        print_summary(cfg, result)
    print(f"report={Path(cfg['out_dir']) / 'report.html'}")
    print(cfg["out_dir"], flush=True)


if __name__ == "__main__":
    main()
