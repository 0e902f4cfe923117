"""RLE shards of `predict.py write=rle`, and their merge into the submission's rows in sample order.

A shard is `rle-rank{r}.csv` (header `img,rle_mask`, one flushed row per photo, readable by any CSV tool) plus
`rle-rank{r}.deflate`: the same rows compressed ahead by predict.py's writer threads (carvana.gzrows), one record
(CRC-32 of the row and of the piece, piece length, piece) per row, in the same order. Merging then copies pieces
instead of compressing 100,064 rows. The CSV is the truth: a row whose record is missing, or whose row or piece does
not match the CRC-32 written with it (an edited row, a damaged piece), is checked in full and compressed at merge time.
"""

import contextlib
import os
import struct
import sys
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

from typing_extensions import Self  # typing.Self from Python 3.11

from carvana import CarvanaError
from carvana.gzrows import deflate_row
from carvana.rle import parse_rle

HEADER = "img,rle_mask"
SHARD_PATTERN = "rle-rank*.csv"
PIECES_SUFFIX = ".deflate"
_RECORD = struct.Struct(">III")  # CRC-32 of the row, CRC-32 of its piece, length of the piece
_SHOWN = 5  # names quoted in an error message


class Row(NamedTuple):
    """A complete row of a shard: photo name, byte offset and length of `name,rle\\n`."""

    name: str
    start: int
    length: int


class Piece(NamedTuple):
    """A record of a .deflate file: CRC-32 of its row and of the piece, byte offset and length of the piece."""

    crc: int
    piece_crc: int
    start: int
    length: int


class Place(NamedTuple):
    """Where a photo's row is: the shard, the row, and its piece if one was written."""

    shard: Path
    row: Row
    piece: Piece | None


def encode_row(img: str, rle: str) -> tuple[bytes, bytes]:
    """The shard row `img,rle\\n` of a photo and its compressed piece; thread-safe, for writer threads."""
    if not img or any(c in text for text in (img, rle) for c in ",\r\n"):  # would break the CSV row
        raise ValueError(f"cannot write row {img[:40]!r},{rle[:40]!r}: want a photo name and an RLE string")
    row = f"{img},{rle}\n".encode()
    return row, deflate_row(row)


class RleShardWriter:
    """Appends rows to DIR/rle-rank{rank}.csv and their pieces to .deflate, each flushed; resumes a killed run."""

    def __init__(self, directory: str | os.PathLike, rank: int) -> None:
        """Open (or create) this rank's shard; a half-written last row or record of a killed process is dropped."""
        self.path = Path(directory) / f"rle-rank{rank}.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows, end = scan_shard(self.path) if self.path.exists() else ([], 0)
        self._done = {row.name for row in rows}
        self._file = open(self.path, "ab")  # noqa: SIM115 -- kept open across write() calls, closed by close()
        self._file.truncate(end)
        if end == 0:
            self._file.write(f"{HEADER}\n".encode())
            self._file.flush()
        pieces_path = self.path.with_suffix(PIECES_SUFFIX)
        pieces, pieces_end = scan_pieces(pieces_path, len(rows)) if pieces_path.exists() else ([], 0)
        self._pieces = open(pieces_path, "ab")  # noqa: SIM115 -- as self._file
        self._pieces.truncate(pieces_end)
        # killed between a row and its record: compress the rows that have none, so that record k stays row k
        for row in rows[len(pieces) :]:
            text = _read_at(self.path, row.start, row.length)
            self._write_piece(text, deflate_row(text))

    def done(self) -> set[str]:
        """Names of the photos already in this shard (a copy), to be skipped on a restart."""
        return set(self._done)

    def write(self, img: str, rle: str) -> None:
        """Append the row of photo `img` (as in sample_csv's img column) with `rle` from rle_encode."""
        self.append(img, *encode_row(img, rle))

    def append(self, img: str, row: bytes, piece: bytes) -> None:
        """Append a row and its piece made by encode_row (in another thread, say); the row first, both flushed.

        A photo already in this shard keeps its first row (write=[png,rle] predicts it again when its PNG is gone).
        """
        if img in self._done:
            return
        self._file.write(row)
        self._file.flush()
        self._write_piece(row, piece)
        self._done.add(img)

    def _write_piece(self, row: bytes, piece: bytes) -> None:
        self._pieces.write(_RECORD.pack(zlib.crc32(row), zlib.crc32(piece), len(piece)) + piece)
        self._pieces.flush()

    def close(self) -> None:
        """Close the shard's files."""
        self._file.close()
        self._pieces.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shard_rows(
    rle_dir: str | os.PathLike, names: Sequence[str], fill_missing: bool, shape: tuple[int, int]
) -> Iterator[tuple[bytes, bytes | None]]:
    """Check the shards in rle_dir hold each photo exactly once (equal duplicates pass), then lazily yield
    (row, piece or None) in the order of `names`; a missing photo (fill_missing) gets an empty row."""
    shards = sorted(Path(rle_dir).glob(SHARD_PATTERN))
    if not shards:
        raise CarvanaError(f"no {SHARD_PATTERN} shards in rle_dir={rle_dir}: run predict.py with write=rle first")
    found: dict[str, Place] = {}
    conflicts = []
    for shard in shards:
        rows = scan_shard(shard)[0]
        pieces_path = shard.with_suffix(PIECES_SUFFIX)
        pieces = scan_pieces(pieces_path, len(rows))[0] if pieces_path.exists() else []
        for i, row in enumerate(rows):
            place = Place(shard, row, pieces[i] if i < len(pieces) else None)
            if row.name in found:
                first = found[row.name]
                if _read_at(first.shard, *first.row[1:]) != _read_at(shard, *row[1:]):
                    conflicts.append(f"{row.name} ({first.shard.name} vs {shard.name})")
                continue
            found[row.name] = place
    if conflicts:
        raise CarvanaError(f"{len(conflicts)} photos have different rows in the shards, e.g. {first_few(conflicts)}")
    extra = sorted(set(found) - set(names))
    if extra:
        raise CarvanaError(
            f"{len(extra)} photos in rle_dir={rle_dir} are not in sample_csv, e.g. {first_few(extra)}: "
            "wrong sample_csv?"
        )
    missing = [name for name in names if name not in found]
    if missing and not fill_missing:
        raise CarvanaError(
            f"{len(missing)} of {len(names)} photos have no row in rle_dir={rle_dir}, e.g. {first_few(missing)}: "
            "resume predict.py, or set fill_missing=true to write empty rows for them"
        )
    if missing:
        print(f"fill_missing: {len(missing)} photos get an empty row", file=sys.stderr)
    return _read_rows(names, found, shape)


