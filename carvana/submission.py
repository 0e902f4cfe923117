"""Kaggle submission: probability PNGs or streamed RLE shards -> gzip CSV `img,rle_mask` rows in sample order."""

import contextlib
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
from rich.console import Console
from rich.progress import track
from typing_extensions import Self  # typing.Self from Python 3.11

from carvana import CarvanaError
from carvana.io import atomic_path, read_probs
from carvana.rle import parse_rle, rle_encode

HEADER = "img,rle_mask"
SHARD_PATTERN = "rle-rank*.csv"
STRATEGIES = ("average", "vote")
_SHOWN = 5  # names quoted in an error message
_GZIP_LEVEL = 1  # RLE text: level 6 is 7x slower for a file only 6% smaller


def make_submission(
    sample_csv: str | os.PathLike,
    output: str | os.PathLike,
    masks_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    rle_dir: str | os.PathLike | None = None,
    threshold: float = 0.5,
    strategy: str = "average",
    fill_missing: bool = False,
    height: int = 1280,
    width: int = 1918,
    workers: int | None = None,
) -> Path:
    """Write Kaggle's gzip CSV at `output` from probability PNGs (masks_dir) or RLE shards (rle_dir); returns it."""
    if (masks_dir is None) == (rle_dir is None):
        raise CarvanaError("set exactly one of masks_dir=DIR (probability PNGs) or rle_dir=DIR (rle-rank*.csv shards)")
    output = Path(output)
    if not output.name.endswith(".csv.gz"):
        raise CarvanaError(f"output={output} must end in .csv.gz: the submission is a gzip-compressed CSV")
    names = read_sample_names(sample_csv)
    shape = (height, width)
    if rle_dir is not None:
        rows = shard_rows(rle_dir, names, fill_missing, shape)
    else:
        dirs = [masks_dir] if isinstance(masks_dir, (str, os.PathLike)) else list(masks_dir)
        workers = len(os.sched_getaffinity(0)) if workers is None else workers
        rows = png_rows(dirs, names, threshold, strategy, fill_missing, shape, workers)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_submission(output, names, rows)
    return output


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
        raise CarvanaError(f"sample_csv={path} lists {len(repeated)} photos twice, e.g. {_first(repeated)}")
    return names


def write_submission(path: str | os.PathLike, names: Sequence[str], rows: Iterable[str]) -> None:
    """Write gzip CSV `img,rle_mask` pairing names with RLE rows in order, through a temporary name and a rename."""
    with atomic_path(path) as tmp, gzip.open(tmp, "wt", encoding="utf-8", newline="", compresslevel=_GZIP_LEVEL) as f:
        f.write(HEADER + "\n")
        for name, rle in zip(names, rows, strict=True):
            f.write(f"{name},{rle}\n")


def mask_filename(img: str) -> str:
    """File name of the probability PNG that predict.py writes for photo `img`: 0004d4463b50_01.jpg -> ..._01.png."""
    return f"{Path(img).stem}.png"


def combine(probs: Sequence[np.ndarray], threshold: float, strategy: str) -> np.ndarray:
    """HxW bool mask from K HxW uint8 probability maps (0..255): mean > threshold*255, or a strict majority vote."""
    cut = math.floor(threshold * 255)  # for integers p: p > t exactly when p > floor(t)
    if len(probs) == 1:
        return probs[0] > cut
    if strategy == "average":
        return np.sum(probs, axis=0, dtype=np.uint32) > math.floor(threshold * 255 * len(probs))
    votes = np.sum([p > cut for p in probs], axis=0, dtype=np.uint32)
    return votes * 2 > len(probs)  # a tie (even K) is background


def encode_pngs(paths: Sequence[str], threshold: float, strategy: str, shape: tuple[int, int]) -> str:
    """Kaggle RLE of the ensembled, thresholded probability PNGs at `paths`; no paths (a filled gap) gives ""."""
    if not paths:
        return ""
    return rle_encode(combine([_read_sized(path, shape) for path in paths], threshold, strategy))


