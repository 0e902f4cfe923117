"""The Dice of written predictions against their true masks, per photo: predict_on_val's dice_fold<k>.csv and the
report's per_image.csv are one table, from the pixel histograms the report's threshold sweep reads too."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from carvana.data.coco import CocoMask, read_mask_source
from carvana.data.io import read_probs8
from carvana.data.layout import angle_of, group_of, group_pattern, group_unit
from carvana.progress import progress


def histogram(pred_path: Path, truth: Path | CocoMask) -> np.ndarray:
    """2x256 int64 pixel counts by predicted value 0..255: row 0 background pixels, row 1 car pixels."""
    probs, mask = read_probs8(pred_path), read_mask_source(truth)
    assert probs.shape == mask.shape and probs.size < 2**24, (pred_path, probs.shape, mask.shape)
    every = cv2.calcHist([probs], [0], None, [256], [0, 256]).ravel()
    car = cv2.calcHist([probs], [0], mask, [256], [0, 256]).ravel()
    return np.stack([every - car, car]).astype(np.int64)  # float32 counts are exact below 2**24 pixels


def histograms(preds: list[Path], truths: list[Path | CocoMask], workers: int, what: str) -> np.ndarray:
    """histogram of each (prediction, true mask) pair -> Nx2x256, over `workers` threads (the PNG and GIF decoders
    release the GIL), its progress shown as `what`."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return np.stack(list(progress(pool.map(histogram, preds, truths), what, len(preds))))


def dice_curve(hists: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Nx2x256 histograms -> NxT Dice of `probs > t * 255` per photo and threshold; two empty masks give 1."""
    # tail[..., k]: pixels with value >= k, i.e. predicted car by every threshold with k-1 <= t * 255 < k
    tail = np.concatenate([np.cumsum(hists[..., ::-1], axis=-1)[..., ::-1], np.zeros((*hists.shape[:2], 1), int)], -1)
    first = np.array([(np.arange(256) <= t * 255).sum() for t in thresholds])  # smallest value above t * 255
    tp, fp = tail[:, 1, first], tail[:, 0, first]
    fn = hists[:, 1].sum(-1, keepdims=True) - tp
    total = 2 * tp + fp + fn
    return np.where(total > 0, 2 * tp / np.maximum(total, 1), 1.0)


def dice_table(photos: list[Path], names: list[str], hists: np.ndarray, threshold: float, group: str | None,
               key: str = "data.group") -> pd.DataFrame:
    """Each photo's Dice at `threshold` from its histogram -> DataFrame[image, car, angle, dice] when the photos are
    Carvana's cars (carvana.data.layout.group_unit), else [image, group, dice]; `names` fill the image column, the
    `group` regex (null: each photo alone; `key` names it in errors) gives each photo's group."""
    pattern = group_pattern(group, key)
    groups = [group_of(p, pattern, key) for p in photos]
    unit = group_unit(photos, groups)
    angles = {"angle": [angle_of(p) for p in photos]} if unit == "car" else {}
    dice = dice_curve(hists, np.array([threshold]))[:, 0]
    return pd.DataFrame({"image": names, unit: groups, **angles, "dice": dice})


def unit_of(table: pd.DataFrame) -> str:
    """What dice_table grouped its photos by: 'car' (with an angle column) or 'group'."""
    return "car" if "car" in table.columns else "group"
