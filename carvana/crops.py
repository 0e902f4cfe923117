"""Car boxes for the stacked second stage: bounding boxes of the first stage's predicted car, as bboxes.csv.

Cutting a photo's box out and pasting the logits back is carvana.geometry's (mode boxes).

    python -m carvana.crops pred_dir=predictions/test out=bboxes.csv [threshold=0.5 margin=32 multiple=32 workers=4]

A box is the largest connected component of `probs > threshold*255`, grown by `margin` pixels on each side, then
to a multiple of `multiple` (symmetrically), then shifted (not shrunk) to lie inside the photo. It always holds
the whole component. When the photo side has no multiple-of-`multiple` window wide enough for component + margin
(1918 holds at most 1888 = 59*32), the margin gives way first; when even the component is wider than that window,
or the mask is empty, the box is the whole side (e.g. 1918, not a multiple: pad it like the full photo).
"""

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from carvana import CarvanaError
from carvana.cli import parse_words, run_or_exit
from carvana.geometry import Box
from carvana.io import atomic_path, is_temporary, read_probs8
from carvana.progress import progress

COLUMNS = ["img", "y_start", "y_end", "x_start", "x_end"]
DEFAULTS = {"pred_dir": None, "out": None, "threshold": 0.5, "margin": 32, "multiple": 32, "workers": 4}