def png_rows(
    dirs: Sequence[str | os.PathLike],
    names: Sequence[str],
    threshold: float,
    strategy: str,
    fill_missing: bool,
    shape: tuple[int, int],
    workers: int,
) -> Iterator[str]:
    """Check every photo has a PNG in every directory, then lazily yield their RLE rows in order, over processes."""
    if strategy not in STRATEGIES:
        raise CarvanaError(f"unknown strategy={strategy}: choose one of {', '.join(STRATEGIES)}")
    if not 0 <= threshold <= 1:
        raise CarvanaError(f"threshold={threshold} is a probability: choose a value in [0, 1]")
    dirs = [Path(d) for d in dirs]
    listed = [_list_dir(d) for d in dirs]
    files = [mask_filename(name) for name in names]
    missing = [d / f for f in files for d, present in zip(dirs, listed) if f not in present]
    if missing and not fill_missing:
        raise CarvanaError(
            f"{len(missing)} masks are missing, e.g. {_first(missing)}: predict every photo of sample_csv, "
            "or set fill_missing=true to write empty rows for them"
        )
    tasks = [tuple(str(d / f) for d in dirs) if all(f in s for s in listed) else () for f in files]
    if missing:
        print(f"fill_missing: {sum(not t for t in tasks)} photos get an empty row", file=sys.stderr)
    for paths in tasks[:1]:  # fail fast on a wrong size, before starting the pool
        for path in paths:
            _read_sized(path, shape)
    encode = functools.partial(encode_pngs, threshold=threshold, strategy=strategy, shape=shape)
    return _pool_map(encode, tasks, workers)


class RleShardWriter:
    """Appends `img,rle_mask` rows to DIR/rle-rank{rank}.csv, one flushed line per mask; resumes a killed run."""

    def __init__(self, directory: str | os.PathLike, rank: int) -> None:
        """Open (or create) the shard of this rank; a half-written last line of a killed process is dropped."""
        self.path = Path(directory) / f"rle-rank{rank}.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows, end = _scan_shard(self.path) if self.path.exists() else ([], 0)
        self._done = {name for name, _, _ in rows}
        self._file = open(self.path, "ab")  # noqa: SIM115 -- kept open across write() calls, closed by close()
        self._file.truncate(end)
        if end == 0:
            self._file.write(f"{HEADER}\n".encode())
            self._file.flush()

    def done(self) -> set[str]:
        """Names of the photos already in this shard (a copy), to be skipped on a restart."""
        return set(self._done)

    def write(self, img: str, rle: str) -> None:
        """Append the row `img,rle` (img as in sample_csv's img column, rle from rle_encode) and flush it."""
        if not img or any(c in text for text in (img, rle) for c in ",\r\n"):  # would break the CSV row
            raise ValueError(f"cannot write row {img[:40]!r},{rle[:40]!r}: want a photo name and an RLE string")
        self._file.write(f"{img},{rle}\n".encode())
        self._file.flush()
        self._done.add(img)

    def close(self) -> None:
        """Close the shard file."""
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shard_rows(
    rle_dir: str | os.PathLike, names: Sequence[str], fill_missing: bool, shape: tuple[int, int]
) -> Iterator[str]:
    """Check the shards in rle_dir hold each photo exactly once (equal duplicates pass), then lazily yield its rows."""
    shards = sorted(Path(rle_dir).glob(SHARD_PATTERN))
    if not shards:
        raise CarvanaError(f"no {SHARD_PATTERN} shards in rle_dir={rle_dir}: run predict.py with write=rle first")
    found: dict[str, tuple[Path, int, int]] = {}
    conflicts = []
    for shard in shards:
        for name, start, length in _scan_shard(shard)[0]:
            if name in found and _read_at(found[name]) != _read_at((shard, start, length)):
                conflicts.append(f"{name} ({found[name][0].name} vs {shard.name})")
            found.setdefault(name, (shard, start, length))
    if conflicts:
        raise CarvanaError(f"{len(conflicts)} photos have different rows in the shards, e.g. {_first(conflicts)}")
    extra = sorted(set(found) - set(names))
    if extra:
        raise CarvanaError(
            f"{len(extra)} photos in rle_dir={rle_dir} are not in sample_csv, e.g. {_first(extra)}: wrong sample_csv?"
        )
    missing = [name for name in names if name not in found]
    if missing and not fill_missing:
        raise CarvanaError(
            f"{len(missing)} of {len(names)} photos have no row in rle_dir={rle_dir}, e.g. {_first(missing)}: "
            "resume predict.py, or set fill_missing=true to write empty rows for them"
        )
    return _read_rows([found.get(name) for name in names], shape)


