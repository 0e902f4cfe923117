"""Kaggle submission: probability PNGs or streamed RLE shards -> gzip CSV `img,rle_mask` rows in sample order."""

import functools
import gzip
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from carvana import CarvanaError
from carvana.io import (
    atomic_path,
    check_threshold,
    check_writable_dir,
    is_temporary,
    probs_cut,
    read_probs8,
    remove_dead_temporaries,
)
from carvana.manifest import recorded_value
from carvana.progress import progress
from carvana.submission.rle import rle_encode
from carvana.submission.shards import HEADER, SHARD_PATTERN, first_few, format_row, shard_rows

STRATEGIES = ("average", "vote")
DATA_ROOT = "data/carvana"  # the real data's default root (conf/data/carvana.yaml)


def make_submission(
    sample_csv: str | os.PathLike | None,
    output: str | os.PathLike,
    masks_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    rle_dir: str | os.PathLike | None = None,
    threshold: float | None = None,
    strategy: str = "average",
    fill_missing: bool = False,
    height: int = 1280,
    width: int = 1918,
    workers: int | None = None,
) -> Path:
    """Write Kaggle's gzip CSV at `output` from probability PNGs (masks_dir) or RLE shards (rle_dir); returns it.

    sample_csv None: the sample_submission.csv of the data root predict.py recorded with its outputs, else
    data/carvana's. threshold None: the one predict.py recorded (else 0.5); RLE shards refuse any other.
    """
    if (masks_dir is None) == (rle_dir is None):
        raise CarvanaError("set exactly one of masks_dir=DIR (probability PNGs) or rle_dir=DIR (rle-rank*.csv shards)")
    output = Path(output)
    if not output.name.endswith(".csv.gz"):
        raise CarvanaError(f"output={output} must end in .csv.gz: the submission is a gzip-compressed CSV")
    dirs = [rle_dir] if rle_dir is not None else \
        [masks_dir] if isinstance(masks_dir, (str, os.PathLike)) else list(masks_dir)
    threshold = submission_threshold(threshold, dirs, rle_dir is not None)
    if sample_csv is None:
        sample_csv = Path(recorded_value(dirs, "data_root") or DATA_ROOT) / "sample_submission.csv"
    names = read_sample_names(sample_csv)
    check_writable_dir(output.parent, "output")
    remove_dead_temporaries(output.parent)
    shape = (height, width)
    if rle_dir is not None:
        rows = shard_rows(rle_dir, names, fill_missing, shape)
    else:
        workers = len(os.sched_getaffinity(0)) if workers is None else workers
        rows = png_rows(dirs, names, threshold, strategy, fill_missing, shape, workers)
    write_submission(output, rows)
    return output


def submission_threshold(threshold: float | None, dirs: list, shards: bool) -> float:
    """The cut of the submission: the one given, else the one predict.py recorded with the outputs, else 0.5.
    Shards were cut when predict.py wrote them: a threshold other than the recorded one is refused."""
    recorded = recorded_value(dirs, "threshold")
    if threshold is None:
        return recorded if recorded is not None else 0.5
    check_threshold(threshold)
    if shards and recorded is not None and threshold != recorded:
        raise CarvanaError(f"threshold={threshold}, but the shards in rle_dir={dirs[0]} were cut at {recorded} when "
                           "predict.py wrote them: drop threshold=, or predict again with write=rle threshold="
                           f"{threshold}")
    return threshold


def find_predictions(directory: str | os.PathLike) -> dict:
    """What predict.py wrote into `directory`: {"rle_dir": it} when it holds RLE shards (streamed rows, no PNG to
    read back), else {"masks_dir": it} when it holds PNGs; neither is a CarvanaError."""
    directory = Path(directory)
    if any(directory.glob(SHARD_PATTERN)):
        return {"rle_dir": str(directory)}
    if any(not is_temporary(p) for p in directory.glob("*.png")):
        return {"masks_dir": str(directory)}
    raise CarvanaError(f"{directory} holds no predictions (neither {SHARD_PATTERN} shards nor .png masks): run "
                       "python predict.py ckpt=... first, or set masks_dir= / rle_dir=")


def read_sample_names(path: str | os.PathLike) -> list[str]:
    """Photo names (the `img` column, e.g. 0004d4463b50_01.jpg) of a sample submission CSV, in its order."""
    try:
        sample = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:  # ValueError: pandas' parser errors, a binary file
        raise CarvanaError(f"cannot read sample_csv={path}: {err}") from None
    if "img" not in sample.columns:
        raise CarvanaError(
            f"sample_csv={path} has no 'img' column (columns: {', '.join(map(str, sample.columns))}): "
            "point sample_csv to Kaggle's sample_submission.csv"
        )
    names = sample["img"].tolist()
    repeated = sample["img"][sample["img"].duplicated()].unique().tolist()
    if repeated:
        raise CarvanaError(f"sample_csv={path} lists {len(repeated)} photos twice, e.g. {first_few(repeated)}")
    return names


