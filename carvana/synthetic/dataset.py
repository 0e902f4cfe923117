"""The synthetic set in Carvana's exact layout: train/, train_masks/, test/ and Kaggle's three csvs."""

import csv
import os
import shutil
from pathlib import Path

import numpy as np

from carvana import CarvanaError
from carvana.data.io import write_image, write_mask_gif
from carvana.data.rle import rle_encode
from carvana.progress import progress
from carvana.synthetic.lowpoly import Car, car_parts, sample_car
from carvana.synthetic.turntable import REF_SHAPE, render_photo

ANGLES = 16  # turntable stops 22.5 degrees apart: 01 faces the camera, 05 shows a side, 09 the back, 13 the other side
JPEG_QUALITY = 60  # Kaggle's photos carry libjpeg's quality-57 tables (~90 KB each)
METADATA_COLUMNS = ("id", "year", "make", "model", "trim1", "trim2", "area", "train", "size", "color",
                    "simplified_color", "stratifeature")
# size in metadata.csv: 7 equal bins of a car's mask area summed over its 16 photos, from the real min to max
SIZE_NAMES = ("very very small", "very small", "small", "medium", "large", "very large", "very very large")
AREA_RANGE = (4_249_161, 14_361_358)


def _size_class(area: int, shape: tuple[int, int]) -> str:
    """Kaggle's size class of a car from its mask area summed over 16 photos, rescaled to 1280x1918 photos."""
    ref = area * REF_SHAPE[0] * REF_SHAPE[1] / (shape[0] * shape[1])
    k = int((ref - AREA_RANGE[0]) / (AREA_RANGE[1] - AREA_RANGE[0]) * len(SIZE_NAMES))
    return SIZE_NAMES[min(max(k, 0), len(SIZE_NAMES) - 1)]


def _write_car(out: Path, car: Car, train: bool, shape: tuple[int, int], rng: np.random.Generator) -> tuple[list, dict]:
    """Write the 16 photos (and masks) of one car -> (csv rows, metadata row)."""
    parts, rows, area = car_parts(car), [], 0
    for angle in range(1, ANGLES + 1):
        image, mask = render_photo(car, parts, angle, shape, rng)
        name = f"{car.car_id}_{angle:02d}.jpg"
        write_image(out / ("train" if train else "test") / name, image, quality=JPEG_QUALITY)
        if train:
            write_mask_gif(out / "train_masks" / name.replace(".jpg", "_mask.gif"), mask)
        rows.append((name, rle_encode(mask) if train else "1 1"))  # Kaggle's sample_submission says "1 1"
        area += int(mask.sum())
    size, white = _size_class(area, shape), "White" if car.simplified_color == "White" else "Non-white"
    meta = {"id": car.car_id, "year": car.year, "make": "Synthetic", "model": car.body, "trim1": car.body,
            "trim2": f"{car.length:.2f} m", "area": area, "train": "TRUE" if train else "FALSE", "size": size,
            "color": car.color, "simplified_color": car.simplified_color, "stratifeature": f"{size}-{white}"}
    return rows, meta


def _write_csv(path: Path, header: tuple, rows: list, newline: str = "\n") -> None:
    """Write a CSV file (Kaggle's metadata.csv ends its lines with CRLF, its other csvs with LF)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator=newline)
        writer.writerow(header)
        writer.writerows(rows)


def _write_set(out: Path, train_cars: int, test_cars: int, shape: tuple[int, int], seed: int) -> None:
    """Write a whole set into the empty directory `out`."""
    for sub in ("train", "train_masks", "test"):
        (out / sub).mkdir(parents=True)
    master, ids = np.random.default_rng(seed), []
    while len(ids) < train_cars + test_cars:
        car_id = master.bytes(6).hex()  # 12 lowercase hex digits, as Kaggle's
        ids += [car_id] if car_id not in ids else []
    masks, submission, metadata = [], [], []
    for i, car_id in progress(list(enumerate(ids)), "rendering the synthetic cars", len(ids)):
        rng = np.random.default_rng([seed, i])
        rows, meta = _write_car(out, sample_car(car_id, rng), i < train_cars, shape, rng)
        (masks if i < train_cars else submission).extend(rows)
        metadata.append([meta[c] for c in METADATA_COLUMNS])
    _write_csv(out / "train_masks.csv", ("img", "rle_mask"), sorted(masks))
    _write_csv(out / "sample_submission.csv", ("img", "rle_mask"), sorted(submission))
    _write_csv(out / "metadata.csv", METADATA_COLUMNS, metadata, newline="\r\n")


def _images(csv_path: Path) -> list[str]:
    """The `img` column of a Kaggle csv (train_masks.csv, sample_submission.csv)."""
    with csv_path.open(newline="") as f:
        return [row["img"] for row in csv.DictReader(f)]


def is_complete(root: str | os.PathLike) -> bool:
    """Whether root holds a whole Carvana-layout set: the three csvs, 16 photos a car, every photo and mask listed."""
    root = Path(root)
    try:
        train, test = _images(root / "train_masks.csv"), _images(root / "sample_submission.csv")
        with (root / "metadata.csv").open(newline="") as f:
            cars = {row["id"] for row in csv.DictReader(f)}
    except (OSError, KeyError, csv.Error):
        return False
    listed = {name.rsplit("_", 1)[0] for name in train + test}
    return (bool(train) and len(train) % ANGLES == 0 and len(test) % ANGLES == 0 and listed <= cars
            and all((root / "train" / n).is_file() and (root / "train_masks" / n.replace(".jpg", "_mask.gif")).is_file()
                    for n in train) and all((root / "test" / n).is_file() for n in test))


def make_dataset(root: str | os.PathLike, train_cars: int, test_cars: int, size: tuple[int, int], seed: int,
                 overwrite: bool = False) -> Path:
    """Generate a synthetic set in Carvana's layout at root, size = (height, width); the same seed, the same bytes."""
    root, (height, width) = Path(root), size
    if train_cars < 1 or test_cars < 0:
        raise CarvanaError(f"need at least 1 training car and 0 test cars, got {train_cars} and {test_cars}")
    if height < 32 or width < 32:
        raise CarvanaError(f"photo size {height}x{width} (height x width) is too small: use at least 32x32 "
                           "(Kaggle's is 1280x1918)")
    if root.exists() and not overwrite and (not root.is_dir() or any(root.iterdir())):
        what = "a complete data set" if is_complete(root) else "not empty"
        raise CarvanaError(f"{root} already exists and is {what}: delete it, choose another root, "
                           "or overwrite it (overwrite=true)")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = (root.with_name(f".{root.name}.{what}{os.getpid()}") for what in ("tmp", "old"))
    try:
        _write_set(tmp, train_cars, test_cars, (height, width), seed)
        if overwrite and root.is_dir():
            os.replace(root, old)
        elif overwrite and root.exists():
            root.unlink()
        try:
            os.replace(tmp, root)  # atomic; fails if root has become a non-empty directory meanwhile
        except OSError:
            if not is_complete(root):
                raise
            # another process (a DDP rank) generated the same set meanwhile: keep its copy, it may be reading it
    finally:
        for path in (tmp, old):  # an interrupted run leaves neither a half set nor temporary files
            shutil.rmtree(path, ignore_errors=True)
    return root