def _read_rows(places: Sequence[tuple[Path, int, int] | None], shape: tuple[int, int]) -> Iterator[str]:
    """RLE strings at (shard, offset, length) places, each checked against the mask size; None gives ""."""
    with contextlib.ExitStack() as stack:
        files = {}
        for place in places:
            if place is None:
                yield ""
                continue
            shard, start, length = place
            if shard not in files:
                files[shard] = stack.enter_context(open(shard, "rb"))
            files[shard].seek(start)
            rle = files[shard].read(length).decode("ascii")
            try:
                parse_rle(rle, shape[0] * shape[1])
            except ValueError as err:
                raise CarvanaError(f"{shard} at byte {start}: {err}") from None
            yield rle


def _scan_shard(path: Path) -> tuple[list[tuple[str, int, int]], int]:
    """(name, rle offset, rle length) of each complete row of a shard, and the byte where complete rows end."""
    rows = []
    with open(path, "rb") as f:
        header = f.readline()
        if not header.endswith(b"\n"):  # empty, or killed while writing the header
            return [], 0
        if header.rstrip(b"\r\n") != HEADER.encode():
            raise CarvanaError(f"{path} does not start with '{HEADER}': not an RLE shard, move it out of the way")
        end = len(header)
        for line in f:
            if not line.endswith(b"\n"):  # the half-written last line of a killed process
                break
            name, comma, _ = line.partition(b",")
            if not comma or not name:
                raise CarvanaError(f"{path} at byte {end}: row {line[:40]!r} is not 'img,rle_mask'")
            rows.append((name.decode(), end + len(name) + 1, len(line) - len(name) - 2))
            end += len(line)
    return rows, end


def _read_at(place: tuple[Path, int, int]) -> bytes:
    """The bytes of one RLE string in a shard."""
    shard, start, length = place
    with open(shard, "rb") as f:
        f.seek(start)
        return f.read(length)


def _pool_map(encode: functools.partial, tasks: Sequence[tuple[str, ...]], workers: int) -> Iterator[str]:
    """encode(task) for each task, in order, over `workers` processes, with a progress bar on stderr."""
    console = Console(stderr=True)
    # a bar only on a terminal (logs get none), gone when done so that an error is the only line left
    bar = functools.partial(
        track,
        total=len(tasks),
        description="encoding",
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    if workers <= 1:
        yield from bar(map(encode, tasks))
        return
    # processes, not threads: str/numpy work holds the GIL; one cv2 thread each, the processes are the parallelism
    with Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
        rows = pool.imap(encode, tasks, chunksize=4)  # small chunks: the last ones finish together
        yield from bar(rows)


def _read_sized(path: str, shape: tuple[int, int]) -> np.ndarray:
    """A probability PNG as HxW uint8, or CarvanaError when it is not `shape`."""
    probs = read_probs(path)
    if probs.shape != shape:
        raise CarvanaError(
            f"mask {path} is {probs.shape[1]}x{probs.shape[0]} (WxH), expected {shape[1]}x{shape[0]}: "
            "predict at full size, or set width= and height= to the size of the masks"
        )
    return probs


def _list_dir(path: Path) -> set[str]:
    """Names of the files in a masks directory."""
    if not path.is_dir():
        raise CarvanaError(f"masks_dir={path} is not a directory: give the folder predict.py wrote the PNGs to")
    return set(os.listdir(path))


def _first(items: Sequence[object]) -> str:
    """The first few items, comma separated, with '...' when there are more."""
    return ", ".join(map(str, items[:_SHOWN])) + (", ..." if len(items) > _SHOWN else "")
