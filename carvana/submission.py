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
from carvana.cli import check_threshold, conf_value, expected_errors
from carvana.data.io import probs_cut, read_probs8
from carvana.data.rle import rle_encode
from carvana.files import atomic_path, check_writable_dir, remove_dead_temporaries
from carvana.predict.manifest import Predictions, find_predictions, recorded_settings
from carvana.predict.shards import HEADER, first_few, format_row, shard_rows
from carvana.progress import progress

STRATEGIES = ("average", "vote")


def make_submission(*, probs_dir: str | os.PathLike | Sequence[str | os.PathLike] | None,
                    rle_dir: str | os.PathLike | None, sample_csv: str | os.PathLike | None, output: str | os.PathLike,
                    threshold: float | None, strategy: str, fill_missing: bool, allow_unlisted: bool, height: int,
                    width: int, workers: int | None) -> Path:
    """Write Kaggle's gzip CSV at `output` from probability PNGs (probs_dir: a folder, or a list to ensemble) or RLE
    shards (rle_dir) -> its path; the keys are conf/submit.yaml's.

    sample_csv None: the sample_submission.csv of the data root predict.py recorded with its outputs, else the
    default data root's. threshold None: the one predict.py recorded; RLE shards refuse any other.
    """
    output = Path(output)
    dirs, found = prediction_dirs(probs_dir, rle_dir, output, strategy)
    threshold, sample_csv = recorded_or_default(threshold, sample_csv, dirs, rle_dir is not None)
    names = read_sample_names(sample_csv)
    made = not output.parent.exists()
    check_writable_dir(output.parent, "output")
    remove_dead_temporaries(output.parent)
    try:
        if rle_dir is not None:
            rows = shard_rows(rle_dir, names, fill_missing, allow_unlisted, (height, width))
        else:
            check_listed({p.stem for f in found for p in f.pngs}, names, sample_csv, allow_unlisted)
            workers = len(os.sched_getaffinity(0)) if workers is None else workers
            rows = png_rows(dirs, names, threshold, strategy, fill_missing, (height, width), workers)
        write_submission(output, rows)
    except CarvanaError:
        if made and not any(output.parent.iterdir()):  # a refused run leaves no empty folder behind
            output.parent.rmdir()
        raise
    return output


def prediction_dirs(probs_dir: str | os.PathLike | Sequence[str | os.PathLike] | None,
                    rle_dir: str | os.PathLike | None, output: Path, strategy: str) -> tuple[list, list[Predictions]]:
    """The folders a submission reads (rle_dir, or probs_dir's one or several) and their predictions, after the
    settings that need no file are checked."""
    if (probs_dir is None) == (rle_dir is None):
        raise CarvanaError("set exactly one of probs_dir=DIR (probability PNGs) or rle_dir=DIR (rle-rank*.csv shards)")
    if not output.name.endswith(".csv.gz"):
        raise CarvanaError(f"output={output} must end in .csv.gz: the submission is a gzip-compressed CSV")
    if strategy not in STRATEGIES:
        raise CarvanaError(f"unknown strategy={strategy}: choose one of {', '.join(STRATEGIES)}")
    dirs = [rle_dir] if rle_dir is not None else \
        [probs_dir] if isinstance(probs_dir, (str, os.PathLike)) else list(probs_dir)
    key = "rle_dir" if rle_dir is not None else "probs_dir"
    found = [find_predictions(d, key) for d in dirs]  # the predictions first: the first thing a user may lack
    if rle_dir is None and not all(f.pngs for f in found):
        empty = next(d for d, f in zip(dirs, found) if not f.pngs)
        raise CarvanaError(f"probs_dir={empty} holds RLE shards, no PNGs: give it as rle_dir={empty}")
    return dirs, found


def check_listed(predicted: set[str], names: Sequence[str], sample_csv: object, allow_unlisted: bool) -> None:
    """Predicted photos that sample_csv does not list are refused (a short sample: a short submission), unless
    allow_unlisted, which says how many are left out."""
    unlisted = sorted(predicted - {Path(n).stem for n in names})
    if unlisted and not allow_unlisted:
        raise CarvanaError(f"{len(unlisted)} predicted photos are not in sample_csv={sample_csv}, e.g. "
                           f"{first_few(unlisted)}: wrong sample_csv? Leave them out with allow_unlisted=true")
    if unlisted:
        print(f"allow_unlisted: {len(unlisted)} predicted photos not in sample_csv are left out", file=sys.stderr)


# submit.py's keys that null fills from predict.json: the setting predict.py recorded, the default where none is
FROM_RECORD = (("threshold", "threshold", ("predict", "threshold")),
               ("sample_csv", "data_root", ("data/carvana", "root")))


def recorded_or_default(threshold: float | None, sample_csv: str | os.PathLike | None, dirs: list, shards: bool
                        ) -> tuple[float, str | os.PathLike]:
    """threshold and sample_csv: each as given, else from the one value predict.py recorded with the predictions (its
    threshold; its data root's sample_submission.csv), else predict.py's threshold and the default data root's sample.
    Folders that recorded different values are refused, naming the key that settles it; shards were cut when
    predict.py wrote them: another threshold is refused."""
    recorded = recorded_settings(dirs)
    if threshold is not None:
        check_threshold(threshold)
        cut = recorded.get("threshold", [])
        if shards and cut and threshold != cut[0]:
            raise CarvanaError(f"threshold={threshold}, but the shards in rle_dir={dirs[0]} were cut at {cut[0]} when "
                               f"predict.py wrote them: drop threshold=, or predict again with write=rle threshold="
                               f"{threshold}")
    settled = {"threshold": threshold, "sample_csv": sample_csv}
    for key, source, default in FROM_RECORD:
        values = recorded.get(source, [])
        if settled[key] is not None:
            continue
        if len(values) > 1:
            raise CarvanaError(f"the prediction folders {', '.join(map(str, dirs))} were written with different "
                               f"{source}s ({', '.join(map(str, values))}): give {key}= to say which")
        value = (values[0] if values else None) or conf_value(*default)
        settled[key] = Path(value) / "sample_submission.csv" if key == "sample_csv" else value
    return settled["threshold"], settled["sample_csv"]


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
            f"mask {path} is {probs8.shape[0]}x{probs8.shape[1]} (height x width), expected {shape[0]}x{shape[1]}: "
            "predict at full size, or set width= and height= to the size of the masks"
        )
    return probs8


def _list_dir(path: Path) -> set[str]:
    """Names of the files in a masks directory."""
    if not path.is_dir():
        raise CarvanaError(f"probs_dir={path} is not a directory: give the folder predict.py wrote the PNGs to")
    return set(os.listdir(path))


def main(cfg: dict) -> None:
    """submit.py's job: both probs_dir and rle_dir null read predict.py's default output_dir; print the
    submission's path; expected errors: one line, exit status 2."""
    with expected_errors():
        if cfg["probs_dir"] is None and cfg["rle_dir"] is None:
            default = conf_value("predict", "output_dir")
            found = find_predictions(default, "predict.py's default output_dir")
            cfg["rle_dir" if found.shards else "probs_dir"] = default
            kind = "RLE shards" if found.shards else "PNG probabilities"
            print(f"reading the {kind} in {default} (predict.py's default output_dir)", file=sys.stderr)
        path = make_submission(**cfg)
    print(path, flush=True)