def _span(lo: int, hi: int, side: int, margin: int, multiple: int) -> tuple[int, int]:
    """[start, end) on one axis of length `side` around the component's [lo, hi), as the module docstring says."""
    size = -(-(hi - lo + 2 * margin) // multiple) * multiple
    widest = side // multiple * multiple
    if size > widest:
        if hi - lo > widest:
            return 0, side
        size = widest
    # centred on the component (the margin is symmetric), then shifted inward: still holds [lo, hi) as size >= hi-lo
    start = min(max((lo + hi - size) // 2, 0), side - size)
    return start, start + size


def car_bbox(mask: np.ndarray, margin: int = 32, multiple: int = 32, threshold: float | None = None) -> Box:
    """(y_start, y_end, x_start, x_end) around the largest component of an HxW mask (nonzero = car), or of HxW uint8
    probs 0..255 > threshold*255 when `threshold` is given; sides are multiples of `multiple` (see module docstring)."""
    if mask.ndim != 2:
        raise CarvanaError(f"car_bbox expects an HxW mask, got shape {mask.shape}")
    if margin < 0 or multiple < 1:
        raise CarvanaError(f"car_bbox needs margin >= 0 and multiple >= 1, got margin={margin} multiple={multiple}")
    height, width = mask.shape
    car = (mask > 0) if threshold is None else (mask > threshold * 255)
    count, _, stats, _ = cv2.connectedComponentsWithStats(car.astype(np.uint8), connectivity=8)
    if count < 2:  # label 0 is the background: no car predicted, keep the whole photo
        return 0, height, 0, width
    left, top, box_w, box_h = stats[1 + np.argmax(stats[1:, cv2.CC_STAT_AREA]), :4].tolist()
    y_start, y_end = _span(top, top + box_h, height, margin, multiple)
    x_start, x_end = _span(left, left + box_w, width, margin, multiple)
    return y_start, y_end, x_start, x_end


def _bbox_row(path: Path, threshold: float, margin: int, multiple: int) -> list:
    """One bboxes.csv row [img, y_start, y_end, x_start, x_end] for the probability PNG at `path`."""
    return [f"{path.stem}.jpg", *car_bbox(read_probs8(path), margin, multiple, threshold)]


def write_bboxes(
    pred_dir: str | os.PathLike,
    out_csv: str | os.PathLike,
    threshold: float = 0.5,
    margin: int = 32,
    multiple: int = 32,
    workers: int = 4,
) -> pd.DataFrame:
    """Write bboxes.csv (img, y_start, y_end, x_start, x_end; img = <stem>.jpg) for every <stem>.png in `pred_dir`."""
    pred_dir, out_csv = Path(pred_dir), Path(out_csv)
    if not pred_dir.is_dir():
        raise CarvanaError(f"pred_dir {pred_dir} is not a directory: give the first stage's PNG predictions")
    paths = sorted(p for p in pred_dir.glob("*.png") if not is_temporary(p))  # a killed writer's
    if not paths:
        raise CarvanaError(f"pred_dir {pred_dir} holds no .png predictions: run predict.py with write=[png] first")
    if not 0 <= threshold <= 1:
        raise CarvanaError(f"threshold={threshold} is a probability: choose a value in [0, 1]")
    if not out_csv.parent.is_dir():
        raise CarvanaError(f"cannot write {out_csv}: directory {out_csv.parent} does not exist")
    # cv2 decodes and labels without the GIL: threads are enough
    with ThreadPoolExecutor(max(1, workers)) as pool:
        rows = list(progress(pool.map(lambda path: _bbox_row(path, threshold, margin, multiple), paths),
                             "finding the car boxes", len(paths)))
    table = pd.DataFrame(rows, columns=COLUMNS)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table


def read_bboxes(path: str | os.PathLike) -> dict[str, Box]:
    """bboxes.csv -> {img: (y_start, y_end, x_start, x_end)}; a missing file, column or duplicate row is refused."""
    path = Path(path)
    if not path.is_file():
        raise CarvanaError(f"bboxes.csv {path} does not exist: write it with python -m carvana.crops pred_dir=...")
    table = pd.read_csv(path)
    missing = [column for column in COLUMNS if column not in table.columns]
    if missing:
        raise CarvanaError(f"bboxes.csv {path} lacks columns {', '.join(missing)}: expected {','.join(COLUMNS)}")
    if not all(pd.api.types.is_integer_dtype(table[column]) for column in COLUMNS[1:]):
        raise CarvanaError(f"bboxes.csv {path} has non-integer or empty box coordinates")
    duplicated = table.img[table.img.duplicated()]
    if len(duplicated):
        raise CarvanaError(f"bboxes.csv {path} has several rows for {duplicated.iloc[0]}")
    return {img: tuple(int(v) for v in box) for img, *box in table[COLUMNS].itertuples(index=False)}


def bbox_for(bboxes: dict[str, Box], img_name: str, path: str | os.PathLike) -> Box:
    """The box of photo `img_name` (e.g. '0cdf5b5d0ce1_01.jpg') from read_bboxes(path); a missing row is refused."""
    if img_name not in bboxes:
        raise CarvanaError(
            f"bboxes.csv {path} has no row for {img_name}: rewrite it with python -m carvana.crops "
            "on first-stage predictions that include this photo"
        )
    return bboxes[img_name]


def parse_args(argv: list[str]) -> dict:
    """`key=value` words -> DEFAULTS overridden; an unknown key, a missing path or a word without '=' is refused."""
    cfg = parse_words(argv, DEFAULTS, "pred_dir=predictions/test out=bboxes.csv",
                      {"threshold": (int, float), "margin": int, "multiple": int, "workers": int})
    for key in ("pred_dir", "out"):
        if not cfg[key]:
            raise CarvanaError(f"{key}= is required: python -m carvana.crops pred_dir=DIR out=bboxes.csv")
    return cfg


def main(argv: list[str] | None = None) -> None:
    """Parse key=value words, write bboxes.csv, print a summary; expected errors: one line, exit status 2."""
    def work(words: list[str]) -> tuple[dict, pd.DataFrame]:
        cfg = parse_args(words)
        return cfg, write_bboxes(cfg["pred_dir"], cfg["out"], cfg["threshold"], cfg["margin"], cfg["multiple"],
                                 cfg["workers"])

    cfg, table = run_or_exit(sys.argv[1:] if argv is None else argv, __doc__, work)
    heights, widths = table.y_end - table.y_start, table.x_end - table.x_start
    print(
        f"boxes={len(table)} mean_box={heights.mean():.0f}x{widths.mean():.0f} max_box={heights.max()}x{widths.max()}"
    )
    print(cfg["out"], flush=True)


if __name__ == "__main__":
    main()
