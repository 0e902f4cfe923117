"""RLE shards of `predict.py write=rle`: `rle-rank{r}.csv` (header `img,rle_mask`, one flushed row per photo, any CSV
tool reads it), and their merge into rows in sample order, each photo exactly once and every row valid RLE."""

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from carvana import CarvanaError
from carvana.data.rle import parse_rle
from carvana.progress import progress

HEADER = "img,rle_mask"
SHARD_PATTERN = "rle-rank*.csv"
_SHOWN = 5  # names quoted in an error message
ROW_BREAKERS = ",\r\n"  # characters a photo name or RLE of a row cannot hold


class Row(NamedTuple):
    """A complete row of a shard: photo name, byte offset and length of `name,rle\\n`."""

    name: str
    start: int
    length: int


def format_row(img: str, rle: str) -> bytes:
    """The shard row `img,rle\\n` of a photo; a name or RLE that would break the CSV row is a ValueError."""
    if not img or any(c in text for text in (img, rle) for c in ROW_BREAKERS):
        raise ValueError(f"cannot write row {img[:40]!r},{rle[:40]!r}: want a photo name and an RLE string")
    return f"{img},{rle}\n".encode()


class RleShardWriter:
    """Appends rows to DIR/rle-rank{rank}.csv, each flushed; resumes a killed run's shard."""

    def __init__(self, directory: str | os.PathLike, rank: int) -> None:
        """Open (or create) this rank's shard; a half-written last row of a killed process is dropped."""
        self.path = Path(directory) / f"rle-rank{rank}.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows, end = scan_shard(self.path) if self.path.exists() else ([], 0)
        self._done = {row.name for row in rows}
        self._file = open(self.path, "ab")  # noqa: SIM115 -- kept open across write() calls, closed by close()
        self._file.truncate(end)
        if end == 0:
            self._file.write(f"{HEADER}\n".encode())
            self._file.flush()

    def done(self) -> set[str]:
        """Names of the photos already in this shard (a copy), to be skipped on a restart."""
        return set(self._done)

    def write(self, img: str, rle: str) -> None:
        """Append the row of photo `img` (as in sample_csv's img column) with `rle` from rle_encode, flushed.

        A photo already in this shard keeps its first row (write=[png,rle] predicts it again when its PNG is gone).
        """
        if img in self._done:
            return
        self._file.write(format_row(img, rle))
        self._file.flush()
        self._done.add(img)

    def close(self) -> None:
        """Close the shard's file."""
        self._file.close()

    def __enter__(self) -> "RleShardWriter":  # noqa: PYI034 -- typing.Self is Python 3.11+, 3.10 is supported
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scan_shard(path: Path) -> tuple[list[Row], int]:
    """The complete rows of a shard, and the byte where they end (a killed run's half line comes after)."""
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
            rows.append(Row(name.decode(), end, len(line)))
            end += len(line)
    return rows, end


def shard_rows(rle_dir: str | os.PathLike, names: Sequence[str], fill_missing: bool, allow_unlisted: bool,
               shape: tuple[int, int]) -> Iterator[bytes]:
    """Check the shards in rle_dir hold each photo exactly once (equal duplicates pass), then lazily yield the rows
    `img,rle\\n` in the order of `names`, each checked to be valid RLE of a `shape` (h, w) mask; a missing photo
    (fill_missing) gets an empty row, a photo `names` lacks is refused unless allow_unlisted."""
    shards = sorted(Path(rle_dir).glob(SHARD_PATTERN))
    if not shards:
        raise CarvanaError(f"no {SHARD_PATTERN} shards in rle_dir={rle_dir}: run predict.py with write=rle first")
    found: dict[str, tuple[Path, Row]] = {}
    conflicts = []
    for shard in shards:
        for row in scan_shard(shard)[0]:
            if row.name in found:
                first = found[row.name]
                if _read_at(*first) != _read_at(shard, row):
                    conflicts.append(f"{row.name} ({first[0].name} vs {shard.name})")
                continue
            found[row.name] = (shard, row)
    if conflicts:
        raise CarvanaError(f"{len(conflicts)} photos have different rows in the shards, e.g. {first_few(conflicts)}")
    extra = sorted(set(found) - set(names))
    if extra and not allow_unlisted:
        raise CarvanaError(f"{len(extra)} photos in rle_dir={rle_dir} are not in sample_csv, e.g. {first_few(extra)}: "
                           "wrong sample_csv? Leave them out with allow_unlisted=true")
    if extra:
        print(f"allow_unlisted: {len(extra)} predicted photos not in sample_csv are left out", file=sys.stderr)
    missing = [name for name in names if name not in found]
    if missing and not fill_missing:
        raise CarvanaError(f"{len(missing)} of {len(names)} photos have no row in rle_dir={rle_dir}, e.g. "
                           f"{first_few(missing)}: resume predict.py, or set fill_missing=true to write empty rows")
    if missing:
        print(f"fill_missing: {len(missing)} photos get an empty row", file=sys.stderr)
    return _read_rows(names, found, shape[0] * shape[1])


def _read_rows(names: Sequence[str], found: dict[str, tuple[Path, Row]], size: int) -> Iterator[bytes]:
    """The row of each name from its shard (an empty row for a name not found), checked as RLE of `size` pixels."""
    with contextlib.ExitStack() as stack:
        files = {}
        for name in progress(names, "merging the RLE rows", len(names)):
            if name not in found:
                yield f"{name},\n".encode()
                continue
            shard, row = found[name]
            if shard not in files:
                files[shard] = stack.enter_context(open(shard, "rb"))
            files[shard].seek(row.start)
            line = files[shard].read(row.length)
            try:
                parse_rle(line[len(name.encode()) + 1 : -1].decode("ascii"), size)
            except (ValueError, UnicodeDecodeError) as err:
                raise CarvanaError(f"{shard} at byte {row.start}: {err}") from None
            yield line


def _read_at(path: Path, row: Row) -> bytes:
    """The bytes of `row` in the shard at `path`."""
    with open(path, "rb") as f:
        f.seek(row.start)
        return f.read(row.length)


def first_few(items: Sequence[object]) -> str:
    """The first few items, comma separated, with '...' when there are more."""
    return ", ".join(map(str, items[:_SHOWN])) + (", ..." if len(items) > _SHOWN else "")