def _read_rows(
    names: Sequence[str], found: dict[str, Place], shape: tuple[int, int]
) -> Iterator[tuple[bytes, bytes | None]]:
    """(row, piece) of each name: the piece when its CRC matches the row, else None after checking the row in full."""
    size = shape[0] * shape[1]
    with contextlib.ExitStack() as stack:
        files: dict[Path, BinaryIO] = {}

        def read(path: Path, start: int, length: int) -> bytes:
            if path not in files:
                files[path] = stack.enter_context(open(path, "rb"))
            files[path].seek(start)
            return files[path].read(length)

        again = 0  # rows compressed here: no compressed copy in the .deflate file, or a stale one
        for name in names:
            place = found.get(name)
            if place is None:
                yield f"{name},\n".encode(), None
                continue
            row = read(place.shard, place.row.start, place.row.length)
            rle = row[len(name.encode()) + 1 : -1]
            piece = None
            if place.piece is not None and zlib.crc32(row) == place.piece.crc:
                piece = read(place.shard.with_suffix(PIECES_SUFFIX), place.piece.start, place.piece.length)
            try:
                if piece is not None and zlib.crc32(piece) == place.piece.piece_crc:  # not damaged since
                    _check_last_run(rle, size)  # the row is what predict.py wrote: only the size can be wrong
                else:
                    piece, again = None, again + 1
                    parse_rle(rle.decode("ascii"), size)
            except (ValueError, UnicodeDecodeError) as err:
                raise CarvanaError(f"{place.shard} at byte {place.row.start}: {err}") from None
            yield row, piece
        if again:
            print(f"rle_dir: {again} rows had no up-to-date compressed copy in {PIECES_SUFFIX} files (edited or older "
                  "shards): checked in full and compressed now", file=sys.stderr)


def _check_last_run(rle: bytes, size: int) -> None:
    """ValueError when the last run of `rle` ends past `size` pixels (masks predicted at another size)."""
    if rle:
        start, length = rle.rsplit(b" ", 2)[-2:]
        if int(start) + int(length) - 1 > size:
            raise ValueError(
                f"RLE run ends at pixel {int(start) + int(length) - 1}, past the {size} pixels of the mask: "
                "wrong height/width?"
            )


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


def scan_pieces(path: Path, limit: int) -> tuple[list[Piece], int]:
    """The first `limit` complete records of a .deflate file, and the byte where they end."""
    pieces = []
    size = path.stat().st_size
    end = 0
    with open(path, "rb") as f:
        while len(pieces) < limit and end + _RECORD.size <= size:
            crc, piece_crc, length = _RECORD.unpack(f.read(_RECORD.size))
            if end + _RECORD.size + length > size:  # killed while writing it
                break
            pieces.append(Piece(crc, piece_crc, end + _RECORD.size, length))
            end = f.seek(length, os.SEEK_CUR)
    return pieces, end


def _read_at(path: Path, start: int, length: int) -> bytes:
    """`length` bytes of a file from byte `start`."""
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(length)


def first_few(items: Sequence[object]) -> str:
    """The first few items, comma separated, with '...' when there are more."""
    return ", ".join(map(str, items[:_SHOWN])) + (", ..." if len(items) > _SHOWN else "")
