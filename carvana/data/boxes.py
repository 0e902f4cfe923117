"""Car boxes: bounding boxes of a first stage's predicted car (bboxes.csv, python -m carvana.crops), read back, cut
out of a photo. Resizing a box to the network's input and pasting the logits back is carvana.data.geometry's (mode
boxes).

A box is the largest connected component of `probs > threshold*255`, grown by `margin` pixels on each side, then
to a multiple of `multiple` (symmetrically), then shifted (not shrunk) to lie inside the photo. It always holds
the whole component. When the photo side has no multiple-of-`multiple` window wide enough for component + margin
(1918 holds at most 1888 = 59*32), the margin gives way first; when even the component is wider than that window,
or the mask is empty, the box is the whole side (e.g. 1918, not a multiple: pad it like the full photo).
"""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from carvana import CarvanaError
from carvana.data.io import read_probs8
from carvana.files import atomic_path, is_temporary
from carvana.progress import progress

COLUMNS = ["img", "y_start", "y_end", "x_start", "x_end"]
Box = tuple[int, int, int, int]  # (y_start, y_end, x_start, x_end), ends exclusive


def cut_box(array: np.ndarray, box: Box) -> np.ndarray:
    """The box of an HxW or HxWxC array -> hxw or hxwxC (a view); a box that leaves the array is a CarvanaError."""
    y_start, y_end, x_start, x_end = box
    height, width = array.shape[:2]
    if not (0 <= y_start < y_end <= height and 0 <= x_start < x_end <= width):
        raise CarvanaError(f"box {tuple(box)} does not fit a {height}x{width} photo (height x width): was bboxes.csv "
                           "written for photos of this size?")
    return array[y_start:y_end, x_start:x_end]


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


def car_bbox(mask: np.ndarray, margin: int, multiple: int, threshold: float | None = None) -> Box:
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


def write_bboxes(probs_dir: str | os.PathLike, output: str | os.PathLike, threshold: float, margin: int, multiple: int,
                 workers: int) -> pd.DataFrame:
    """Write bboxes.csv (img, y_start, y_end, x_start, x_end; img = <stem>.jpg) for every <stem>.png in
    `probs_dir`."""
    probs_dir, output = Path(probs_dir), Path(output)
    if not probs_dir.is_dir():
        raise CarvanaError(f"probs_dir={probs_dir} is not a directory: give the first stage's PNG predictions")
    paths = sorted(p for p in probs_dir.glob("*.png") if not is_temporary(p))  # a killed writer's
    if not paths:
        raise CarvanaError(f"probs_dir={probs_dir} holds no .png predictions: run predict.py with write=png first")
    if not output.parent.is_dir():
        raise CarvanaError(f"output={output}: directory {output.parent} does not exist")
    # cv2 decodes and labels without the GIL: threads are enough
    with ThreadPoolExecutor(max(1, workers)) as pool:
        rows = list(progress(pool.map(lambda path: _bbox_row(path, threshold, margin, multiple), paths),
                             "finding the car boxes", len(paths)))
    table = pd.DataFrame(rows, columns=COLUMNS)
    with atomic_path(output) as tmp:
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


def load_boxes(path: str | os.PathLike, images: list[Path]) -> dict[str, Box]:
    """The car boxes of a bboxes.csv, checked to cover every photo before a long run starts."""
    boxes = read_bboxes(path)
    missing = [p.name for p in images if p.name not in boxes]
    if missing:
        raise CarvanaError(f"bboxes.csv {path} has no row for {len(missing)} photo(s), first: {missing[0]}: rewrite "
                           f"it with python -m carvana.crops on predictions that include them")
    return boxes