def write_submission(path: str | os.PathLike, rows: Iterable[bytes]) -> None:
    """Write the gzip CSV: the header, then each `img,rle\\n` row, through a temporary name and a rename."""
    # RLE text: level 6 is 2.5x slower; no name or time in the gzip header: the same rows give the same bytes
    with atomic_path(path) as tmp, open(tmp, "wb") as raw, gzip.GzipFile("", "wb", 1, raw, mtime=0) as f:
        f.write(f"{HEADER}\n".encode())
        for row in rows:
            f.write(row)


def mask_filename(img: str) -> str:
    """File name of the probability PNG that predict.py writes for photo `img`: 0004d4463b50_01.jpg -> ..._01.png."""
    return f"{Path(img).stem}.png"


def combine(probs8: Sequence[np.ndarray], threshold: float, strategy: str) -> np.ndarray:
    """HxW bool mask from K HxW probs8 maps (uint8 0..255): mean > threshold*255, or a strict majority vote."""
    cut = probs_cut(threshold)
    if len(probs8) == 1:
        return probs8[0] > cut
    if strategy == "average":
        return np.sum(probs8, axis=0, dtype=np.uint32) > math.floor(threshold * 255 * len(probs8))
    votes = np.sum([p > cut for p in probs8], axis=0, dtype=np.uint32)
    return votes * 2 > len(probs8)  # a tie (even K) is background


def encode_pngs(task: tuple[str, tuple[str, ...]], threshold: float, strategy: str, shape: tuple[int, int]) -> bytes:
    """The row `img,rle\\n` of task (img, PNG paths): its ensembled, thresholded masks; no paths (a filled gap) gives
    an empty RLE."""
    name, paths = task
    rle = rle_encode(combine([_read_sized(path, shape) for path in paths], threshold, strategy)) if paths else ""
    return format_row(name, rle)


def png_rows(
    dirs: Sequence[str | os.PathLike],
    names: Sequence[str],
    threshold: float,
    strategy: str,
    fill_missing: bool,
    shape: tuple[int, int],
    workers: int,
) -> Iterator[bytes]:
    """Check every photo has a PNG in every directory, then lazily yield their RLE rows in order, over processes."""
    if strategy not in STRATEGIES:
        raise CarvanaError(f"unknown strategy={strategy}: choose one of {', '.join(STRATEGIES)}")
    dirs = [Path(d) for d in dirs]
    listed = [_list_dir(d) for d in dirs]
    files = [mask_filename(name) for name in names]
    missing = [d / f for f in files for d, present in zip(dirs, listed) if f not in present]
    if missing and not fill_missing:
        raise CarvanaError(
            f"{len(missing)} masks are missing, e.g. {first_few(missing)}: predict every photo of sample_csv, "
            "or set fill_missing=true to write empty rows for them"
        )
    tasks = [
        (name, tuple(str(d / f) for d in dirs) if all(f in s for s in listed) else ()) for name, f in zip(names, files)
    ]
    if missing:
        print(f"fill_missing: {sum(not paths for _, paths in tasks)} photos get an empty row", file=sys.stderr)
    for _, paths in tasks[:1]:  # fail fast on a wrong size, before starting the pool
        for path in paths:
            _read_sized(path, shape)
    encode = functools.partial(encode_pngs, threshold=threshold, strategy=strategy, shape=shape)
    return _pool_map(encode, tasks, workers)


def _pool_map(encode: functools.partial, tasks: Sequence[tuple], workers: int) -> Iterator[bytes]:
    """encode(task) for each task, in order, over `workers` processes, with its progress."""
    if workers <= 1:
        yield from progress(map(encode, tasks), "encoding the masks", len(tasks))
        return
    # processes, not threads: str/numpy work holds the GIL; one cv2 thread each, the processes are the parallelism
    with Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
        rows = pool.imap(encode, tasks, chunksize=4)  # small chunks: the last ones finish together
        yield from progress(rows, "encoding the masks", len(tasks))


def _read_sized(path: str, shape: tuple[int, int]) -> np.ndarray:
    """A probability PNG as HxW probs8, or CarvanaError when it is not `shape` (h, w)."""
    probs8 = read_probs8(path)
    if probs8.shape != shape:
        raise CarvanaError(
            f"mask {path} is {probs8.shape[1]}x{probs8.shape[0]} (WxH), expected {shape[1]}x{shape[0]}: "
            "predict at full size, or set width= and height= to the size of the masks"
        )
    return probs8


def _list_dir(path: Path) -> set[str]:
    """Names of the files in a masks directory."""
    if not path.is_dir():
        raise CarvanaError(f"masks_dir={path} is not a directory: give the folder predict.py wrote the PNGs to")
    return set(os.listdir(path))
